"""Member protocols: which classes each zoo member is trained on.

- ``disjoint`` (PURER): meta-train class names sorted, cut into contiguous groups of
  ``classes_per_member`` (13 members for 64 classes; the last may be smaller but keeps a
  ``classes_per_member``-wide head). ``n_members`` limits the zoo to a seeded subset of classes.
- ``overlapping`` (PURER-Plus / FREE): ``n_members`` members, each on ``classes_per_member``
  classes drawn without replacement by a seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from bench.data.base import ImageClassDataset
from bench.errors import BenchError
from bench.seeding import derived_generator
from zoos.architectures import ARCHITECTURES
from zoos.spec import MemberSpec, TrainRecipe

PROTOCOLS = ("disjoint", "overlapping")


def class_groups(
    train_names: list[str], protocol: str, per_member: int, n_members: int | None, seed: int
) -> list[list[str]]:
    """Class-name groups, one per member (each group in local-label order)."""
    names = sorted(train_names)
    if per_member < 1:
        raise BenchError(f"classes_per_member must be >= 1; got {per_member}")
    if n_members is not None and n_members < 1:
        raise BenchError(f"n_members must be >= 1 or null; got {n_members}")
    if protocol == "disjoint":
        if n_members is not None:
            needed = n_members * per_member
            if needed > len(names):
                raise BenchError(
                    f"disjoint zoo of {n_members} x {per_member} classes needs {needed} meta-train "
                    f"classes; the dataset has {len(names)}"
                )
            pick = torch.randperm(len(names), generator=derived_generator(seed, "class-pool"))[:needed]
            names = sorted(names[i] for i in pick.tolist())
        count = math.ceil(len(names) / per_member)
        return [names[i * per_member : (i + 1) * per_member] for i in range(count)]
    if protocol == "overlapping":
        if n_members is None:
            raise BenchError("overlapping zoos need n_members (e.g. 100)")
        if per_member > len(names):
            raise BenchError(f"classes_per_member {per_member} > {len(names)} meta-train classes")
        gen = derived_generator(seed, "overlapping-classes")
        return [
            [names[i] for i in torch.randperm(len(names), generator=gen)[:per_member].tolist()]
            for _ in range(n_members)
        ]
    raise BenchError(f"unknown zoo protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")


def member_specs(cfg: Mapping[str, Any], dataset: ImageClassDataset) -> list[MemberSpec]:
    """The member specs of zoo config ``cfg`` over ``dataset``'s meta-train classes."""
    arch = str(cfg["arch"])
    ARCHITECTURES.get(arch)  # did-you-mean error for unknown archs
    per_member = int(cfg.get("classes_per_member", 5))
    train_names = [dataset.class_names[i] for i in dataset.split_classes("train")]
    groups = class_groups(
        train_names,
        str(cfg.get("protocol", "disjoint")),
        per_member,
        cfg.get("n_members"),
        int(cfg.get("seed", 0)),
    )
    recipe_cfg = dict(cfg.get("recipe", {}))
    if "milestones" in recipe_cfg:
        recipe_cfg["milestones"] = tuple(recipe_cfg["milestones"])
    try:
        recipe = TrainRecipe(**recipe_cfg)
    except TypeError as error:
        raise BenchError(f"bad zoo recipe keys {sorted(recipe_cfg)}: {error}") from error
    return [
        MemberSpec(
            arch=arch,
            arch_options=dict(cfg.get("arch_options", {})),
            dataset=dataset.name,
            dataset_hash=dataset.content_hash,
            classes=tuple(group),
            image_size=dataset.image_size,
            channels=dataset.channels,
            head_width=per_member,
            recipe=recipe,
            seed=int(cfg.get("seed", 0)),
            index=index,
        )
        for index, group in enumerate(groups)
    ]
