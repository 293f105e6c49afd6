"""Weight averaging (FedAvg of zoo weights) + fine-tuning.

The element-wise mean of all members' parameters, heads included (their label orders are unrelated;
the inner loop overwrites them, as in the reference); BN running statistics are averaged too but the
meta model normalises with batch statistics. Applies to SS zoos only: any difference in
architecture, options, input size or head width raises an error naming it.
Ref: McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017 (arXiv 1602.05629); used as a DFML baseline by PURER (CVPR 2023, arXiv 2303.11183).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from baselines.meta_model import fresh_meta_model
from bench.errors import BenchError
from bench.learners.maml import FineTuneLearner
from bench.method import METHODS, Budget, Learner, MetaLearner, MethodConfig
from zoos.zoo import Zoo


@dataclass
class WeightAverageConfig(MethodConfig):
    """Test-time inner learning rate; ``average_head: false`` re-initialises the head."""

    inner_lr: float = 0.01
    average_head: bool = True


def require_same_architecture(zoo: Zoo, method: str) -> None:
    """Raise unless every member has the same arch, options, input shape and head width."""
    signature = Counter(
        f"{m.spec.arch}({', '.join(f'{k}={v}' for k, v in sorted(m.spec.arch_options.items()))})"
        f"@{m.spec.image_size}px/{m.spec.head_width}-way"
        for m in zoo.members
    )
    shapes = {tuple((k, tuple(v.shape)) for k, v in m.model.state_dict().items()) for m in zoo.members}
    if len(signature) > 1 or len(shapes) > 1:
        described = ", ".join(f"{sig}×{n}" for sig, n in signature.most_common())
        raise BenchError(f"{method} needs a same-architecture zoo; got {described}")


def average_state(zoo: Zoo) -> dict[str, torch.Tensor]:
    """Element-wise mean of the members' state dicts (floating tensors; counters from member 0)."""
    states = [m.model.state_dict() for m in zoo.members]
    averaged = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            averaged[name] = torch.stack([s[name].float() for s in states]).mean(0)
        else:
            averaged[name] = first.clone()
    return averaged


@METHODS.register("weight_average")
class WeightAverage(MetaLearner):
    """Average the same-architecture zoo weights, then fine-tune on the support set."""

    Config = WeightAverageConfig

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Average the zoo into a conv4 meta model; raises on heterogeneous zoos."""
        cfg: WeightAverageConfig = self.cfg  # type: ignore[assignment]
        require_same_architecture(zoo, "weight_average")
        member = zoo.members[0].spec
        if member.arch != "conv4":
            raise BenchError(f"weight_average builds a conv4 meta model; the zoo is {member.arch}")
        if member.head_width != self.context.n_way:
            raise BenchError(
                f"weight_average: member heads are {member.head_width}-way but the task is "
                f"{self.context.n_way}-way; use a zoo with classes_per_member={self.context.n_way}"
            )
        width = int(member.arch_options.get("width", 32))
        model = fresh_meta_model(self.context, width, bool(member.arch_options.get("global_pool", False)))
        averaged = average_state(zoo)
        params = {k: v for k, v in averaged.items() if k in dict(model.named_parameters())}
        if not cfg.average_head:
            params = {k: v for k, v in params.items() if not k.startswith("head.")}
        model.load_state_dict(params, strict=False)
        self.train_stats["members_averaged"] = len(zoo.members)
        return FineTuneLearner(model, cfg.inner_lr)
