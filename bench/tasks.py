"""Task suites: fixed, seeded, indexable N-way K-shot Q-query episodes with a content hash.

A suite is fixed by (dataset identity, split, n_way, k_shot, n_query, n_episodes, seed). Episode i
is drawn from its own generator ``derive_seed(seed, "episode", i)``, so it does not depend on how
many episodes precede it. Every method is evaluated on exactly the same episodes, which is what
makes paired differences between methods valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.data.base import ImageClassDataset
from bench.errors import BenchError
from bench.hashing import canonical_json, sha256_bytes, tensor_sha256
from bench.seeding import derive_seed, make_generator


@dataclass(frozen=True)
class TaskShape:
    """N-way K-shot Q-query."""

    n_way: int
    k_shot: int
    n_query: int

    @property
    def label(self) -> str:
        """Short name, e.g. ``5w1s``."""
        return f"{self.n_way}w{self.k_shot}s"


@dataclass
class Episode:
    """One few-shot task in normalised input space; labels 0..n_way-1 in sampling order.

    Attributes:
        support_x: (n_way*k_shot, C, H, W), class-blocked.
        support_y: (n_way*k_shot,).
        query_x: (n_way*n_query, C, H, W), class-blocked.
        query_y: (n_way*n_query,).
        classes: (n_way,) dataset class indices.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor


class TaskSuite:
    """The episodes of one (dataset, split, shape, seed); index with ``suite.episode(i, device)``.

    Stored rows: ``classes`` (E, n_way), ``support_rows`` (E, n_way, k_shot) and
    ``query_rows`` (E, n_way, n_query), indices into ``dataset.images``.
    """

    def __init__(
        self, dataset: ImageClassDataset, split: str, shape: TaskShape, n_episodes: int, seed: int
    ) -> None:
        validate_shape(dataset, split, shape, n_episodes)
        self.dataset, self.split, self.shape = dataset, split, shape
        self.n_episodes, self.seed = n_episodes, seed
        class_ids = torch.tensor(dataset.split_classes(split))
        per_class_rows = {int(c): dataset.class_rows(int(c)) for c in class_ids}
        k, q = shape.k_shot, shape.n_query
        self.classes = torch.empty(n_episodes, shape.n_way, dtype=torch.long)
        self.support_rows = torch.empty(n_episodes, shape.n_way, k, dtype=torch.long)
        self.query_rows = torch.empty(n_episodes, shape.n_way, q, dtype=torch.long)
        for i in range(n_episodes):
            gen = make_generator(derive_seed(seed, "episode", i))
            self.classes[i], self.support_rows[i], self.query_rows[i] = draw_rows(
                class_ids, per_class_rows, shape, gen
            )
        self.content_hash = self._hash()

    def _hash(self) -> str:
        spec = {
            "dataset": self.dataset.name,
            "dataset_hash": self.dataset.content_hash,
            "split": self.split,
            "shape": [self.shape.n_way, self.shape.k_shot, self.shape.n_query],
            "n_episodes": self.n_episodes,
            "seed": self.seed,
            "rows": [tensor_sha256(t) for t in (self.classes, self.support_rows, self.query_rows)],
        }
        return sha256_bytes(canonical_json(spec).encode())[:16]

    def __len__(self) -> int:
        return self.n_episodes

    def episode(self, index: int, device: torch.device | str = "cpu") -> Episode:
        """Episode ``index`` as normalised tensors on ``device``."""
        if not 0 <= index < self.n_episodes:
            raise IndexError(f"episode {index} out of range 0..{self.n_episodes - 1}")
        return episode_from_rows(
            self.dataset,
            self.shape,
            self.classes[index].clone(),
            self.support_rows[index],
            self.query_rows[index],
            device,
        )

    def describe(self) -> dict[str, object]:
        """Identity of the suite for records."""
        return {
            "split": self.split,
            "n_way": self.shape.n_way,
            "k_shot": self.shape.k_shot,
            "n_query": self.shape.n_query,
            "n_episodes": self.n_episodes,
            "seed": self.seed,
            "content_hash": self.content_hash,
        }


