"""TDS pieces: task interpolation, the member-selection policy, re-inversion rounds."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from baselines.tds import Tds, interpolated_loss
from bench.learners.protonet import protonet_task_loss
from bench.method import METHODS, Budget, MethodContext
from bench.tasks import Episode

CPU = torch.device("cpu")


def _episode(gen: torch.Generator) -> Episode:
    labels = torch.arange(3)
    return Episode(
        torch.randn(3, 4, generator=gen),
        labels,
        torch.randn(6, 4, generator=gen),
        labels.repeat_interleave(2),
        labels,
    )


def test_interpolation_is_protonet_at_the_ends_and_mixes_embeddings_between():
    gen = torch.Generator().manual_seed(0)
    first, second = _episode(gen), _episode(gen)
    embed = torch.nn.Linear(4, 5)
    assert torch.allclose(
        interpolated_loss(embed, first, second, 1.0, 3)[0], protonet_task_loss(embed, first, 3)[0]
    )
    assert torch.allclose(
        interpolated_loss(embed, first, second, 0.0, 3)[0], protonet_task_loss(embed, second, 3)[0]
    )
    middle = interpolated_loss(embed, first, second, 0.5, 3)[0]
    assert not torch.allclose(middle, protonet_task_loss(embed, first, 3)[0])
    middle.backward()
    assert embed.weight.grad is not None and embed.weight.grad.abs().sum() > 0


def test_sampling_without_replacement_log_probabilities_sum_to_one():
    logits = torch.tensor([0.3, -1.0, 2.0, 0.5], requires_grad=True)
    total = sum(
        Tds._log_prob_without_replacement(logits, torch.tensor(order)).exp()
        for order in itertools.permutations(range(4), 2)
    )
    assert total.item() == pytest.approx(1.0, abs=1e-6)
    Tds._log_prob_without_replacement(logits, torch.tensor([2, 0])).backward()
    assert logits.grad.abs().sum() > 0


def _tds(**changes):  # noqa: ANN003, ANN202
    cls = METHODS.get("tds")
    smoke = {"name": "tds", "generate_iterations": 2, "ngf": 4, "nz": 8, "n_query": 3, "select_every": 10**6}
    cfg = dataclasses.replace(cls.Config(), **{**smoke, **changes})
    return cls(cfg, MethodContext(5, 1, 32, 3, CPU, 0))


def test_plateaus_trigger_rounds_of_member_inversions_and_the_policy_learns(tiny_zoo):
    patient = _tds(patience=100)
    patient.meta_train(tiny_zoo, Budget(meta_iterations=6), torch.Generator())
    eager = _tds(patience=1, members_per_round=2)
    learner = eager.meta_train(tiny_zoo, Budget(meta_iterations=8), torch.Generator())
    assert (
        patient.train_stats["rounds"] == 1 and patient.train_stats["member_inversions"] == 3
    )  # min(4, 3 members)
    stats = eager.train_stats
    assert stats["rounds"] >= 3 and stats["member_inversions"] == 2 * stats["rounds"]
    assert stats["policy_max_prob"] != pytest.approx(1 / 3)  # REINFORCE moved the member logits
    assert stats["interpolated_tasks"] > 0
    support = torch.randn(5, 3, 32, 32)
    assert learner.adapt(support, torch.arange(5))(torch.randn(4, 3, 32, 32)).shape == (4, 5)
