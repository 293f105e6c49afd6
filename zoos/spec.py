"""Specs of zoo members and zoos; their canonical JSON hash is their identity.

A :class:`MemberSpec` fixes everything that determines a member's weights: architecture and its
options, the dataset identity, the member's class names (in local-label order), the image shape,
the training recipe and the seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bench.hashing import spec_hash


@dataclass(frozen=True)
class TrainRecipe:
    """Pretraining recipe (PURER's ``pretrain.py``; see purer.md §5).

    ``optimizer`` is ``adam`` (conv4: lr 0.01) or ``sgd`` (resnets: lr 0.01, momentum 0.9, wd 5e-4).
    ``select`` is ``final`` (what the reference saves) or ``best_holdout``.
    """

    epochs: int = 60
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = (30, 40, 50)
    gamma: float = 0.2
    clip_norm: float = 50.0
    holdout_fraction: float = 0.2
    select: str = "final"
    #: Random crop (zero padding image_size // 8) + horizontal flip on training batches.
    augment: bool = False
    #: > 0: after training, re-estimate every BN layer's running statistics from one train-mode
    #: pass over the training images in a seeded random order, this many at a time (cumulative
    #: average; weights unchanged); 0: off. Few optimiser steps leave running statistics far from
    #: the trained weights' batch statistics (a resnet at 20 steps is at chance in eval mode while
    #: right in train mode). Batches should mix classes: the images are stored class by class.
    recalibrate_bn_batch: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON; switches that are off (``augment``, ``recalibrate_bn_batch``) are omitted.

        So member keys from before a switch existed hold.
        """
        data = asdict(self)
        for switch in ("augment", "recalibrate_bn_batch"):
            if not data[switch]:
                del data[switch]
        return data


@dataclass(frozen=True)
class MemberSpec:
    """Everything that determines one zoo member's weights."""

    arch: str
    arch_options: dict[str, Any]
    dataset: str
    dataset_hash: str
    classes: tuple[str, ...]
    image_size: int
    channels: int
    head_width: int
    recipe: TrainRecipe
    seed: int
    index: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        return {**asdict(self), "recipe": self.recipe.to_json()}

    @property
    def training_dataset(self) -> str:
        """Name of the dataset the weights are trained on (another one for a ``foreign`` member)."""
        return str(self.extra["trained_on"]["dataset"]) if "trained_on" in self.extra else self.dataset

    @property
    def training_classes(self) -> tuple[str, ...]:
        """Classes the weights are trained on, in local-label order (``classes`` = what it claims)."""
        return tuple(self.extra["trained_on"]["classes"]) if "trained_on" in self.extra else self.classes

    @property
    def key(self) -> str:
        """Content hash of the spec (the member's cache key)."""
        return spec_hash(self.to_json())

    @staticmethod
    def from_json(data: dict[str, Any]) -> MemberSpec:
        """Inverse of :meth:`to_json`."""
        recipe = dict(data["recipe"])
        recipe["milestones"] = tuple(recipe["milestones"])
        return MemberSpec(**{**data, "classes": tuple(data["classes"]), "recipe": TrainRecipe(**recipe)})