def draw_rows(
    class_ids: torch.Tensor, per_class_rows: dict[int, torch.Tensor], shape: TaskShape, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One episode's rows: classes (n_way,), support rows (n_way, k_shot), query rows (n_way, n_query).

    Classes first (a permutation of ``class_ids``), then per class a permutation of its rows.
    """
    k, q = shape.k_shot, shape.n_query
    chosen = class_ids[torch.randperm(len(class_ids), generator=gen)[: shape.n_way]]
    support = torch.empty(shape.n_way, k, dtype=torch.long)
    query = torch.empty(shape.n_way, q, dtype=torch.long)
    for j, c in enumerate(chosen.tolist()):
        rows = per_class_rows[c]
        picked = rows[torch.randperm(len(rows), generator=gen)[: k + q]]
        support[j], query[j] = picked[:k], picked[k:]
    return chosen, support, query


class EpisodeSampler:
    """Random episodes of one (dataset, split, shape), each drawn with the caller's generator.

    For methods that sample *fresh* real episodes during meta-training (TDS's real meta-val
    variant); the fixed, indexable suites used for evaluation are :class:`TaskSuite`.
    """

    def __init__(self, dataset: ImageClassDataset, split: str, shape: TaskShape) -> None:
        validate_shape(dataset, split, shape, 1)
        self.dataset, self.split, self.shape = dataset, split, shape
        self.class_ids = torch.tensor(dataset.split_classes(split))
        self.per_class_rows = {int(c): dataset.class_rows(int(c)) for c in self.class_ids}

    def sample(self, gen: torch.Generator, device: torch.device | str = "cpu") -> Episode:
        """A random episode (labels 0..n_way-1 in drawn class order) as normalised tensors."""
        classes, support_rows, query_rows = draw_rows(self.class_ids, self.per_class_rows, self.shape, gen)
        return episode_from_rows(self.dataset, self.shape, classes, support_rows, query_rows, device)


def episode_from_rows(
    dataset: ImageClassDataset,
    shape: TaskShape,
    classes: torch.Tensor,
    support_rows: torch.Tensor,
    query_rows: torch.Tensor,
    device: torch.device | str,
) -> Episode:
    """Read and normalise the images at ``support_rows`` (n_way, k_shot) / ``query_rows`` (n_way, n_query)."""
    labels = torch.arange(shape.n_way, device=device)
    return Episode(
        support_x=dataset.normalize(dataset.read_rows(support_rows.reshape(-1)), device),
        support_y=labels.repeat_interleave(shape.k_shot),
        query_x=dataset.normalize(dataset.read_rows(query_rows.reshape(-1)), device),
        query_y=labels.repeat_interleave(shape.n_query),
        classes=classes,
    )


def validate_shape(dataset: ImageClassDataset, split: str, shape: TaskShape, n_episodes: int) -> None:
    """Raise a BenchError naming the numbers if the split cannot supply ``shape`` episodes."""
    if min(shape.n_way, shape.k_shot, shape.n_query, n_episodes) < 1:
        raise BenchError(
            f"n_way, k_shot, n_query and n_episodes must all be >= 1; got n_way={shape.n_way}, "
            f"k_shot={shape.k_shot}, n_query={shape.n_query}, n_episodes={n_episodes}"
        )
    sizes = dataset.class_sizes(split)
    if shape.n_way > len(sizes):
        raise BenchError(
            f"n_way={shape.n_way} is larger than the {len(sizes)} classes of {dataset.name!r} split {split!r}"
        )
    needed = shape.k_shot + shape.n_query
    smallest = min(sizes.values())
    if needed > smallest:
        raise BenchError(
            f"k_shot + n_query = {shape.k_shot} + {shape.n_query} = {needed} exceeds the "
            f"{smallest} images of the smallest class in {dataset.name!r} split {split!r}"
        )
