"""The in-memory few-shot dataset every loader returns, and the data-free guard.

A dataset is a uint8 image tensor plus labels, class names and a class split. Images stay uint8
until a batch is taken, then :meth:`ImageClassDataset.normalize` gives float tensors in the
normalised input space that zoo members and meta models see.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.errors import BenchError, DataFreeViolation

SPLITS = ("train", "val", "test")

_guard = threading.local()


@contextlib.contextmanager
def _guarded_by(method_name: str | None) -> Iterator[None]:
    previous = getattr(_guard, "method", None)
    _guard.method = method_name
    try:
        yield
    finally:
        _guard.method = previous


def forbid_real_data(method_name: str) -> contextlib.AbstractContextManager[None]:
    """Within this block, reading images of any real dataset raises DataFreeViolation."""
    return _guarded_by(method_name)


def allow_real_data() -> contextlib.AbstractContextManager[None]:
    """Lift the guard for evaluation inside meta-training (checkpoint selection probes)."""
    return _guarded_by(None)


def _check_guard(dataset_name: str) -> None:
    method = getattr(_guard, "method", None)
    if method is not None:
        raise DataFreeViolation(
            f"method {method!r} read images of dataset {dataset_name!r} during meta-training; "
            "data-free methods see only the zoo (declare uses_real_data=True for an oracle)"
        )


@dataclass
class ImageClassDataset:
    """Images of named classes with a meta-train/val/test class split.

    Attributes:
        name: registry key of the loader (``glyphs``, ``omniglot``...).
        images: uint8 tensor of shape (N, C_stored, H, W); C_stored may be 1 for grey data.
        labels: int64 tensor of shape (N,), indices into ``class_names``.
        class_names: class names, one per label index.
        splits: split name -> sorted list of class indices.
        mean, std: per-channel normalisation of the *output* channels.
        channels: channels returned by :meth:`normalize` (grey data is replicated).
        content_hash: sha256 identity of the images, labels and split.
        manifest: free-form facts recorded by the loader (sources, split rule, counts).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    splits: dict[str, list[int]]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int
    content_hash: str
    manifest: dict[str, Any] = field(default_factory=dict)
    _index: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __getattribute__(self, name: str) -> Any:
        """Guard ``images`` like :meth:`read_rows` (both doors to the pixels are watched)."""
        if name == "images":
            _check_guard(object.__getattribute__(self, "name"))
        return object.__getattribute__(self, name)

    @property
    def _pixels(self) -> torch.Tensor:
        """``images`` without the guard check, for metadata and for :meth:`read_rows`."""
        return object.__getattribute__(self, "images")

    @property
    def image_size(self) -> int:
        """Side length in pixels (images are square)."""
        return int(self._pixels.shape[-1])

    def split_classes(self, split: str) -> list[int]:
        """Class indices of ``split`` ('train', 'val' or 'test')."""
        if split not in self.splits:
            raise BenchError(f"unknown split {split!r}; valid: {', '.join(self.splits)}")
        return self.splits[split]

    def class_rows(self, class_index: int) -> torch.Tensor:
        """Row indices (into ``images``) of one class, shape (n_c,), in stored order."""
        if not self._index:
            order = torch.argsort(self.labels, stable=True)
            counts = torch.bincount(self.labels, minlength=len(self.class_names)).tolist()
            for label, rows in enumerate(torch.split(order, counts)):
                self._index[label] = rows
        return self._index[class_index]

    def class_sizes(self, split: str) -> dict[int, int]:
        """Class index -> number of images, for the classes of ``split``."""
        return {c: int(self.class_rows(c).numel()) for c in self.split_classes(split)}

    def read_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 images at ``rows``, shape (len(rows), C_stored, H, W); guarded when data-free."""
        _check_guard(self.name)
        return self._pixels[rows]

    def normalize(self, images_uint8: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 (B, C_stored, H, W) -> float32 (B, channels, H, W) in normalised input space."""
        x = images_uint8.to(device=device, dtype=torch.float32).div_(255.0)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def describe(self) -> dict[str, Any]:
        """Summary for records: counts per split, image size, hash."""
        return {
            "name": self.name,
            "content_hash": self.content_hash,
            "image_size": self.image_size,
            "channels": self.channels,
            "n_images": int(self._pixels.shape[0]),
            "classes_per_split": {s: len(c) for s, c in self.splits.items()},
        }
