from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bench.errors import BenchError
from bench.tasks import TaskShape, TaskSuite


def test_suite_is_deterministic_and_hashed(small_glyphs):
    a = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 50, seed=0)
    b = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 50, seed=0)
    c = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 50, seed=1)
    assert torch.equal(a.support_rows, b.support_rows) and torch.equal(a.query_rows, b.query_rows)
    assert a.content_hash == b.content_hash
    assert a.content_hash != c.content_hash


def test_episode_is_independent_of_suite_length(small_glyphs):
    short = TaskSuite(small_glyphs, "test", TaskShape(5, 5, 15), 10, seed=3)
    long = TaskSuite(small_glyphs, "test", TaskShape(5, 5, 15), 40, seed=3)
    assert torch.equal(short.support_rows, long.support_rows[:10])
    assert torch.equal(short.query_rows, long.query_rows[:10])
    for i in range(10):
        assert torch.equal(short.episode(i).classes, long.episode(i).classes)


def test_episode_shapes_labels_and_disjointness(small_glyphs):
    suite = TaskSuite(small_glyphs, "test", TaskShape(5, 5, 15), 20, seed=0)
    test_classes = set(small_glyphs.split_classes("test"))
    for i in range(len(suite)):
        episode = suite.episode(i)
        assert episode.support_x.shape == (25, 3, 32, 32)
        assert episode.query_x.shape == (75, 3, 32, 32)
        assert episode.support_y.tolist() == [j for j in range(5) for _ in range(5)]
        assert set(episode.classes.tolist()) <= test_classes
        assert len(set(episode.classes.tolist())) == 5
        support = set(suite.support_rows[i].flatten().tolist())
        query = set(suite.query_rows[i].flatten().tolist())
        assert not support & query
        labels = small_glyphs.labels[suite.support_rows[i]]
        assert torch.equal(labels, suite.classes[i].unsqueeze(1).expand(5, 5))


def test_hash_is_stable_across_processes(small_glyphs):
    here = TaskSuite(small_glyphs, "val", TaskShape(5, 1, 15), 30, seed=0).content_hash
    code = (
        "from bench.data import load_dataset; from bench.tasks import TaskSuite, TaskShape;"
        "ds = load_dataset({'name': 'glyphs', 'max_classes': 260, 'image_size': 32});"
        "print(TaskSuite(ds, 'val', TaskShape(5, 1, 15), 30, seed=0).content_hash)"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert there.stdout.strip() == here


@pytest.mark.parametrize(
    ("shape", "episodes", "pattern"),
    [
        (TaskShape(500, 1, 15), 10, r"n_way=500 is larger than the \d+ classes"),
        (TaskShape(5, 10, 15), 10, r"k_shot \+ n_query = 10 \+ 15 = 25 exceeds the 20 images"),
        (TaskShape(5, 0, 15), 10, r"must all be >= 1.*k_shot=0"),
        (TaskShape(5, 1, 15), 0, r"n_episodes=0"),
    ],
)
def test_impossible_shapes_name_the_numbers(small_glyphs, shape, episodes, pattern):
    with pytest.raises(BenchError, match=pattern):
        TaskSuite(small_glyphs, "test", shape, episodes, seed=0)
