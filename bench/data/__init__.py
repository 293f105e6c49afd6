"""Datasets: a registry of loaders, each returning an :class:`ImageClassDataset`.

``load_dataset(cfg)`` looks the loader up by ``cfg.name`` and passes the rest of the config.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from bench.data.base import SPLITS, ImageClassDataset, forbid_real_data
from bench.errors import BenchError
from bench.registry import Registry

DatasetLoader = Callable[..., ImageClassDataset]
DATASETS: Registry[DatasetLoader] = Registry("dataset", discover=("bench.data",))


def load_dataset(cfg: Mapping[str, Any]) -> ImageClassDataset:
    """Build or load the dataset described by ``cfg`` (``name`` + loader keyword arguments)."""
    options = dict(cfg)
    name = str(options.pop("name"))
    loader = DATASETS.get(name)
    options.pop("description", None)
    accepted = inspect.signature(loader).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        raise BenchError(f"dataset {name!r} has no option(s) {unknown}; valid: {', '.join(accepted)}")
    return loader(**options)


__all__ = ["DATASETS", "SPLITS", "ImageClassDataset", "forbid_real_data", "load_dataset"]
