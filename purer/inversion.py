"""DeepInversion terms used by PURER's dynamic dataset and by ICFIL (purer.md §6.2).

``L_inv = ce * CE(T(x~), t) + bn * L_BN + tv * L_TV + l2 * L_l2`` on a circular roll ``x~`` of the
images by one random offset in ``[-jitter, jitter]^2``.

- ``L_BN``: over every BatchNorm2d of the teacher, ``||var_run - var_batch||_2 + ||mu_run - mu_batch||_2``
  with batch statistics of the BN *input* per channel over (N, H, W), biased variance, plain
  (not squared) L2 norms, every layer weight 1.
- ``L_TV``: the sum of the Frobenius norms (not squared) of the horizontal, vertical and both
  diagonal neighbour differences.
- ``L_l2``: ``||x~||_F``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError


@dataclass
class InversionWeights:
    """Coefficients of the inversion loss (the reference's values for every dataset)."""

    ce: float = 1.0
    bn: float = 0.01
    tv: float = 1e-4
    l2: float = 1e-5
    jitter: int = 2


class _BatchMoments(torch.autograd.Function):
    """Per-channel (mean, biased var) with a one-pass fused backward (first order only).

    The moments are always accumulated in float32 (at least): under bf16 autocast the conv outputs
    are bfloat16, whose 8-bit mantissa makes ``E[x^2] - E[x]^2`` lose most of the variance
    (27 % error at mean 3, std 0.5). For float32 input ``x.float()`` is ``x`` itself.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        count = wide.numel() // wide.shape[1]
        mean = wide.sum(dim=(0, 2, 3)) / count
        var = ((wide * wide).sum(dim=(0, 2, 3)) / count - mean * mean).clamp_min(0.0)
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(ctx, grad_mean: torch.Tensor, grad_var: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x, mean = ctx.saved_tensors
        count = x.numel() // x.shape[1]
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
        grad_var = torch.zeros_like(mean) if grad_var is None else grad_var
        slope = (2.0 / count) * grad_var  # d var / d x = 2 (x - mean) / count
        offset = grad_mean / count - slope * mean
        grad = torch.addcmul(offset.view(1, -1, 1, 1), x.to(mean.dtype), slope.view(1, -1, 1, 1))
        return grad.to(x.dtype)


def batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over (N, H, W): x (N, C, H, W) -> ((C,), (C,)).

    Computed as E[x^2] - E[x]^2 from two sums, with a fused backward: on this CPU several times
    faster (forward + backward) than ``torch.var_mean`` over dims (0, 2, 3), within ~1e-6 of it
    for BN-input magnitudes. A unit test checks it against float64 ``gradcheck``.
    """
    return _BatchMoments.apply(x)


class BNStatRecorder:
    """Forward pre-hooks on every BatchNorm2d of a model; collects ``(mean, var)`` of BN inputs.

    Use as a context manager around a forward pass; ``moments`` lists one pair per BN layer
    in forward order.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.moments: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.moments.append(batch_moments(inputs[0]))

    def __enter__(self) -> BNStatRecorder:
        self.moments = []
        self._handles = [layer.register_forward_pre_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def bn_stat_loss(
    moments: list[tuple[torch.Tensor, torch.Tensor]],
    targets: list[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Sum over layers of ``||var_t - var||_2 + ||mu_t - mu||_2`` (targets = (mean, var) pairs)."""
    if len(moments) != len(targets):
        raise ValueError(f"{len(moments)} BN layers recorded but {len(targets)} targets")
    total = moments[0][0].new_zeros(())
    for (mean, var), (mean_t, var_t) in zip(moments, targets, strict=True):
        total = total + torch.linalg.vector_norm(var_t - var) + torch.linalg.vector_norm(mean_t - mean)
    return total


def running_targets(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (running_mean, running_var) of every BatchNorm2d of a pretrained teacher.

    A BatchNorm without running statistics (built with batch-statistic BN) gives the BN-statistics
    loss no target: refused by name (it used to surface as a layer-count mismatch).
    """
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if any(m.running_mean is None or m.running_var is None for m in layers):
        raise BenchError(
            f"teacher {type(model).__name__} has BatchNorm layers without running statistics (batch-"
            "statistic BN, track_running_stats=False): DeepInversion's BN-statistics loss needs a "
            "pretrained teacher's running mean and variance"
        )
    return [(m.running_mean, m.running_var) for m in layers]


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Sum of Frobenius norms of the 4 neighbour differences of x (N, C, H, W)."""
    horizontal = x[:, :, :, :-1] - x[:, :, :, 1:]
    vertical = x[:, :, :-1, :] - x[:, :, 1:, :]
    diagonal = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    anti_diagonal = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return sum(torch.linalg.vector_norm(d) for d in (horizontal, vertical, diagonal, anti_diagonal))


def draw_shifts(jitter: int, n: int, generator: torch.Generator) -> torch.Tensor | None:
    """``n`` roll offsets (n, 2) ~ U{-jitter..jitter}^2 (None for jitter 0: nothing is drawn).

    One draw of (n, 2) consumes the generator exactly as n draws of (2,) in sequence do.
    """
    if jitter <= 0:
        return None
    return torch.randint(-jitter, jitter + 1, (n, 2), generator=generator)


def apply_roll(x: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """Circular roll of x (N, C, H, W) by ``shift`` = tensor([dx, dy]) on (H, W); None = no roll.

    Eager: ``torch.roll``. Under ``torch.compile``: two index gathers (the same values), because
    ``torch.roll`` needs Python ints, which specialise the compiled graph on each of the 25
    offsets and, past dynamo's recompile limit of 8, send the objective back to eager.
    """
    if shift is None:
        return x
    if torch.compiler.is_compiling():
        return roll_by(x, shift)
    dx, dy = shift.tolist()
    return torch.roll(x, shifts=(dx, dy), dims=(2, 3))


def random_roll(x: torch.Tensor, jitter: int, generator: torch.Generator) -> torch.Tensor:
    """Circular roll of x (N, C, H, W) by one offset (dx, dy) ~ U{-jitter..jitter}^2."""
    shifts = draw_shifts(jitter, 1, generator)
    return apply_roll(x, None if shifts is None else shifts[0])


def roll_by(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``torch.roll(x, (dx, dy), dims=(2, 3))`` for x (N, C, H, W) with ``shifts`` = tensor([dx, dy])."""
    height, width = x.shape[-2:]
    shifts = shifts.to(x.device)  # a no-op when the trainer already put them there (CUDA graphs)
    rows = torch.remainder(torch.arange(height, device=x.device) - shifts[0], height)
    cols = torch.remainder(torch.arange(width, device=x.device) - shifts[1], width)
    return x.index_select(2, rows).index_select(3, cols)


def inversion_loss(
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]],
    bn_targets: list[tuple[torch.Tensor, torch.Tensor]],
    images: torch.Tensor,
    targets: torch.Tensor,
    weights: InversionWeights,
    generator: torch.Generator | None,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted inversion loss of ``images`` (N, C, H, W) for labels ``targets`` (N,).

    ``forward(x) -> (logits, BN-input moments)`` (see ``purer.teachers``); ``bn_targets`` are the
    (mean, var) the moments are matched to. The roll offset is ``shift`` (2,) when given (drawn
    beforehand, see :func:`draw_shifts`), else drawn from ``generator``. Returns (loss, detached parts).
    """
    rolled = (
        apply_roll(images, shift) if shift is not None else random_roll(images, weights.jitter, generator)
    )
    logits, moments = forward(rolled)
    ce = F.cross_entropy(logits, targets)
    bn = bn_stat_loss(moments, bn_targets) if weights.bn else logits.new_zeros(())
    tv = total_variation(rolled)
    l2 = torch.linalg.vector_norm(rolled)
    loss = weights.ce * ce + weights.bn * bn + weights.tv * tv + weights.l2 * l2
    parts = {"ce": ce.detach(), "bn": bn.detach(), "tv": tv.detach(), "l2": l2.detach()}
    return loss, parts
