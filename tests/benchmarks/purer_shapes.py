"""A CIFAR-FS-shaped synthetic zoo for PURER speed measurements (no data, random teachers)."""

from __future__ import annotations

import torch

from bench.method import MethodContext
from bench.seeding import make_generator
from zoos.architectures import build_model, count_parameters
from zoos.spec import MemberSpec, TrainRecipe
from zoos.zoo import Zoo, ZooMember


def synthetic_conv4_zoo(
    n_members: int = 13, n_classes: int = 64, image_size: int = 32, device: str = "cpu"
) -> Zoo:
    """13 random conv4-32 teachers over 64 classes in contiguous 5-class nodes (last has 4)."""
    names = [f"class_{i:03d}" for i in range(n_classes)]
    members = []
    for i in range(n_members):
        classes = tuple(names[5 * i : 5 * i + 5])
        model = build_model("conv4", 5, image_size, 3, make_generator(i), width=32)
        with torch.no_grad():  # non-trivial running statistics, as after pretraining
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.5, 0.5, generator=make_generator(100 + i))
                    module.running_var.uniform_(0.5, 1.5, generator=make_generator(200 + i))
        model.to(device).eval().requires_grad_(False)
        spec = MemberSpec(
            "conv4", {"width": 32}, "synthetic", "-", classes, image_size, 3, 5, TrainRecipe(), 0, i
        )
        members.append(ZooMember(spec, model, 0.0, 0.0, "-", count_parameters(model)))
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    return Zoo("synthetic_cifar_fs", "synthetic", "synthetic", "-", image_size, 3, members, {}, mean, std)


def context(k_shot: int = 1, device: str = "cpu") -> MethodContext:
    """5-way K-shot on 32 px, seed 0."""
    return MethodContext(5, k_shot, 32, 3, torch.device(device), 0)
