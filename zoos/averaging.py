"""Parameter-space averaging of a same-architecture zoo (weight_average, PURER's averaged init)."""

from __future__ import annotations

from collections import Counter

import torch

from bench.errors import BenchError
from zoos.zoo import Zoo


def member_signature(member) -> str:  # noqa: ANN001 - ZooMember
    """``conv4(width=32)@32px/5-way``: what must match for averaging."""
    options = ", ".join(f"{k}={v}" for k, v in sorted(member.spec.arch_options.items()))
    return f"{member.spec.arch}({options})@{member.spec.image_size}px/{member.spec.head_width}-way"


def refuse_mixed_architecture_config(zoo_cfg: dict, method: str) -> None:
    """Raise before any member is built when a zoo config lists several architectures (SH / MH)."""
    archs = zoo_cfg.get("arch")
    names = [archs] if isinstance(archs, str) else list(archs or [])
    if len(set(map(str, names))) > 1:
        raise BenchError(
            f"{method} averages parameters, so it needs a same-architecture (SS) zoo; zoo "
            f"{zoo_cfg.get('name')!r} is heterogeneous: zoo.arch={names}. Use an architecture-agnostic "
            "method (random_init, purer with method.init=random) or an SS zoo"
        )


def require_same_architecture(zoo: Zoo, method: str) -> None:
    """Raise unless every member has the same arch, options, input shape and head width."""
    signature = Counter(member_signature(m) for m in zoo.members)
    shapes = {tuple((k, tuple(v.shape)) for k, v in m.model.state_dict().items()) for m in zoo.members}
    if len(signature) > 1 or len(shapes) > 1:
        described = ", ".join(f"{sig}×{n}" for sig, n in signature.most_common())
        raise BenchError(
            f"{method} averages parameters, so it needs a same-architecture (SS) zoo; zoo "
            f"{zoo.name!r} is heterogeneous: {described}. Use an architecture-agnostic method "
            "(random_init, purer with method.init=random) or an SS zoo"
        )
    mapped = sorted({m.spec.dataset for m in zoo.members if m.input_map is not None})
    if mapped:  # an MH zoo of one architecture: its members' weights expect different inputs
        raise BenchError(
            f"{method} averages parameters, but zoo {zoo.name!r} holds members trained in another "
            f"normalisation than the run's dataset (sources {mapped}, queried through an input map): "
            "their averaged weights would mix two input spaces. Use an architecture-agnostic "
            "method (random_init, purer with method.init=random) or an SS zoo"
        )


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


def check_averageable(zoo: Zoo, method: str, n_way: int) -> None:
    """Raise unless the zoo can be fused into a conv4 meta model: SS conv4 with ``n_way``-wide heads."""
    require_same_architecture(zoo, method)
    member = zoo.members[0].spec
    if member.arch != "conv4":
        raise BenchError(f"{method} averages into a conv4 meta model; the zoo is {member.arch}")
    if member.head_width != n_way:
        raise BenchError(
            f"{method}: member heads are {member.head_width}-way but the task is {n_way}-way; "
            f"use a zoo with classes_per_member={n_way}"
        )


def meta_params(averaged: dict[str, torch.Tensor], average_head: bool) -> dict[str, torch.Tensor]:
    """Meta-model parameters from a fused member state.

    BN running statistics are dropped (meta models use batch statistics); ``average_head=False``
    leaves the head out (the caller keeps its fresh head).
    """
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    params = {k: v for k, v in averaged.items() if not k.endswith(buffers)}
    if not average_head:
        params = {k: v for k, v in params.items() if not k.startswith("head.")}
    return params


def averaged_meta_params(zoo: Zoo, method: str, n_way: int, average_head: bool) -> dict[str, torch.Tensor]:
    """Element-wise averaged conv4 parameters for a meta model (raises on zoos it cannot average)."""
    check_averageable(zoo, method, n_way)
    return meta_params(average_state(zoo), average_head)


def load_average_init(
    model: torch.nn.Module, zoo: Zoo, method: str, width: int, n_way: int, average_head: bool = True
) -> None:
    """Start a conv4 meta model of ``width`` from the zoo's element-wise average (in place).

    Raises, naming the fix, unless the zoo is SS conv4 of that width with ``n_way``-wide heads.
    """
    widths = sorted({int(m.spec.arch_options.get("width", 32)) for m in zoo.members})
    if widths != [width]:
        raise BenchError(
            f"{method} init: average needs conv4 members of the meta model's width {width}; the zoo "
            f"has widths {widths} (set method.width or method.init=random)"
        )
    meta_pooled = isinstance(getattr(model, "pool", None), torch.nn.AdaptiveMaxPool2d)
    members_pooled = sorted({bool(m.spec.arch_options.get("global_pool", False)) for m in zoo.members})
    if members_pooled != [meta_pooled]:
        raise BenchError(
            f"{method} init: average needs members shaped like the meta model, but meta_model.global_pool="
            f"{str(meta_pooled).lower()} and the members' global_pool is "
            f"{', '.join(str(v).lower() for v in members_pooled)} (set method.init=random)"
        )
    model.load_state_dict(averaged_meta_params(zoo, method, n_way, average_head), strict=False)
