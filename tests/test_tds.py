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
    learner = eager.meta_train(tiny_zoo, Budget(meta_iterations=12), torch.Generator())
    assert (
        patient.train_stats["rounds"] == 1 and patient.train_stats["member_inversions"] == 3
    )  # min(4, 3 members)
    assert patient.train_stats["policy_updates"] == 0  # one round: no level before it, no reward
    assert patient.train_stats["policy_max_prob"] == pytest.approx(1 / 3)
    assert patient.train_stats["inversion_seconds_per_member"] == pytest.approx(
        patient.train_stats["inversion_seconds"] / 3
    )
    assert patient.train_stats["inversion_seconds_per_member"] > 0
    stats = eager.train_stats
    assert stats["rounds"] >= 3 and stats["member_inversions"] == 2 * stats["rounds"]
    # round r's selection is rewarded when round r + 1 starts, with the level change since round r
    # started: never the first round (no level before it) nor the last (training ends first)
    assert stats["policy_updates"] == stats["rounds"] - 2
    assert stats["policy_max_prob"] != pytest.approx(1 / 3)  # REINFORCE moved the member logits
    assert stats["interpolated_tasks"] > 0
    support = torch.randn(5, 3, 32, 32)
    assert learner.adapt(support, torch.arange(5))(torch.randn(4, 3, 32, 32)).shape == (4, 5)


def test_real_val_variant_checks_on_fresh_real_meta_val_episodes_only(tiny_zoo, small_glyphs):
    from bench.app import attach_real_data
    from bench.data import forbid_real_data
    from bench.tasks import TaskShape

    cls = METHODS.get("tds_real_val")
    smoke = {"name": "tds_real_val", "generate_iterations": 2, "ngf": 4, "nz": 8, "n_query": 3}
    knobs = {"select_every": 10**6, "val_signal": "real", "check_every": 1, "patience": 2}
    method = cls(dataclasses.replace(cls.Config(), **smoke, **knobs), MethodContext(5, 1, 32, 3, CPU, 0))
    attach_real_data(method, small_glyphs, TaskShape(5, 1, 3))
    assert method.real_data is None and method.sample_real_val is not None
    drawn, sample = [], method.sample_real_val

    def counting(gen: torch.Generator) -> Episode:
        drawn.append(sample(gen))
        return drawn[-1]

    method.sample_real_val = counting
    with forbid_real_data("tds_real_val"):  # the sampler is its only way to real images
        method.meta_train(tiny_zoo, Budget(meta_iterations=6), torch.Generator())
    val_classes = set(small_glyphs.split_classes("val"))
    assert len(drawn) == 4 * 5 == method.train_stats["real_val_episodes"]  # val_checks x checks 2..6
    assert all(set(ep.classes.tolist()) <= val_classes for ep in drawn)
    assert len({tuple(ep.classes.tolist()) for ep in drawn}) > 1, "fresh episodes, not one fixed task"
    assert method.real_data_use() == "meta_val" and METHODS.get("tds").real_data_use() == "none"


def test_val_signal_must_match_the_registered_variant(tiny_zoo):
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="not data-free: run method=tds_real_val"):
        _tds(val_signal="real").meta_train(tiny_zoo, Budget(meta_iterations=1), torch.Generator())
    with pytest.raises(BenchError, match="'pseudo' or 'real'; got 'test'"):
        _tds(val_signal="test").meta_train(tiny_zoo, Budget(meta_iterations=1), torch.Generator())
    cls = METHODS.get("tds_real_val")
    variant = cls(dataclasses.replace(cls.Config(), name="tds_real_val"), MethodContext(5, 1, 32, 3, CPU, 0))
    with pytest.raises(BenchError, match="tds_real_val needs method.val_signal=real"):
        variant.meta_train(tiny_zoo, Budget(meta_iterations=1), torch.Generator())
    variant.cfg.val_signal = "real"
    with pytest.raises(BenchError, match="needs real meta-val episodes"):
        variant.meta_train(tiny_zoo, Budget(meta_iterations=1), torch.Generator())
