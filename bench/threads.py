"""torch intra-op thread counts: one check for every entry point, and a scoped setting.

A zoo member's weights (and a run's float summation order) depend on the thread count, so every
place that sets it validates it the same way (results/README.md, "Zoo builds").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from bench.errors import BenchError


def check_threads(threads: int | str, name: str, nullable: bool = True) -> int:
    """``threads`` as an int >= 1; a BenchError naming ``name`` otherwise (``abc``, ``1.7``, ``0``)."""
    valid = f"an integer >= 1{' or null' if nullable else ''}"
    text = str(threads).strip()
    if isinstance(threads, bool) or not (isinstance(threads, int) or (text.isascii() and text.isdecimal())):
        raise BenchError(f"{name} must be {valid}; got {threads!r}")
    if int(threads) < 1:
        raise BenchError(f"{name} must be >= 1{' or null' if nullable else ''}; got {threads}")
    return int(threads)


#: torch's intra-op thread count when this module was first imported (its default for the process).
DEFAULT_THREADS = torch.get_num_threads()


def set_threads(threads: int | str | None, name: str = "threads") -> None:
    """Set torch's intra-op thread count for the process (None: torch's default).

    None restores the default rather than leaving the count alone: in a multirun (several cells in
    one process) a ``threads: null`` cell would otherwise run at the previous cell's count.
    """
    torch.set_num_threads(DEFAULT_THREADS if threads is None else check_threads(threads, name))


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block at ``threads`` intra-op threads (None: unchanged), then restore the count."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(check_threads(threads, "threads", nullable=False))
    try:
        yield
    finally:
        torch.set_num_threads(before)
