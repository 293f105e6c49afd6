"""Knowledge-distillation losses and the bi-level (MAML-style) KD task loss (baselines.md §3.8, §8).

``kd_loss`` options:

- ``kl`` (default): the textbook KL(p_teacher || p_student) on log-probabilities, batch mean,
  scaled by T².
- ``kl_prob_legacy``: what BiDf-MKD, FREE and TGR's code compute, ``F.kl_div(softmax(s), softmax(t))``
  -- ``kl_div`` expects log-probabilities as its input, so this is not a KL; kept to reproduce them.

The bi-level loss adapts the student to the teacher on the synthetic support (inner SGD on the KD
loss, second order) and scores the adapted student against the teacher on the synthetic query.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.learners.maml import Params, forward
from bench.tasks import Episode

KD_LOSSES = ("kl", "kl_prob_legacy")


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, kind: str = "kl", temperature: float = 1.0
) -> torch.Tensor:
    """Distillation loss between student logits (B, n) and teacher scores (B, n) (scalar).

    Teacher scores are logits or log-probabilities (equal up to a per-row shift).
    """
    if kind == "kl":
        log_s = F.log_softmax(student / temperature, dim=1)
        log_t = F.log_softmax(teacher / temperature, dim=1)
        return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2
    if kind == "kl_prob_legacy":
        return (
            F.kl_div(
                F.softmax(student / temperature, dim=1),
                F.softmax(teacher / temperature, dim=1),
                reduction="batchmean",
            )
            * temperature**2
        )
    raise ValueError(f"unknown kd_loss {kind!r}; valid: {', '.join(KD_LOSSES)}")


@dataclass
class KDEpisode(Episode):
    """A synthetic task with teacher scores: support_t (n_way*k, n_way), query_t (n_way*q, n_way).

    Scores are logits (white-box) or log-probabilities (black-box APIs); the KD losses take their
    softmax, which is the same for both.
    """

    support_t: torch.Tensor | None = None
    query_t: torch.Tensor | None = None


def bilevel_kd_loss(
    model: nn.Module,
    params: Params,
    task: KDEpisode,
    steps: int,
    lr: float,
    kind: str,
    temperature: float,
    second_order: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(query KD loss, query accuracy % against the labels) after ``steps`` inner KD steps on the support."""
    names, current = list(params), params
    for _ in range(steps):
        loss = kd_loss(forward(model, current, task.support_x), task.support_t, kind, temperature)
        grads = torch.autograd.grad(loss, [current[k] for k in names], create_graph=second_order)
        current = {k: current[k] - lr * g for k, g in zip(names, grads, strict=True)}
    logits = forward(model, current, task.query_x)
    accuracy = (logits.argmax(1) == task.query_y).float().mean() * 100.0
    return kd_loss(logits, task.query_t, kind, temperature), accuracy.detach()
