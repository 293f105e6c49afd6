"""pytest-benchmark micro-benchmarks (run once as smoke tests in CI; measure with --benchmark-enable).

    pytest tests/benchmarks --benchmark-enable -n0 --benchmark-json=results/throughput/bench-<device>.json

Speed is measured here, never asserted.
"""

from __future__ import annotations

import pytest
import torch

from bench.learners.maml import FineTuneLearner, meta_step
from bench.seeding import make_generator
from bench.tasks import Episode, TaskShape, TaskSuite
from purer.config import IcfilConfig
from purer.icfil import IcfilLearner
from zoos.architectures import build_model

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _pseudo_task(shape: TaskShape, device: str, gen: torch.Generator) -> Episode:
    """A CIFAR-FS-shaped task of random normalised images (3x32x32), like PURER's pixel tasks."""
    n_s, n_q = shape.n_way * shape.k_shot, shape.n_way * shape.n_query
    return Episode(
        torch.randn(n_s, 3, 32, 32, generator=gen).to(device),
        torch.arange(shape.n_way).repeat_interleave(shape.k_shot).to(device),
        torch.randn(n_q, 3, 32, 32, generator=gen).to(device),
        torch.arange(shape.n_way).repeat_interleave(shape.n_query).to(device),
        torch.arange(shape.n_way),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k_shot", [1, 5])
def test_maml_meta_step(benchmark, device, k_shot):
    """One second-order MAML meta-step: meta-batch 4, 1 inner step, conv4-32, 5-way, 15 queries."""
    gen = make_generator(0)
    model = build_model("conv4", 5, 32, 3, gen, width=32, batch_stat_bn=True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tasks = [_pseudo_task(TaskShape(5, k_shot, 15), device, gen) for _ in range(4)]
    benchmark.extra_info.update({"meta_batch": 4, "inner_steps": 1, "image_size": 32, "device": device})
    loss, _ = benchmark(meta_step, model, optimizer, tasks, 1, 0.01, True)
    assert torch.isfinite(torch.tensor(loss))


@pytest.mark.parametrize("device", DEVICES)
def test_evaluation_episode(benchmark, device, small_glyphs):
    """One test episode: fetch + normalise, 10 first-order fine-tune steps, score after 1 and 10."""
    gen = make_generator(0)
    model = build_model("conv4", 5, 32, 3, gen, width=32, batch_stat_bn=True).to(device)
    learner = FineTuneLearner(model, inner_lr=0.01)
    suite = TaskSuite(small_glyphs, "test", TaskShape(5, 5, 15), 1, seed=0)

    def one_episode() -> int:
        episode = suite.episode(0, device)
        readouts = learner.adapt_readouts(episode.support_x, episode.support_y, [1, 10])
        return int((readouts[10](episode.query_x).argmax(1) == episode.query_y).sum())

    benchmark.extra_info.update({"steps": 10, "shape": "5w5s15q", "device": device})
    assert 0 <= benchmark(one_episode) <= 75


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k_shot", [1, 5])
def test_icfil_episode(benchmark, device, k_shot, small_glyphs):
    """One PURER test episode with ICFIL at both readouts (1 and 10 steps), as ``purer`` evaluates.

    Per readout: 50 Adam steps inverting 25 pseudo images from the adapted model, 5 contrastive
    calibration steps, 20 head steps, then the 75 queries. The 600-episode evaluation of a purer
    cell costs about 600 times this.
    """
    gen = make_generator(0)
    model = build_model("conv4", 5, 32, 3, gen, width=32, batch_stat_bn=True).to(device)
    learner = IcfilLearner(FineTuneLearner(model, inner_lr=0.01), IcfilConfig(), seed=0)
    suite = TaskSuite(small_glyphs, "test", TaskShape(5, k_shot, 15), 1, seed=0)
    episode = suite.episode(0, device)

    def one_episode() -> int:
        readouts = learner.adapt_readouts(episode.support_x, episode.support_y, [1, 10])
        return int((readouts[10](episode.query_x).argmax(1) == episode.query_y).sum())

    benchmark.extra_info.update({"steps": [1, 10], "shape": f"5w{k_shot}s15q", "device": device})
    assert 0 <= benchmark(one_episode) <= 75


def test_episode_sampling(benchmark, small_glyphs):
    """Building one 600-episode suite's worth of index draws for 5w1s."""
    suite = benchmark(TaskSuite, small_glyphs, "test", TaskShape(5, 1, 15), 600, 0)
    assert len(suite) == 600
