"""Adapt on support, score on query: per-episode accuracies, mean, 95% CI and paired differences.

The CI is ``1.96 * std / sqrt(n)`` with the population std (``ddof=0``), as in the PURER reference;
records say so in ``ci_method``. Paired differences between two methods are taken episode by
episode on the same suite, so their CI is much tighter than comparing two independent CIs.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench import provenance
from bench.atomic import atomic_write_json
from bench.errors import BenchError
from bench.method import Learner
from bench.progress import progress_options
from bench.tasks import TaskSuite
from bench.timing import synchronize

CI_METHOD = "1.96*std(ddof=0)/sqrt(n) over episodes"
log = logging.getLogger(__name__)


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


def _resume(
    progress: Path | None, suite: TaskSuite, readouts: list[int], fingerprint: str | None
) -> tuple[dict[int, list[float]], float]:
    """Per-episode results and seconds saved by an interrupted evaluation.

    Only those of the same suite, readouts and learner (``fingerprint``); progress files written
    before fingerprints were saved are accepted.
    """
    empty: dict[int, list[float]] = {s: [] for s in readouts}
    if progress is None or not progress.is_file():
        return empty, 0.0
    try:
        saved = json.loads(progress.read_text())
        per_episode = {int(k): [float(x) for x in v] for k, v in saved["per_episode"].items()}
        seconds = float(saved["seconds"])
        if (
            sorted(per_episode) != sorted(saved["readouts"])
            or len({len(v) for v in per_episode.values()}) > 1
        ):
            raise ValueError(
                f"its results {sorted(per_episode)} do not match its readouts {saved['readouts']}"
            )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning(
            "ignoring %s: unreadable (%s: %s); evaluating from the first episode",
            progress,
            type(error).__name__,
            error,
        )
        return empty, 0.0
    if saved.get("suite") != suite.content_hash or saved.get("readouts") != readouts:
        log.warning("ignoring %s: it belongs to another suite or readout list", progress)
        return empty, 0.0
    if fingerprint is not None and saved.get("learner", fingerprint) != fingerprint:
        log.warning(
            "ignoring %s: it was written for another trained model (learner fingerprint %s, now %s); "
            "evaluating from the first episode",
            progress,
            str(saved.get("learner"))[:12],
            fingerprint[:12],
        )
        return empty, 0.0
    provenance.inherit(saved.get("code_history"), progress)
    log.info("resuming evaluation at episode %d from %s", len(per_episode[readouts[0]]), progress)
    return per_episode, seconds


def evaluate(
    learner: Learner,
    suite: TaskSuite,
    readouts: Sequence[int],
    device: torch.device | str = "cpu",
    limit: int | None = None,
    description: str = "eval",
    progress: Path | None = None,
    save_every: int = 25,
    fingerprint: str | None = None,
) -> EvalResult:
    """Run ``learner`` on the first ``limit`` (default all) episodes of ``suite``.

    Each episode adapts once; ``adapt_readouts`` yields a classifier per readout step count.
    With ``progress``, the per-episode results are saved atomically every ``save_every`` episodes
    and a rerun continues after the last saved episode (episodes are independent and seeded, so
    the final list is identical to an uninterrupted run's). ``fingerprint`` (of the learner, see
    ``bench.hashing.object_fingerprint``) is saved with them: progress of another model is ignored.
    """
    readouts = sorted({int(s) for s in readouts})
    if not readouts or readouts[0] < 0:
        raise BenchError(f"test_steps must be a non-empty list of integers >= 0; got {readouts}")
    n = len(suite) if limit is None else min(limit, len(suite))
    per_episode, seconds_before = _resume(progress, suite, readouts, fingerprint)
    first = min(len(per_episode[readouts[0]]), n)
    per_episode = {s: v[:first] for s, v in per_episode.items()}
    bar = tqdm(range(first, n), desc=description, unit="ep", **progress_options(), initial=first, total=n)
    synchronize(device)
    start = time.perf_counter() - seconds_before
    for index in bar:
        episode = suite.episode(index, device)
        classifiers = learner.adapt_readouts(episode.support_x, episode.support_y, readouts)
        for steps, classifier in classifiers.items():
            with torch.no_grad():
                predicted = classifier(episode.query_x).argmax(1)
            correct = int((predicted == episode.query_y).sum())
            per_episode[steps].append(100.0 * correct / len(episode.query_y))
        if index % 25 == 0:
            bar.set_postfix(acc=f"{sum(per_episode[readouts[-1]]) / (index + 1):.1f}", refresh=False)
        if progress is not None and ((index + 1) % save_every == 0 or index + 1 == n):
            payload = {"suite": suite.content_hash, "readouts": readouts, "per_episode": per_episode}
            if fingerprint is not None:
                payload["learner"] = fingerprint
            payload["code_history"] = provenance.stamp()
            atomic_write_json(progress, {**payload, "seconds": time.perf_counter() - start})
    synchronize(device)
    return EvalResult(per_episode, time.perf_counter() - start, n)
