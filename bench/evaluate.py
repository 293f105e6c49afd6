"""Adapt on support, score on query: per-episode accuracies, mean, 95% CI and paired differences.

The CI is ``1.96 * std / sqrt(n)`` with the population std (``ddof=0``), as in the PURER reference;
records say so in ``ci_method``. Paired differences between two methods are taken episode by
episode on the same suite, so their CI is much tighter than comparing two independent CIs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from bench.errors import BenchError
from bench.method import Learner
from bench.progress import progress_enabled
from bench.tasks import TaskSuite
from bench.timing import synchronize

CI_METHOD = "1.96*std(ddof=0)/sqrt(n) over episodes"


@dataclass
class EvalResult:
    """Per-episode query accuracies (%) for each readout (number of test adaptation steps)."""

    per_episode: dict[int, list[float]]
    seconds: float
    n_episodes: int

    @property
    def episodes_per_s(self) -> float:
        """Evaluation throughput."""
        return self.n_episodes / self.seconds if self.seconds > 0 else float("nan")


def summarize(accuracies: Sequence[float]) -> dict[str, float]:
    """mean, std (ddof=0), ci95 and n of per-episode accuracies."""
    n = len(accuracies)
    if n == 0:
        raise BenchError("cannot summarise zero episodes")
    mean = sum(accuracies) / n
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / n)
    return {"mean": mean, "std": std, "ci95": 1.96 * std / math.sqrt(n), "n": n}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Summary of ``a[i] - b[i]`` over episodes evaluated on the same suite."""
    if len(a) != len(b):
        raise BenchError(f"paired difference needs equal episode counts; got {len(a)} and {len(b)}")
    return summarize([x - y for x, y in zip(a, b, strict=True)])


def evaluate(
    learner: Learner,
    suite: TaskSuite,
    readouts: Sequence[int],
    device: torch.device | str = "cpu",
    limit: int | None = None,
    description: str = "eval",
) -> EvalResult:
    """Run ``learner`` on the first ``limit`` (default all) episodes of ``suite``.

    Each episode adapts once; ``adapt_readouts`` yields a classifier per readout step count.
    """
    readouts = sorted({int(s) for s in readouts})
    if not readouts or readouts[0] < 0:
        raise BenchError(f"test_steps must be a non-empty list of integers >= 0; got {readouts}")
    n = len(suite) if limit is None else min(limit, len(suite))
    per_episode: dict[int, list[float]] = {s: [] for s in readouts}
    bar = tqdm(range(n), desc=description, unit="ep", disable=not progress_enabled())
    synchronize(device)
    start = time.perf_counter()
    for index in bar:
        episode = suite.episode(index, device)
        classifiers = learner.adapt_readouts(episode.support_x, episode.support_y, readouts)
        for steps, classifier in classifiers.items():
            with torch.no_grad():
                predicted = classifier(episode.query_x).argmax(1)
            correct = int((predicted == episode.query_y).sum())
            per_episode[steps].append(100.0 * correct / len(episode.query_y))
        if index % 25 == 0:
            bar.set_postfix(acc=f"{sum(per_episode[readouts[-1]]) / (index + 1):.1f}")
    synchronize(device)
    return EvalResult(per_episode, time.perf_counter() - start, n)
