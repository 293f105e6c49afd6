from __future__ import annotations

import math

import pytest
import torch

from bench.errors import BenchError
from bench.evaluate import evaluate, paired_difference, summarize
from bench.method import Learner
from bench.tasks import TaskShape, TaskSuite


def test_ci95_uses_population_std():
    values = [40.0, 60.0, 50.0, 70.0]
    summary = summarize(values)
    std = math.sqrt(sum((v - 55.0) ** 2 for v in values) / 4)  # ddof=0
    assert summary["mean"] == pytest.approx(55.0)
    assert summary["std"] == pytest.approx(std)
    assert summary["ci95"] == pytest.approx(1.96 * std / 2.0)
    assert summary["n"] == 4


def test_paired_difference_is_tighter_than_unpaired_for_correlated_results():
    base = [20.0, 80.0, 40.0, 60.0, 30.0, 70.0]
    better = [b + 5.0 + (1.0 if i % 2 else -1.0) for i, b in enumerate(base)]
    paired = paired_difference(better, base)
    assert paired["mean"] == pytest.approx(5.0)
    assert paired["ci95"] < summarize(base)["ci95"]
    with pytest.raises(BenchError, match="equal episode counts"):
        paired_difference([1.0], [1.0, 2.0])


class _Oracle(Learner):
    """Classifies perfectly by reading the label order (support is class-blocked)."""

    def adapt(self, support_x, support_y):
        return lambda query_x: torch.eye(5)[torch.arange(5).repeat_interleave(query_x.shape[0] // 5)]


class _Constant(Learner):
    def adapt(self, support_x, support_y):
        return lambda query_x: torch.zeros(query_x.shape[0], 5).index_fill_(1, torch.tensor([0]), 1.0)


def test_evaluate_counts_accuracy_per_episode(small_glyphs):
    suite = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 6, seed=0)
    perfect = evaluate(_Oracle(), suite, [1, 10])
    assert perfect.per_episode[1] == [100.0] * 6 and perfect.per_episode[10] == [100.0] * 6
    constant = evaluate(_Constant(), suite, [10], limit=4)
    assert constant.per_episode[10] == [20.0] * 4
    assert constant.n_episodes == 4 and constant.episodes_per_s > 0


def test_evaluate_rejects_bad_readouts(small_glyphs):
    suite = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 2, seed=0)
    with pytest.raises(BenchError, match="test_steps"):
        evaluate(_Constant(), suite, [])


def test_progress_of_another_trained_model_is_not_resumed(small_glyphs, tmp_path, caplog):
    from bench.hashing import object_fingerprint
    from bench.learners.maml import FineTuneLearner
    from bench.seeding import make_generator
    from zoos.architectures import build_model

    def learner(seed: int) -> FineTuneLearner:
        model = build_model("conv4", 5, small_glyphs.image_size, 3, make_generator(seed), batch_stat_bn=True)
        return FineTuneLearner(model, 0.01, 1)

    suite = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 6, seed=0)
    progress = tmp_path / "eval_progress.json"
    first = learner(0)
    assert object_fingerprint(first) == object_fingerprint(learner(0)) != object_fingerprint(learner(1))
    # same weights, another inner learning rate or step count: other numbers, another fingerprint
    assert object_fingerprint(FineTuneLearner(first.model, 0.02, 1)) != object_fingerprint(first)
    assert object_fingerprint(FineTuneLearner(first.model, 0.01, 2)) != object_fingerprint(first)
    done = evaluate(
        first, suite, [1], limit=4, progress=progress, save_every=2, fingerprint=object_fingerprint(first)
    )
    # the same model continues after the saved episodes; another model starts over
    same = evaluate(first, suite, [1], progress=progress, save_every=2, fingerprint=object_fingerprint(first))
    assert same.per_episode[1][:4] == done.per_episode[1] and "ignoring" not in caplog.text
    other = learner(1)
    straight = evaluate(other, suite, [1])
    progress.unlink()
    evaluate(
        first, suite, [1], limit=4, progress=progress, save_every=2, fingerprint=object_fingerprint(first)
    )
    resumed = evaluate(
        other, suite, [1], progress=progress, save_every=2, fingerprint=object_fingerprint(other)
    )
    assert "written for another trained model" in caplog.text
    assert resumed.per_episode[1] == straight.per_episode[1]


def test_a_protonet_learner_fingerprint_sees_the_embedding_weights():
    """ProtoNetLearner holds ``model.embed`` (a bound method): the fingerprint walks the model."""
    from bench.hashing import object_fingerprint
    from bench.learners.protonet import ProtoNetLearner
    from bench.seeding import make_generator
    from zoos.architectures import build_model

    def learner(seed: int) -> ProtoNetLearner:
        return ProtoNetLearner(build_model("conv4", 5, 32, 3, make_generator(seed), batch_stat_bn=True).embed)

    assert object_fingerprint(learner(0)) == object_fingerprint(learner(0)) != object_fingerprint(learner(1))
