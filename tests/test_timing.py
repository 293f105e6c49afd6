"""CPU peak memory is measured per run window, not over the process's life."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bench.timing import peak_memory_gb, reset_peak_memory

CLEAR_REFS = "/proc/self/clear_refs"
needs_clear_refs = pytest.mark.skipif(
    not os.access(CLEAR_REFS, os.W_OK), reason="needs Linux /proc/self/clear_refs to reset the peak RSS"
)


def _touch(gib: float) -> None:
    """Make ``gib`` GiB resident, then free it."""
    block = np.ones(int(gib * 2**30) // 8)
    assert block[-1] == 1.0
    del block


@needs_clear_refs
def test_a_reset_forgets_an_earlier_peak_and_sees_a_later_one() -> None:
    _touch(0.5)
    reset_peak_memory("cpu")
    after_reset, kind = peak_memory_gb("cpu")
    assert kind == "run_max_rss"
    _touch(0.5)
    later, _ = peak_memory_gb("cpu")
    # The window's peak must include the second block, and must not already have held the first.
    assert later >= after_reset + 0.4


def test_the_cuda_fp32_precision_switch_is_read_back_without_a_gpu() -> None:
    """The CPU half of test_cuda's TF32 check: setting and reading the flags needs no CUDA device."""
    import torch

    from bench.timing import cuda_fp32_precision, set_cuda_fp32_precision

    flags = [
        torch.backends.cudnn,
        torch.backends.cudnn.conv,
        torch.backends.cudnn.rnn,
        torch.backends.cuda.matmul,
    ]
    before = [flag.fp32_precision for flag in flags]
    try:
        set_cuda_fp32_precision(True)
        assert cuda_fp32_precision() == {"conv": "tf32", "matmul": "tf32"}
        set_cuda_fp32_precision(False)
        assert cuda_fp32_precision() == {"conv": "ieee", "matmul": "ieee"}
    finally:  # this process's other tests see the flags as they were
        for flag, value in zip(flags, before, strict=True):
            flag.fp32_precision = value
