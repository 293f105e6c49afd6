"""The episodic meta-training loop shared by MAML- and ProtoNet-style baselines.

Each iteration draws a meta-batch of episodes, sums their query losses, takes one outer Adam step,
and every ``select_every`` iterations scores a snapshot on the harness's meta-val probe, keeping the
best weights (selection on meta-val, never on the test split). Respects ``budget.max_seconds``.

Resume: a method that hands the loop a :class:`Resumable` (its own state: banks, generators, RNG
streams, counters) gets an atomic checkpoint every ``checkpoint_every`` iterations in the run's
``train_dir``; a killed run restarts from the last one and ends with the same weights as a run that
was never interrupted (tested per method).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from bench.checkpoint import CHECKPOINT_MAX_INTERVAL_S, load_checkpoint, save_checkpoint
from bench.errors import BenchError, IntegrityError
from bench.method import Budget, Learner, MetaLearner, MethodConfig, Probe
from bench.progress import progress_options
from bench.tasks import Episode

log = logging.getLogger(__name__)

#: (model, episode) -> (query loss, query accuracy %), differentiable w.r.t. the model.
TaskLoss = Callable[[nn.Module, Episode], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LoopResult:
    """What the loop did: iterations run, seconds, the selected iteration and the val history.

    ``seconds`` sums the loop's time over every process of a resumed run (up to its last
    checkpoint); ``resumed_seconds`` is the part spent by earlier processes (0 for a fresh run).
    """

    iterations: int = 0
    seconds: float = 0.0
    resumed_seconds: float = 0.0
    selected_iteration: int = 0
    selected_val: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    #: Labelled test-probe accuracy (%) of the last and of the selected weights (baselines.md §8:
    #: "also report the last checkpoint"); None without a test probe.
    test_probe_last: float | None = None
    test_probe_selected: float | None = None


@dataclass
class Resumable:
    """A method's own meta-training state, saved with the loop's checkpoints.

    ``save()`` returns nested dicts / lists of tensors, numbers and strings (what ``torch.load``
    with ``weights_only=True`` reads back); ``load(state)`` puts them back in place. A method whose
    loop has no state beyond the model, the outer optimiser and the iteration uses the defaults.
    """

    save: Callable[[], dict[str, Any]] = dict
    load: Callable[[dict[str, Any]], None] = lambda state: None


@dataclass
class LoopCheckpoint:
    """Where and how often :func:`meta_train_loop` checkpoints, and the method state it carries."""

    path: Path
    every: int
    state: Resumable = field(default_factory=Resumable)


def generator_states(gens: Mapping[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """The states of named ``torch.Generator`` streams (for :class:`Resumable`)."""
    return {name: g.get_state() for name, g in gens.items()}


def restore_generators(gens: Mapping[str, torch.Generator], states: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`generator_states`."""
    for name, generator in gens.items():
        generator.set_state(states[name].cpu())


def _iteration_done(it: int) -> None:
    """Called after each finished (and, when due, checkpointed) iteration; a seam for kill tests."""


