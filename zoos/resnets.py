"""ResNet zoo members: PURER's resnet10 / resnet18 and the few-shot ResNet-12, registered by key.

- ``resnet10`` / ``resnet18`` (purer.md §4, CloserLook-style, as in PURER's reference code): stem
  ``conv3x3(c_in->64, stride 1) + BN``; with ``reference_stem=True`` (the default, the reference
  code's behaviour) there is **no ReLU and no max-pool** after the stem; ``reference_stem=False``
  adds the ReLU and a 3x3/2 max-pool the original architecture has. Stages 64/128/256/512 with
  [1,1,1,1] (R10) or [2,2,2,2] (R18) basic blocks, stride 2 at the first block of stages 2-4, global
  average pool, ``Linear(512, n)``. No biases in convolutions.
- ``resnet12`` (the common few-shot ResNet-12 of MetaOptNet / TADAM): four residual blocks of three
  ``conv3x3 + BN`` (LeakyReLU 0.1 between), a ``conv1x1 + BN`` shortcut, LeakyReLU, max-pool 2;
  widths 64/160/320/640; global average pool, ``Linear(640, n)``.

Every model exposes ``embed(x) -> (B, feature_dim)`` and ``head`` like :class:`Conv4`, and works at
28, 32 and 84 px (global average pooling makes the head independent of the input size).
"""

from __future__ import annotations

import torch
from torch import nn

from bench.errors import BenchError
from zoos.architectures import ARCHITECTURES, init_weights


class BasicBlock(nn.Module):
    """``conv3x3(s) -> BN -> ReLU -> conv3x3 -> BN`` + shortcut, then ReLU (no biases)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c_in, H, W) -> (B, c_out, H/s, W/s)."""
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """PURER's teacher ResNet (see module docstring); ``blocks`` per stage, e.g. (1,1,1,1) = R10."""

    def __init__(
        self, blocks: tuple[int, ...], n_classes: int, channels: int, reference_stem: bool = True
    ) -> None:
        super().__init__()
        stem: list[nn.Module] = [nn.Conv2d(channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64)]
        if not reference_stem:
            stem += [nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        self.stem = nn.Sequential(*stem)
        layers: list[nn.Module] = []
        c_in = 64
        for stage, (width, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            for block in range(count):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(c_in, width, stride))
                c_in = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = c_in
        self.head = nn.Linear(c_in, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 512) globally average-pooled features."""
        return torch.flatten(self.pool(self.features(self.stem(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes)."""
        return self.head(self.embed(x))


class Res12Block(nn.Module):
    """Three ``conv3x3 + BN`` (LeakyReLU 0.1 between), 1x1 shortcut, LeakyReLU, max-pool 2."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        for i in range(3):
            convs += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)]
            if i < 2:
                convs.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*convs)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2, ceil_mode=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c_in, H, W) -> (B, c_out, ceil(H/2), ceil(W/2))."""
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(nn.Module):
    """The few-shot ResNet-12 (widths 64/160/320/640 by default)."""

    def __init__(self, n_classes: int, channels: int, widths: tuple[int, ...] = (64, 160, 320, 640)) -> None:
        super().__init__()
        blocks, c_in = [], channels
        for width in widths:
            blocks.append(Res12Block(c_in, width))
            c_in = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = c_in
        self.head = nn.Linear(c_in, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, widths[-1]) globally average-pooled features."""
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes)."""
        return self.head(self.embed(x))


def _check_size(arch: str, image_size: int, minimum: int) -> None:
    if image_size < minimum:
        raise BenchError(f"{arch} needs image_size >= {minimum}; got {image_size}")


def _teacher_resnet(
    arch: str,
    blocks: tuple[int, ...],
    n_classes: int,
    image_size: int,
    channels: int,
    generator: torch.Generator,
    reference_stem: bool,
) -> nn.Module:
    """Build and initialise PURER's teacher ResNet with ``blocks`` per stage."""
    _check_size(arch, image_size, 8)
    model = ResNet(blocks, n_classes, channels, reference_stem)
    init_weights(model, generator)
    return model


@ARCHITECTURES.register("resnet10")
def resnet10(
    n_classes: int, image_size: int, channels: int, generator: torch.Generator, reference_stem: bool = True
) -> nn.Module:
    """PURER's resnet10 (blocks 1,1,1,1); ``reference_stem`` keeps the stem without ReLU/max-pool."""
    return _teacher_resnet(
        "resnet10", (1, 1, 1, 1), n_classes, image_size, channels, generator, reference_stem
    )


@ARCHITECTURES.register("resnet18")
def resnet18(
    n_classes: int, image_size: int, channels: int, generator: torch.Generator, reference_stem: bool = True
) -> nn.Module:
    """PURER's resnet18 (blocks 2,2,2,2); ``reference_stem`` keeps the stem without ReLU/max-pool."""
    return _teacher_resnet(
        "resnet18", (2, 2, 2, 2), n_classes, image_size, channels, generator, reference_stem
    )


@ARCHITECTURES.register("resnet12")
def resnet12(
    n_classes: int,
    image_size: int,
    channels: int,
    generator: torch.Generator,
    widths: tuple[int, ...] | list[int] = (64, 160, 320, 640),
) -> nn.Module:
    """The few-shot ResNet-12 (four 3-conv residual blocks, max-pool 2 each)."""
    _check_size("resnet12", image_size, 16)
    model = ResNet12(n_classes, channels, tuple(int(w) for w in widths))
    init_weights(model, generator)
    return model
