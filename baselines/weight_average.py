"""Weight averaging (FedAvg of zoo weights) + fine-tuning.

The element-wise mean of all members' parameters, heads included (their label orders are unrelated;
the inner loop overwrites them, as in the reference); BN running statistics are averaged too but the
meta model normalises with batch statistics. Applies to SS zoos only: any difference in
architecture, options, input size or head width raises an error naming it.
Ref: McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017 (arXiv 1602.05629); used as a DFML baseline by PURER (CVPR 2023, arXiv 2303.11183).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.learners.maml import FineTuneLearner
from bench.method import METHODS, Budget, Learner, MetaLearner, MethodConfig
from zoos.averaging import averaged_meta_params
from zoos.meta_model import fresh_meta_model
from zoos.zoo import Zoo


@dataclass
class WeightAverageConfig(MethodConfig):
    """Test-time inner learning rate; ``average_head: false`` re-initialises the head."""

    inner_lr: float = 0.01
    average_head: bool = True


@METHODS.register("weight_average")
class WeightAverage(MetaLearner):
    """Average the same-architecture zoo weights, then fine-tune on the support set."""

    Config = WeightAverageConfig
    same_architecture_only = True

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Average the zoo into a conv4 meta model; raises on heterogeneous zoos."""
        cfg: WeightAverageConfig = self.cfg  # type: ignore[assignment]
        params = averaged_meta_params(zoo, "weight_average", self.context.n_way, cfg.average_head)
        options = zoo.members[0].spec.arch_options
        model = fresh_meta_model(
            self.context, int(options.get("width", 32)), bool(options.get("global_pool", False))
        )
        model.load_state_dict(params, strict=False)
        self.train_stats["members_averaged"] = len(zoo.members)
        return FineTuneLearner(model, cfg.inner_lr)