def meta_train_loop(
    model: nn.Module,
    sample_tasks: Callable[[int], Sequence[Episode]],
    task_loss: TaskLoss,
    make_learner: Callable[[nn.Module], Learner],
    iterations: int,
    outer_lr: float = 1e-3,
    select_every: int = 250,
    validate: Probe | None = None,
    max_seconds: float | None = None,
    description: str = "meta-train",
    before_iteration: Callable[[int], None] | None = None,
    checkpoint: LoopCheckpoint | None = None,
    test_probe: Probe | None = None,
) -> LoopResult:
    """Train ``model`` in place for ``iterations`` outer steps; loads the meta-val-best weights at the end.

    ``test_probe`` (labelled, never used to select) scores the last and the selected weights once
    training is over, into ``test_probe_last`` / ``test_probe_selected``.

    ``sample_tasks(it)`` gives iteration ``it``'s meta-batch (it = 1..iterations);
    ``before_iteration(it)`` runs first (e.g. refreshing a synthetic bank). With ``checkpoint``,
    an existing checkpoint file is resumed (iterations, seconds and history continue from it).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=outer_lr)
    result = LoopResult()
    best_state: dict[str, torch.Tensor] | None = None
    if checkpoint is not None and checkpoint.path.exists():
        device = next(model.parameters()).device
        saved = load_checkpoint(checkpoint.path, device)
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            best_state, result = saved["best"], LoopResult(**saved["result"])
            result.resumed_seconds = result.seconds
            checkpoint.state.load(saved["method"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise IntegrityError(
                f"checkpoint {checkpoint.path} does not fit this method's state ({type(error).__name__}: "
                f"{error}); it was written by other code: delete it to restart meta-training"
            ) from error
        log.info("%s: resumed from %s at iteration %d", description, checkpoint.path, result.iterations)
    started = time.perf_counter() - result.seconds
    bar = tqdm(
        range(result.iterations + 1, iterations + 1),
        desc=description,
        unit="it",
        **progress_options(),
        initial=result.iterations,
        total=iterations,
    )

    def save() -> None:
        result.seconds = time.perf_counter() - started
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best": best_state,
            "result": asdict(result),
            "method": checkpoint.state.save(),
        }
        save_checkpoint(checkpoint.path, state)
        last_save[0] = time.perf_counter()

    last_save = [time.perf_counter()]
    for it in bar:
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            log.warning("%s: budget.max_seconds reached at iteration %d", description, it - 1)
            if checkpoint is not None and result.iterations:
                save()  # a rerun resumes here, finds the budget spent and ends with this very model
            break
        if before_iteration is not None:
            before_iteration(it)
        losses, accuracies = zip(*(task_loss(model, task) for task in sample_tasks(it)), strict=True)
        outer = torch.stack(losses).sum()
        if not torch.isfinite(outer):
            last = result.history[-1] if result.history else {}
            raise FloatingPointError(
                f"{description}: non-finite loss {float(outer)} at iteration {it}; last finite: {last}"
            )
        optimizer.zero_grad(set_to_none=True)
        outer.backward()
        optimizer.step()
        result.iterations = it
        row = {
            "iteration": float(it),
            "loss": float(outer.detach()),
            "acc": float(torch.stack(accuracies).mean()),
        }
        if validate is not None and (it % select_every == 0 or it == iterations):
            row["val_acc"] = validate(make_learner(copy.deepcopy(model)))
            if result.selected_val is None or row["val_acc"] > result.selected_val:
                result.selected_val, result.selected_iteration = row["val_acc"], it
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        result.history.append(row)
        bar.set_postfix(acc=f"{row['acc']:.1f}", loss=f"{row['loss']:.2f}", refresh=False)
        if checkpoint is not None and (
            it % checkpoint.every == 0
            or it == iterations
            or time.perf_counter() - last_save[0] >= CHECKPOINT_MAX_INTERVAL_S
        ):
            save()
        _iteration_done(it)
    result.seconds = time.perf_counter() - started
    if test_probe is not None:
        result.test_probe_last = test_probe(make_learner(copy.deepcopy(model)))
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        result.selected_iteration = result.iterations
    if test_probe is not None:
        same = best_state is None or result.selected_iteration == result.iterations
        result.test_probe_selected = (
            result.test_probe_last if same else test_probe(make_learner(copy.deepcopy(model)))
        )
    return result


def loop_stats(result: LoopResult, meta_batch: int) -> dict[str, float]:
    """Counters for the record: iterations, episodes, throughput, selection."""
    seconds = max(result.seconds, 1e-9)
    stats = {
        "meta_iterations": float(result.iterations),
        "meta_train_episodes": float(result.iterations * meta_batch),
        "meta_iterations_per_s": result.iterations / seconds,
        "selected_iteration": float(result.selected_iteration),
        "resumed_seconds": float(result.resumed_seconds),
    }
    if result.selected_val is not None:
        stats["val_acc_selected"] = float(result.selected_val)
    return stats


@dataclass
class EpisodicConfig(MethodConfig):
    """Meta-training fields shared by the episodic baselines (conv4 meta model, CPU schedule)."""

    width: int = 32
    meta_iterations: int = 2000
    meta_batch: int = 4
    n_query: int = 15
    outer_lr: float = 0.001
    select_every: int = 250
    val_episodes: int = 200
    #: Loop checkpoint cadence (iterations) for methods that pass a Resumable; not in the YAMLs
    #: because it never changes the numbers (run keys stay those of the committed records).
    checkpoint_every: int = 50


def train_episodic(
    method: MetaLearner,
    budget: Budget,
    iterations: int,
    sample_tasks: Callable[[int], Sequence[Episode]],
    task_loss: TaskLoss,
    make_learner: Callable[[nn.Module], Learner],
    before_iteration: Callable[[int], None] | None = None,
    model: nn.Module | None = None,
    resumable: Resumable | None = None,
) -> tuple[nn.Module, LoopResult]:
    """Train a conv4 meta model with :func:`meta_train_loop`; fills ``method.train_stats``.

    ``method.cfg`` is an :class:`EpisodicConfig` (width, outer lr, selection cadence, meta-batch);
    ``model`` defaults to a fresh conv4 meta model (pass one when callbacks need to reach it).
    With ``resumable`` and a ``context.train_dir``, the loop checkpoints to
    ``train_dir/checkpoint.pt`` and resumes from it; without ``resumable`` it never checkpoints
    (a method with unsaved state would resume wrongly).
    """
    from zoos.meta_model import fresh_meta_model

    cfg: EpisodicConfig = method.cfg  # type: ignore[assignment]
    model = fresh_meta_model(method.context, cfg.width) if model is None else model
    result = meta_train_loop(
        model,
        sample_tasks,
        task_loss,
        make_learner,
        iterations,
        cfg.outer_lr,
        cfg.select_every,
        method.validate,
        budget.max_seconds,
        str(cfg.name),
        before_iteration=before_iteration,
        checkpoint=_loop_checkpoint(method, resumable),
        test_probe=method.test_probe,
    )
    method.train_stats.update(loop_stats(result, cfg.meta_batch))
    method.extra_metrics.update(loop_probe_metrics(result))
    return model, result


def loop_probe_metrics(result: LoopResult) -> dict[str, float]:
    """The labelled test-probe numbers of a loop, named as PURER's (purer.md §10); {} without a probe."""
    names = {
        "acc_test_probe_last": result.test_probe_last,
        "acc_test_probe_selected": result.test_probe_selected,
    }
    return {name: float(value) for name, value in names.items() if value is not None}


def _loop_checkpoint(method: MetaLearner, resumable: Resumable | None) -> LoopCheckpoint | None:
    """The loop checkpoint of ``method`` (None without a Resumable or a train_dir)."""
    train_dir = method.context.train_dir
    if resumable is None or train_dir is None:
        return None
    every = int(getattr(method.cfg, "checkpoint_every", 50))
    if every < 1:
        raise BenchError(f"method.checkpoint_every must be >= 1 iteration; got {every}")
    return LoopCheckpoint(Path(train_dir) / "checkpoint.pt", every, resumable)
