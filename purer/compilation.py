"""Optional ``torch.compile`` of PURER's inversion objective (``method.compile``).

The data step's inversion objective (13 small teacher forwards + BN moments + TV/l2 terms) is
overhead-bound on small batches; compiling it fuses the element-wise work around the convolutions.
The objective compiles as one graph: the roll offsets are drawn outside it (``draw_shifts``) and
applied as index gathers when compiling, and its term means stay tensors. (Until 2026-11-27 a
``float()`` in its loop made dynamo skip the frame, so only each teacher's ``inversion_loss`` was
compiled, and its roll offsets, as Python ints, hit the recompile limit of 8 and fell back to eager.)
Measured on the 2-core CPU (CIFAR-FS shape, 13 teachers x 80 images, fp32, one process, interleaved,
other jobs paused): objective forward + backward -8 % (1 thread) / -14 % (2 threads), the same
share as the per-teacher compile gave; the whole meta-iteration gains little (see the README). On
CPU that pays back only on long runs, so it is off by default; on CUDA, ``reduce-overhead`` adds
CUDA graphs, which need the single graph (not verified here: no GPU). Results agree with eager
within float tolerance, not bit for bit (tests/test_purer.py), which is why the mode is part of
the run's identity.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import TypeVar

import torch

from bench.errors import BenchError

MODES = ("off", "default", "reduce-overhead", "max-autotune")
F = TypeVar("F", bound=Callable)


def compiled(function: F, mode: str, device: torch.device) -> F:
    """``function`` itself for ``off``; else ``torch.compile(function, mode=mode, dynamic=False)``."""
    if mode not in MODES:
        raise BenchError(f"purer compile {mode!r} unknown; valid: {', '.join(MODES)}")
    if mode == "off":
        return function
    if device.type == "cpu" and shutil.which("g++") is None and shutil.which("c++") is None:
        raise BenchError(
            f"method.compile={mode} on CPU needs a C++ compiler (g++) for torch.compile; none found on "
            "PATH (install one or use method.compile=off)"
        )
    return torch.compile(function, mode=mode, dynamic=False)  # type: ignore[return-value]
