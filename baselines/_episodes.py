"""Real meta-train episodes for the oracle baselines, and their shared training driver."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from bench.data.base import ImageClassDataset
from bench.errors import BenchError
from bench.learners.episodic import EpisodicConfig, Resumable, TaskLoss, train_episodic
from bench.method import Budget, Learner, MetaLearner, MethodContext
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


def train_on_real_episodes(
    method: MetaLearner,
    budget: Budget,
    task_loss: TaskLoss,
    make_learner: Callable[[nn.Module], Learner],
    model: nn.Module | None = None,
) -> nn.Module:
    """Meta-train ``model`` (default a fresh conv4) on real episodes with meta-val selection."""
    cfg: EpisodicConfig = method.cfg  # type: ignore[assignment]
    iterations = budget.meta_iterations or cfg.meta_iterations
    sample = real_task_stream(
        method.real_data, method.context, cfg.n_query, cfg.meta_batch, iterations, cfg.name
    )
    # The episode stream is a pure function of the iteration: nothing but the loop's state to save.
    model, _ = train_episodic(
        method, budget, iterations, sample, task_loss, make_learner, model=model, resumable=Resumable()
    )
    return model
