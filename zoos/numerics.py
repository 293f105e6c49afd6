"""Portable CPU numerics for zoo builds: member weights that do not depend on which x86-64 CPU trains them.

A member retrain is bit-identical on one CPU at one thread count, but its weights change with the
CPU: oneDNN (convolutions) and MKL (matrix products) choose kernels, and so summation orders, by
instruction set and cache sizes. Measured with torch 2.14.1 on the Intel Xeon host (glyphs_ss_conv4,
1 thread): uncapped, oneDNN capped at AVX2, or MKL capped at AVX2, AVX or its compatible path gave
five different builds, none equal to the build of the AMD EPYC host.

``portable`` numerics train with oneDNN and NNPACK off (ATen's im2col + GEMM convolutions; with
oneDNN off alone, NNPACK takes over convolutions with batches of 16 or more, and its tiling follows
the CPU's cache sizes) and MKL's conditional numerical reproducibility (CNR) at its ``COMPATIBLE``
branch, in strict mode: the same SSE2 code path on every x86-64 CPU, independent of memory
alignment. Measured on that host, the portable build stayed identical with ATen's kernels at AVX2 or
AVX-512 and oneDNN/MKL capped at AVX2 or not (``tests/test_zoo_numerics.py`` checks this on a small
zoo), where native builds changed.
That emulates other CPUs on one; no second CPU has built a portable zoo yet.

**Portable numerics compute on ATen's AVX2 kernel set, on AVX-512 CPUs too.** ATen's softmax /
log-softmax (and the cross-entropy gradient) round differently under its AVX2 and AVX-512 kernels at
most row widths: measured on the Intel host (``ATEN_CPU_CAPABILITY=avx2`` vs ``avx512``), widths 5
and 16 agree and 8, 10, 20, 25, 32 and 64 differ. So a cell with a softmax over another width (ICFIL's
contrastive loss over 25 pseudo images, TGR's probe over the zoo's classes, a 10-way task) would agree
only between hosts of one kernel set. :func:`enable_portable_numerics` therefore sets
``ATEN_CPU_CAPABILITY=avx2`` (ATen reads it at its first kernel) and refuses where ATen already runs
another set. Builds and cells with width-5 softmaxes only (the shipped zoos' 5-class heads, 5-way
tasks) came out identical under either set, so portable records made before this pin (2026-12-08,
on AVX-512 kernels; ``aten_cpu_capability``) stand for those. ATen's non-vectorised fallback
(``ATEN_CPU_CAPABILITY=default``, CPUs without AVX2) gave another build, so portable numerics refuse
to run there. The weights still depend on the thread count and the
torch version (both recorded in member.json).

MKL fixes its CNR branch at its first call in a process, so :func:`enable_portable_numerics` must run
before any matrix product (``dfml-zoo build --numerics portable`` calls it first thing).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import torch

from bench.errors import BenchError

#: The numerics a member can be trained with (``dfml-zoo build --numerics``).
NUMERICS = ("native", "portable")

#: The ATen kernel set portable numerics compute on (AVX-512 rounds some softmax widths otherwise).
PORTABLE_CAPABILITY = "AVX2"

_CBWR_ALL = -1  # mkl_cbwr_get(MKL_CBWR_ALL): the branch in effect with the strict bit
_CBWR_COMPATIBLE = 3  # MKL_CBWR_COMPATIBLE: SSE2 without rcpps/rsqrtps, on any x86-64 CPU
_CBWR_STRICT = 0x10000  # MKL_CBWR_STRICT: also independent of memory alignment
_CBWR_SUCCESS = 0
_CBWR_ERRORS = {
    -1: "invalid input",
    -2: "unsupported branch",
    -8: "MKL was already used in this process with another branch",
}


@lru_cache(maxsize=1)
def _mkl_cbwr() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]:
    """(get, set): MKL's CNR functions as exported by torch's CPU library (BenchError without MKL)."""
    library = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        lib = ctypes.CDLL(library)
        get, set_ = lib.mkl_serv_cbwr_get, lib.mkl_serv_cbwr_set
    except (OSError, AttributeError) as error:
        raise BenchError(
            f"portable numerics need a torch built with Intel MKL (the x86-64 wheels); this torch "
            f"{torch.__version__} has no MKL CNR functions in {library} ({error}); use native numerics "
            "(--numerics native, numerics=native in dfml-run)"
        ) from None
    for function in (get, set_):
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.c_int]
    return get, set_


def mkl_branch() -> int:
    """MKL's CNR setting in effect: its branch (1 = off, 3 = COMPATIBLE) | 0x10000 in strict mode."""
    get, _ = _mkl_cbwr()
    return int(get(_CBWR_ALL))


