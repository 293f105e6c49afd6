"""The DCGAN-like image generator of generator-based DFML baselines (BiDf-MKD, and later TDS/FREE/TGR).

baselines.md §3.8: a latent code z (nz) -> linear -> (2·ngf, s/4, s/4) -> BN -> 2x upsample ->
conv 3x3 -> BN -> LeakyReLU(0.2) -> 2x upsample -> conv 3x3 -> BN -> LeakyReLU(0.2) -> conv 3x3 ->
sigmoid, i.e. images in [0, 1], then normalised with the zoo's published mean/std so every model sees
its usual input space. Image sizes not divisible by 4 (Omniglot's 28 is; 84 is) are reached by a
final bilinear resize. Ref: the CMI/BiDf-MKD generator (Fang et al., IJCAI 2021, arXiv 2105.08584).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Generator(nn.Module):
    """z (B, nz) -> normalised images (B, channels, image_size, image_size)."""

    def __init__(
        self,
        nz: int,
        ngf: int,
        image_size: int,
        channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} channels; got {len(mean)} / {len(std)}")
        self.image_size, self.init_size = image_size, max(1, image_size // 4)
        self.project = nn.Linear(nz, 2 * ngf * self.init_size**2)
        self.blocks = nn.Sequential(
            nn.BatchNorm2d(2 * ngf),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * ngf),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ngf, channels, 3, padding=1),
            nn.Sigmoid(),
        )
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, C, H, W) for latent codes z (B, nz)."""
        h = self.project(z).view(z.shape[0], -1, self.init_size, self.init_size)
        images = self.blocks(h)
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear")
        return (images - self.mean) / self.std


def fresh_generator(
    nz: int,
    ngf: int,
    image_size: int,
    channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    generator: torch.Generator,
    device: torch.device,
) -> Generator:
    """A newly initialised :class:`Generator` (weights drawn from ``generator``: reproducible)."""
    net = Generator(nz, ngf, image_size, channels, mean, std)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                bound = 1.0 / max(1, module.weight[0].numel()) ** 0.5
                module.weight.uniform_(-bound, bound, generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-bound, bound, generator=generator)
    return net.to(device)


class ConditionalGenerator(nn.Module):
    """G(z, y): a :class:`Generator` fed [z, embedding(y)]; z (B, nz), y (B,) -> (B, C, H, W) normalised."""

    def __init__(self, n_classes: int, nz: int, body: Generator) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_classes, nz)
        self.body = body

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Normalised images for latent codes z (B, nz) and labels y (B,) in 0..n_classes-1."""
        return self.body(torch.cat([z, self.embedding(y)], dim=1))


def fresh_conditional_generator(
    n_classes: int, body: Generator, generator: torch.Generator
) -> ConditionalGenerator:
    """A :class:`ConditionalGenerator` around ``body`` (a fresh :class:`Generator` taking 2·nz inputs)."""
    nz = body.project.in_features // 2
    net = ConditionalGenerator(n_classes, nz, body)
    with torch.no_grad():
        net.embedding.weight.normal_(generator=generator)
    return net.to(body.mean.device)


def invert_with_generator(
    model: nn.Module,
    n_classes: int,
    per_class: int,
    steps: int,
    bn_weight: float,
    net: Generator,
    nz: int,
    lr: float,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train ``net`` and its latents so that the frozen ``model`` labels image i as class i // per_class.

    Loss = CE + ``bn_weight`` x BN-statistic matching (purer.inversion's term; 0 skips it), Adam with
    betas (0.5, 0.999) on the generator and the latent codes. Returns (images (n_classes*per_class,
    C, H, W), the model's logits on them), class-blocked in local label order.
    """
    from purer.inversion import bn_stat_loss, running_targets
    from purer.teachers import teacher_forward

    z = torch.randn(n_classes * per_class, nz, generator=generator).to(device).requires_grad_(True)
    labels = torch.arange(n_classes, device=device).repeat_interleave(per_class)
    optimizer = torch.optim.Adam([*net.parameters(), z], lr=lr, betas=(0.5, 0.999))
    forward, targets = teacher_forward(model), running_targets(model)
    for _ in range(steps):
        logits, moments = forward(net(z))
        loss = F.cross_entropy(logits, labels)
        if bn_weight:
            loss = loss + bn_weight * bn_stat_loss(moments, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        images = net(z)
        return images, model(images)
