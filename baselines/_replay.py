"""Shared pieces of the generator-based baselines' loops (BiDf-MKD, FREE, TGR).

- :class:`ReplayStall`: "synthesise again after ``patience`` replay iterations without a new best
  replay training accuracy (or after ``max_replay`` iterations)", the trigger all three use.
- :func:`check_generator_setup`: the checks they share (KD loss name, member width, pool sizes).
- :func:`masked_disagreement`: the adversarial term pushing images towards teacher-student
  disagreement, masked to the images on which both still agree.
- :func:`train_replay_maml`: their replay-MAML loop (fine-tune learner), checkpointing the state
  they share (RNG streams, bank, stall window, counters) plus each method's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines._bank import ClassBank, distillable_members
from baselines._kd import KD_LOSSES
from bench.errors import BenchError
from bench.learners.episodic import (
    EpisodicConfig,
    LoopResult,
    Resumable,
    TaskLoss,
    generator_states,
    restore_generators,
    train_episodic,
)
from bench.learners.maml import FineTuneLearner
from bench.method import Budget, MetaLearner


@dataclass
class GeneratorReplayConfig(EpisodicConfig):
    """Fields shared by BiDf-MKD, FREE and TGR: replay MAML, generator, KD, bank, stall trigger."""

    inner_lr: float = 0.01
    inner_steps: int = 5
    second_order: bool = True
    nz: int = 256
    ngf: int = 64
    generator_lr: float = 0.001
    kd_loss: str = "kl"
    kd_temperature: float = 1.0
    bank_capacity: int = 20
    patience: int = 200


@dataclass
class ReplayStall:
    """Best replay accuracy seen since the last synthesis and the iterations without improvement."""

    patience: int
    max_replay: int | None = None
    best: float = -1.0
    stale: int = 0
    since: int = 0
    accs: list[float] = field(default_factory=list)

    def record(self, accuracy: float) -> None:
        """One replay task's query accuracy (%) of the current iteration."""
        self.accs.append(accuracy)

    def step(self) -> bool:
        """Close the previous iteration; True when it is time to synthesise again."""
        if self.accs:
            acc = sum(self.accs) / len(self.accs)
            self.best, self.stale = (acc, 0) if acc > self.best else (self.best, self.stale + 1)
            self.accs = []
        self.since += 1
        return self.stale >= self.patience or (self.max_replay is not None and self.since > self.max_replay)

    def reset(self) -> None:
        """A synthesis happened: start a new stall window."""
        self.best, self.stale, self.since = -1.0, 0, 0

    def state_dict(self) -> dict:
        """The window's counters (for loop checkpoints)."""
        return {"best": self.best, "stale": self.stale, "since": self.since, "accs": list(self.accs)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s counters."""
        self.best, self.stale, self.since = float(state["best"]), int(state["stale"]), int(state["since"])
        self.accs = [float(a) for a in state["accs"]]


def check_generator_setup(cfg, zoo, method, name: str, per_class: int | None = None):  # noqa: ANN001, ANN201
    """The zoo of members ``method`` can distil (see ``distillable_members``).

    Raises on an unknown ``kd_loss``, too few images per class, or members wider than the task
    (their boundary / adversarial terms compare a member's whole output with the n_way-way
    student's: refused here, before any generator is trained, rather than deep in training).
    """
    context = method.context
    kind = getattr(cfg, "kd_loss", "kl")
    if kind not in KD_LOSSES:
        raise BenchError(f"method.kd_loss={kind!r} is not one of: {', '.join(KD_LOSSES)}")
    wide = [m for m in zoo.members if m.spec.head_width > context.n_way]
    if wide:
        listed = ", ".join(f"member {m.spec.index} ({m.spec.head_width} outputs)" for m in wide[:5])
        raise BenchError(
            f"{name} needs members with at most n_way={context.n_way} outputs (its generator terms "
            f"compare a member's outputs with the {context.n_way}-way student's); the zoo has {listed}; "
            f"use a zoo with classes_per_member: {context.n_way} or task.n_way={wide[0].spec.head_width}"
        )
    zoo = distillable_members(zoo, context.n_way, name, method.train_stats)
    if per_class is not None and per_class < context.k_shot + cfg.n_query:
        raise BenchError(
            f"{name}: images_per_class={per_class} must be >= k_shot + n_query = {context.k_shot} + "
            f"{cfg.n_query} (each class is split into support and query)"
        )
    return zoo


def masked_disagreement(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Per-image KL(teacher || student) (B,), zero where their argmax differ (already disagreeing)."""
    agree = (teacher_logits.argmax(1) == student_logits.argmax(1)).float().detach()
    kl = F.kl_div(
        F.log_softmax(student_logits, 1), F.log_softmax(teacher_logits, 1), reduction="none", log_target=True
    )
    return agree * kl.sum(1)


def train_replay_maml(
    method: MetaLearner,
    budget: Budget,
    iterations: int,
    sample_tasks: Callable[[int], list],
    task_loss: TaskLoss,
    before_iteration: Callable[[int], None],
    model: nn.Module,
    shared: tuple[dict[str, torch.Generator], ClassBank, ReplayStall, dict[str, float]],
    own: Resumable,
) -> tuple[nn.Module, LoopResult]:
    """Replay MAML via ``train_episodic`` with a fine-tune learner, resumable.

    ``shared`` = (RNG streams, bank, stall window, counters), saved the same way for every method;
    ``own`` saves/loads the rest of the method's state (generators, optimisers, pending tasks).
    """
    gens, bank, stall, stats = shared

    def save() -> dict[str, Any]:
        return {
            **own.save(),
            "gens": generator_states(gens),
            "bank": bank.state_dict(),
            "stall": stall.state_dict(),
            "stats": dict(stats),
        }

    def load(saved: dict[str, Any]) -> None:
        restore_generators(gens, saved["gens"])
        bank.load_state_dict(saved["bank"])
        stall.load_state_dict(saved["stall"])
        stats.update(saved["stats"])
        own.load(saved)

    inner_lr = float(method.cfg.inner_lr)  # type: ignore[attr-defined]
    return train_episodic(
        method,
        budget,
        iterations,
        sample_tasks,
        task_loss,
        lambda m: FineTuneLearner(m, inner_lr),
        before_iteration,
        model,
        Resumable(save, load),
    )