def portable_numerics_active(missing_mkl: bool = True) -> bool:
    """Whether MKL runs its strict COMPATIBLE branch in this process.

    Without MKL: a BenchError, or False when ``missing_mkl`` is False (a native run's check).
    """
    try:
        return mkl_branch() == _CBWR_COMPATIBLE | _CBWR_STRICT
    except BenchError:
        if missing_mkl:
            raise
        return False


def enable_portable_numerics() -> None:
    """Put ATen on its AVX2 kernels and MKL on its strict COMPATIBLE branch, for this process.

    BenchError where that cannot be done: ATen already chose another kernel set (it had run a kernel,
    or ``ATEN_CPU_CAPABILITY`` names another), the CPU lacks AVX2, or MKL already ran.
    """
    _pin_aten_kernels()
    if portable_numerics_active():
        return
    _, set_ = _mkl_cbwr()
    status = int(set_(_CBWR_COMPATIBLE | _CBWR_STRICT))
    if status != _CBWR_SUCCESS or not portable_numerics_active():
        reason = _CBWR_ERRORS.get(status, f"status {status}")
        raise BenchError(
            f"cannot switch MKL to its COMPATIBLE branch ({reason}; setting in effect: {mkl_branch():#x}): "
            "portable numerics must be chosen before the process's first matrix product; build the "
            "zoo in a fresh process with `dfml-zoo build <zoo> --numerics portable`"
        )


def _pin_aten_kernels() -> None:
    """Ask ATen for its AVX2 kernels before its first dispatch; refuse if it runs another set."""
    wanted = PORTABLE_CAPABILITY.lower()
    asked = os.environ.setdefault("ATEN_CPU_CAPABILITY", wanted)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == PORTABLE_CAPABILITY:
        return
    if asked.lower() != wanted:
        why = f"ATEN_CPU_CAPABILITY={asked} is set in the environment; unset it or set it to {wanted}"
    elif capability == "DEFAULT":
        why = "this CPU has no AVX2 (ATen runs its non-vectorised fallback); use native numerics"
    else:
        why = (
            "ATen chose its kernels at its first operation, before portable numerics were asked for; "
            f"choose them first thing in a fresh process, or run it as ATEN_CPU_CAPABILITY={wanted} ..."
        )
    raise BenchError(
        f"portable numerics compute on ATen's {PORTABLE_CAPABILITY} kernels (its AVX-512 softmax rounds "
        f"differently); this process runs {capability!r}: {why}"
    )


@contextmanager
def member_numerics(numerics: str, device: torch.device) -> Iterator[None]:
    """Train a member, or run a whole ``dfml-run`` cell, under ``numerics`` (one of :data:`NUMERICS`).

    Portable needs the CPU, ATen's AVX2 kernels and MKL's strict COMPATIBLE branch already in
    effect (:func:`enable_portable_numerics`); it turns oneDNN and NNPACK off inside the block, so
    every convolution is ATen's im2col + MKL GEMM.
    """
    check_numerics(numerics)
    if numerics == "native":
        yield
        return
    if device.type != "cpu":
        raise BenchError(
            f"portable numerics are for CPU builds; this build runs on {device} (use --device cpu, "
            "or --numerics native: GPU builds differ between GPUs)"
        )
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != PORTABLE_CAPABILITY:
        raise BenchError(
            f"portable numerics compute on ATen's {PORTABLE_CAPABILITY} kernels; this process runs "
            f"{capability!r}: call enable_portable_numerics() first thing in the process (dfml-zoo build "
            "--numerics portable and dfml-run numerics=portable do), or use native numerics"
        )
    if not portable_numerics_active():
        raise BenchError(
            "portable numerics: MKL is not on its strict COMPATIBLE branch in this process; call "
            "enable_portable_numerics() before any matrix product (dfml-zoo build --numerics portable does)"
        )
    mkldnn, nnpack = torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = mkldnn
        torch.backends.nnpack.set_flags(nnpack)


def configured_numerics(config: Mapping[str, Any] | None) -> str:
    """The numerics a dfml-run config (or a record's config) names; configs older than the key: native."""
    return str((config or {}).get("numerics") or "native")


def check_numerics(numerics: str) -> None:
    """BenchError naming the valid choices unless ``numerics`` is one of :data:`NUMERICS`."""
    if numerics not in NUMERICS:
        raise BenchError(f"unknown numerics {numerics!r}; valid: {', '.join(NUMERICS)}")
