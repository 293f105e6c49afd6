"""bench.threads: thread counts are checked by name, and a null count means torch's default."""

from __future__ import annotations

import pytest
import torch

import bench.threads as threads
from bench.errors import BenchError


def test_a_null_count_restores_the_default_instead_of_keeping_the_previous_cells(monkeypatch):
    monkeypatch.setattr(threads, "DEFAULT_THREADS", 2)
    try:
        threads.set_threads(1)  # a multirun's first cell: threads=1
        assert torch.get_num_threads() == 1
        threads.set_threads(None)  # the next cell: threads: null
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # the suite's own setting (conftest)


@pytest.mark.parametrize("value", ["abc", "2.0", 1.7, True, -1])
def test_counts_that_are_not_whole_positive_numbers_are_refused_by_name(value):
    with pytest.raises(BenchError, match=r"--threads must be (an integer )?>= 1"):
        threads.check_threads(value, "--threads")
