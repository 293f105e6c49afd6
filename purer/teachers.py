"""Teacher forwards that also return the BN-input moments the inversion loss needs.

Two implementations with the same result:

- :class:`HookedTeacher` (any architecture): forward pre-hooks on every BatchNorm2d. On CPU,
  :func:`teacher_forward` runs it on a channels-last copy of the model (see there).
- :class:`FoldedConv4Teacher` (conv4 in eval mode, the common case): each eval-mode BN is folded
  into its conv (``y = conv(x, a*W) + a*c + beta - a*mu`` with ``a = gamma / sqrt(var + eps)``); the
  moments of the BN input ``z`` follow exactly from those of ``y``: ``mean_z = (mean_y - shift) / a``,
  ``var_z = var_y / a^2``. ReLU is applied after max-pooling (they commute), on 4x fewer values.
  On the 2-core CPU this removes the BN forward/backward and most of the ReLU cost.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from purer.inversion import BNStatRecorder, batch_moments
from zoos.architectures import Conv4
from zoos.pooling import max_pool_2x2
from zoos.zoo import InputMapped

Moments = list[tuple[torch.Tensor, torch.Tensor]]
#: Largest (shift / scale)^2 / running_var of a BN channel that folding accepts (see FoldedConv4Teacher).
FOLD_OFFSET_LIMIT = 1e3


class HookedTeacher:
    """``teacher(x) -> (logits, moments)`` via BN forward pre-hooks (any architecture)."""

    def __init__(self, model: nn.Module, channels_last: bool = False) -> None:
        """Hook ``model``'s BN layers; ``channels_last`` runs a channels-last copy (``model`` untouched)."""
        if channels_last:
            model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        self.model, self.recorder, self.channels_last = model, BNStatRecorder(model), channels_last

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, Moments]:
        """Logits (B, n_classes) and one (mean, var) pair per BN layer, for images x (B, C, H, W)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.recorder:
            logits = self.model(x)
        return logits, self.recorder.moments


class FoldedConv4Teacher:
    """A frozen conv4 teacher with BN folded into its convs; same logits and moments as hooked."""

    def __init__(self, model: Conv4) -> None:
        if model.training:
            raise ValueError("fold only eval-mode teachers (BN must use running statistics)")
        self.blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        layers = list(model.features)
        with torch.no_grad():
            for conv, bn in zip(layers[0::4], layers[1::4], strict=True):
                if bn.running_var is None:  # batch-statistic BN: nothing to fold (running_targets refuses)
                    raise ValueError("BN without running statistics: nothing to fold")
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                if scale.abs().min() < 1e-6:
                    raise ValueError("BN scale ~0: folding would be unstable; use HookedTeacher")
                shift = bn.bias - scale * bn.running_mean
                # var_z = (E[y^2] - E[y]^2) / scale^2 cancels in float32 when the output offset
                # dwarfs its spread: relative error ~ 6e-8 * (1 + (shift / scale)^2 / var). Past 1e3
                # (~1e-4) the hooked path is used. The cached glyphs / Omniglot teachers reach 7.3.
                if ((shift / scale) ** 2 / (bn.running_var + bn.eps)).max() > FOLD_OFFSET_LIMIT:
                    raise ValueError("BN offset >> spread: folded moments would lose float32 precision")
                weight = (conv.weight * scale.view(-1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
                bias = scale * conv.bias + shift
                self.blocks.append((weight, bias, scale, shift))
        self.global_pool = isinstance(model.pool, nn.AdaptiveMaxPool2d)
        self.head_weight, self.head_bias = model.head.weight.detach(), model.head.bias.detach()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, Moments]:
        """Logits (B, n_classes) and the BN-input (mean, var) of each of the 4 blocks."""
        moments: Moments = []
        for weight, bias, scale, shift in self.blocks:
            y = F.conv2d(x, weight, bias, padding=1)
            mean_y, var_y = batch_moments(y)
            moments.append(((mean_y - shift) / scale, var_y / (scale * scale)))
            x = F.relu(max_pool_2x2(y))
        if self.global_pool:
            x = F.adaptive_max_pool2d(x, 1)
        return F.linear(torch.flatten(x, 1), self.head_weight, self.head_bias), moments


class MappedTeacher:
    """The teacher of an MH member queried through its input map (``zoos.zoo.InputMapped``)."""

    def __init__(self, inner: HookedTeacher | FoldedConv4Teacher, mapped: InputMapped) -> None:
        self.inner, self.mapped = inner, mapped

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, Moments]:
        """Logits (B, n_classes) and the BN-input moments of images x (B, C, H, W), mapped first."""
        return self.inner(self.mapped.map_input(x))


def hooked_channels_last(model: nn.Module) -> bool:
    """Whether a hooked teacher of ``model`` runs channels-last: on CPU, yes.

    Measured on the 2-core CPU (torch 2.14, one thread, inversion loss forward + backward to the
    images, 80 images of 3x32x32, one process, interleaved): a resnet10 teacher 578 -> 485 ms
    (1.19x; 647 -> 508 ms in a second process) and an unfolded conv4 teacher 54.1 -> 44.8 ms
    (1.21x). Not measured on CUDA, which keeps the contiguous format.
    """
    return next(model.parameters()).device.type == "cpu"


def teacher_forward(
    model: nn.Module, fold: bool = True, channels_last: bool | None = None
) -> HookedTeacher | FoldedConv4Teacher | MappedTeacher:
    """The fastest exact forward-with-moments available for ``model``.

    An eval-mode conv4 is folded (``fold``); any other model is hooked, channels-last where
    :func:`hooked_channels_last` says so unless ``channels_last`` decides. An
    :class:`~zoos.zoo.InputMapped` member is unwrapped, and its map applied before the teacher.
    """
    if isinstance(model, InputMapped):
        return MappedTeacher(teacher_forward(model.inner, fold, channels_last), model)
    if fold and isinstance(model, Conv4) and not model.training:
        try:
            return FoldedConv4Teacher(model)
        except ValueError:
            pass
    return HookedTeacher(model, hooked_channels_last(model) if channels_last is None else channels_last)
