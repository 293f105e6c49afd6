"""Episode streams for meta-training baselines: real meta-train episodes (oracles only)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bench.data.base import ImageClassDataset
from bench.errors import BenchError
from bench.method import MethodContext
from bench.seeding import derive_seed
from bench.tasks import Episode, TaskShape, TaskSuite


def real_task_stream(
    dataset: ImageClassDataset | None,
    context: MethodContext,
    n_query: int,
    meta_batch: int,
    iterations: int,
    method: str,
) -> Callable[[int], Sequence[Episode]]:
    """``it -> meta_batch`` fresh seeded episodes from the **meta-train** split (1-based ``it``)."""
    if dataset is None:
        raise BenchError(f"{method} meta-trains on real data, but the harness gave it no dataset")
    shape = TaskShape(context.n_way, context.k_shot, n_query)
    suite = TaskSuite(dataset, "train", shape, iterations * meta_batch, derive_seed(context.seed, method))

    def sample(it: int) -> list[Episode]:
        start = (it - 1) * meta_batch
        return [suite.episode(start + j, context.device) for j in range(meta_batch)]

    return sample
