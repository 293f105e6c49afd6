"""OTA: optimal-transport neuron alignment of same-architecture members, then averaging + fine-tuning.

Ref: Singh & Jaggi, "Model Fusion via Optimal Transport", NeurIPS 2020 (arXiv 1910.05653); used as
a parameter-space DFML baseline by PURER (CVPR 2023) and BiDf-MKD (ICML 2023). Weight-based form of
baselines.md §3.3: for every member and conv block in order, the cost between anchor neuron a and
member neuron b is the L2 distance of their incoming weights (bias included), after the member's
input channels were permuted by the previous block's alignment. With uniform marginals and equal
widths exact OT is a permutation, found by the Hungarian algorithm. Everything tied to an output
channel (conv weight and bias, BN γ/β/running statistics) is permuted, the permutation is carried
into the next block's inputs (and, for the last block, into the head's input columns); head outputs
(the member's classes) are not permuted. SS conv4 zoos only: other zoos are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from bench.errors import BenchError
from bench.learners.maml import FineTuneLearner
from bench.method import METHODS, Budget, Learner, MetaLearner, MethodConfig
from zoos.averaging import check_averageable, meta_params
from zoos.meta_model import fresh_meta_model
from zoos.zoo import Zoo

State = dict[str, torch.Tensor]
_CHANNEL_KEYS = ("weight", "bias", "running_mean", "running_var")


def _conv_names(state: State) -> list[str]:
    """Prefixes of the conv layers in block order: ``features.0``, ``features.4``, ..."""
    return sorted(
        (k[: -len(".weight")] for k, v in state.items() if k.endswith(".weight") and v.dim() == 4),
        key=lambda name: int(name.split(".")[1]),
    )


def align_to_anchor(anchor: State, member: State) -> tuple[State, list[torch.Tensor]]:
    """``member`` with hidden channels permuted to match ``anchor``; returns (state, per-block perms).

    perms[l][a] is the member channel placed at anchor channel a in block l.
    """
    aligned = {k: v.clone() for k, v in member.items()}
    perms: list[torch.Tensor] = []
    previous: torch.Tensor | None = None
    for conv in _conv_names(member):
        index = int(conv.split(".")[1])
        bn = f"features.{index + 1}"
        weight = aligned[f"{conv}.weight"]
        if previous is not None:
            weight = weight[:, previous]
            aligned[f"{conv}.weight"] = weight
        incoming = torch.cat([weight.flatten(1), aligned[f"{conv}.bias"].unsqueeze(1)], 1)
        reference = torch.cat([anchor[f"{conv}.weight"].flatten(1), anchor[f"{conv}.bias"].unsqueeze(1)], 1)
        cost = torch.cdist(reference.double(), incoming.double())  # (anchor a, member b)
        _, columns = linear_sum_assignment(cost.numpy())
        perm = torch.as_tensor(columns, dtype=torch.long)
        for owner in (conv, bn):
            for key in _CHANNEL_KEYS:
                name = f"{owner}.{key}"
                if name in aligned and aligned[name].dim() >= 1:
                    aligned[name] = aligned[name][perm]
        perms.append(perm)
        previous = perm
    if previous is not None:  # the head reads (channels x spatial) features, channel-major
        head = aligned["head.weight"]
        channels = len(previous)
        aligned["head.weight"] = head.view(head.shape[0], channels, -1)[:, previous].reshape(head.shape)
    return aligned, perms


def ot_average(zoo: Zoo, anchor: int) -> State:
    """Mean of all members after aligning each to member ``anchor`` (floating tensors)."""
    if not 0 <= anchor < len(zoo.members):
        raise BenchError(f"ota: anchor={anchor} is not a member index; valid: 0..{len(zoo.members) - 1}")
    states = [{k: v.detach().cpu() for k, v in m.model.state_dict().items()} for m in zoo.members]
    reference = states[anchor]
    aligned = [reference if i == anchor else align_to_anchor(reference, s)[0] for i, s in enumerate(states)]
    return {
        name: torch.stack([s[name].float() for s in aligned]).mean(0) if first.is_floating_point() else first
        for name, first in reference.items()
    }


@dataclass
class OtaConfig(MethodConfig):
    """Anchor member, head handling and the test-time inner learning rate."""

    anchor: int = 0
    average_head: bool = True
    inner_lr: float = 0.01


@METHODS.register("ota")
class Ota(MetaLearner):
    """Align every member's neurons to the anchor by OT, average, fine-tune on each support set."""

    Config = OtaConfig
    same_architecture_only = True

    def meta_train(self, zoo: Zoo, budget: Budget, gen: torch.Generator) -> Learner:
        """Fuse the SS conv4 zoo into a conv4 meta model; raises on heterogeneous zoos."""
        cfg: OtaConfig = self.cfg  # type: ignore[assignment]
        check_averageable(zoo, "ota", self.context.n_way)
        params = meta_params(ot_average(zoo, cfg.anchor), cfg.average_head)
        options = zoo.members[0].spec.arch_options
        model = fresh_meta_model(
            self.context, int(options.get("width", 32)), bool(options.get("global_pool", False))
        )
        model.load_state_dict({k: v.to(self.context.device) for k, v in params.items()}, strict=False)
        self.train_stats["members_fused"] = float(len(zoo.members))
        return FineTuneLearner(model, cfg.inner_lr)
