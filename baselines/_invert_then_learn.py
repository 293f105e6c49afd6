"""Shared driver of dfmaml / dfprotonet: refresh a synthetic class bank, meta-learn on bank tasks.

baselines.md §3.6: every ``generate_interval`` iterations one random member is inverted into the
bank (until the bank has ``n_way`` classes, members are inverted back to back); meta-training then
samples N-way tasks whose classes may come from different members.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from baselines._bank import ClassBank
from bench.learners.episodic import (
    EpisodicConfig,
    Resumable,
    TaskLoss,
    generator_states,
    restore_generators,
    train_episodic,
)
from bench.method import Budget, Learner, MetaLearner
from bench.seeding import derive_seed, make_generator
from purer.agreement import agreement_stats
from purer.inversion import InversionWeights
from zoos.zoo import Zoo


@dataclass
class InvertThenLearnConfig(EpisodicConfig):
    """Bank and meta-training hyper-parameters shared by dfmaml and dfprotonet."""

    at_least_one: ClassVar[tuple[str, ...]] = ("generate_interval",)
    generate_interval: int = 200
    generate_iterations: int = 200
    bank_support: int = 30
    bank_query: int = 30
    synthesis_lr: float = 0.25
    ce: float = 1.0
    bn: float = 0.01
    tv: float = 0.0001
    l2: float = 0.0
    jitter: int = 2


def invert_then_learn(
    method: MetaLearner,
    zoo: Zoo,
    budget: Budget,
    task_loss: TaskLoss,
    make_learner: Callable[[nn.Module], Learner],
) -> tuple[nn.Module, ClassBank]:
    """Meta-train a fresh conv4 on bank tasks; returns (meta-val-selected model, bank)."""
    cfg: InvertThenLearnConfig = method.cfg  # type: ignore[assignment]
    ctx = method.context
    name = str(cfg.name)
    iterations = budget.meta_iterations or cfg.meta_iterations
    gens = {k: make_generator(derive_seed(ctx.seed, name, k)) for k in ("members", "pixels", "tasks")}
    weights = InversionWeights(cfg.ce, cfg.bn, cfg.tv, cfg.l2, cfg.jitter)
    bank, inverted = ClassBank(), []

    seconds = [0.0]

    def refresh(it: int) -> None:
        due = (it - 1) % cfg.generate_interval == 0
        while due or bank.n_classes < ctx.n_way:
            started = time.perf_counter()
            index = int(torch.randint(len(zoo.members), (1,), generator=gens["members"]))
            bank.add_member(
                zoo.members[index],
                cfg.bank_support,
                cfg.bank_query,
                cfg.generate_iterations,
                cfg.synthesis_lr,
                weights,
                gens["pixels"],
                ctx.device,
            )
            inverted.append(index)
            seconds[0] += time.perf_counter() - started
            due = False

    def sample(_it: int) -> list:
        return [
            bank.sample_task(ctx.n_way, ctx.k_shot, cfg.n_query, gens["tasks"]) for _ in range(cfg.meta_batch)
        ]

    def save() -> dict:
        return {
            "gens": generator_states(gens),
            "bank": bank.state_dict(),
            "inverted": list(inverted),
            "seconds": seconds[0],
        }

    def load(state: dict) -> None:
        restore_generators(gens, state["gens"])
        bank.load_state_dict(state["bank"])
        inverted[:] = state["inverted"]
        seconds[0] = float(state["seconds"])

    model, result = train_episodic(
        method, budget, iterations, sample, task_loss, make_learner, refresh, resumable=Resumable(save, load)
    )
    method.train_stats.update(
        {
            "member_inversions": float(len(inverted)),
            "inversion_seconds_per_member": seconds[0] / max(len(inverted), 1),
            "inversion_steps": float(2 * cfg.generate_iterations * len(inverted)),
            "synth_images": float(bank.images_synthesised),
            "synth_images_per_s": bank.images_synthesised / max(result.seconds, 1e-9),
            "bank_classes": float(bank.n_classes),
            **agreement_stats(bank.agreement),
        }
    )
    return model, bank
