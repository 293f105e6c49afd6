"""Benchmarks measure with torch's default thread count (the suite itself runs single-threaded).

Under pytest-xdist (the default ``pytest`` run) benchmarks do not time and only run once as smoke
tests beside other workers; they keep the suite's single thread there, since a second thread on
a core another worker uses only adds OpenMP spin-waits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from bench.threads import intra_op_threads
from bench.timing import set_cuda_fp32_precision


@pytest.fixture(autouse=True)
def _ieee_fp32_on_cuda() -> None:
    """CUDA float32 is IEEE float32, as ``dfml-run`` runs it (a benchmark may opt into TF32)."""
    if torch.cuda.is_available():
        set_cuda_fp32_precision(False)


@pytest.fixture(autouse=True)
def _all_cores() -> Iterator[None]:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    with intra_op_threads(os.cpu_count() or 1):
        yield
