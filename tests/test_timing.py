"""CPU peak memory is measured per run window, not over the process's life."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bench.timing import peak_memory_gb, reset_peak_memory

CLEAR_REFS = "/proc/self/clear_refs"
pytestmark = pytest.mark.skipif(
    not os.access(CLEAR_REFS, os.W_OK), reason="needs Linux /proc/self/clear_refs to reset the peak RSS"
)


def _touch(gib: float) -> None:
    """Make ``gib`` GiB resident, then free it."""
    block = np.ones(int(gib * 2**30) // 8)
    assert block[-1] == 1.0
    del block


def test_a_reset_forgets_an_earlier_peak_and_sees_a_later_one() -> None:
    _touch(0.5)
    reset_peak_memory("cpu")
    after_reset, kind = peak_memory_gb("cpu")
    assert kind == "run_max_rss"
    _touch(0.5)
    later, _ = peak_memory_gb("cpu")
    # The window's peak must include the second block, and must not already have held the first.
    assert later >= after_reset + 0.4
