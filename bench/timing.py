"""Throughput and peak-memory measurement (CUDA-synchronised when on GPU)."""

from __future__ import annotations

import platform
import resource
import sys

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work so that wall-clock timers measure it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


#: Set once :func:`reset_peak_memory` has reset this process's peak RSS (Linux ``clear_refs``).
_RSS_WINDOW = {"reset": False}


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak-memory window: CUDA's allocator peak, or on Linux the process's peak RSS.

    On Linux, writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM`` (kernel >= 4.0), so a
    multirun's later cell no longer reports an earlier cell's peak. Where that file cannot be
    written (another OS, a locked-down container) the CPU peak stays the process's lifetime peak,
    and :func:`peak_memory_gb` says so.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return
    _RSS_WINDOW["reset"] = _status_hwm_kib() is not None


def _status_hwm_kib() -> int | None:
    """``VmHWM`` (peak resident set since the last reset) from /proc/self/status, in KiB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_gb(device: torch.device | str) -> tuple[float, str]:
    """(peak memory in GiB, what was measured).

    What: ``cuda_max_allocated``; ``run_max_rss`` (CPU peak RSS since :func:`reset_peak_memory`); or
    ``process_max_rss`` (CPU peak RSS over the process's life, where no reset was possible).
    """
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_allocated"
    if _RSS_WINDOW["reset"]:
        hwm = _status_hwm_kib()
        if hwm is not None:
            return hwm / 2**20, "run_max_rss"
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return rss_kb * scale / 2**30, "process_max_rss"


def device_name(device: torch.device | str) -> str:
    """Human name of the device: the GPU model, or the CPU model / architecture."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_device(requested: str, tf32: bool = False) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is an error, not a fallback.

    On CUDA, float32 convolutions and matmuls stay IEEE float32 unless ``tf32`` is true: cuDNN's
    default rounds conv inputs to TF32 (10-bit mantissa), which moves results by ~1e-3 relative and
    would make an "fp32" run on a GPU a different computation from the same run on a CPU.
    """
    from bench.errors import BenchError

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device {requested!r} requested but CUDA is not available; use device=cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise BenchError(f"unknown device {requested!r}; valid: auto, cpu, cuda, cuda:N") from error
    if device.type == "cuda":
        set_cuda_fp32_precision(tf32)
    return device


def set_cuda_fp32_precision(tf32: bool) -> None:
    """Let float32 CUDA convolutions and matmuls use TF32 tensor cores (``tf32``), or keep IEEE fp32."""
    precision = "tf32" if tf32 else "ieee"
    # cuDNN as a whole and each of its parts alike (inductor reads cudnn.fp32_precision). torch then
    # refuses to read the legacy allow_tf32 flags: read cuda_fp32_precision() instead
    torch.backends.cudnn.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cudnn.rnn.fp32_precision = precision
    torch.backends.cuda.matmul.fp32_precision = precision


def cuda_fp32_precision() -> dict[str, str]:
    """The float32 precision CUDA convolutions and matmuls run at (for the record)."""
    return {
        "conv": str(torch.backends.cudnn.conv.fp32_precision),
        "matmul": str(torch.backends.cuda.matmul.fp32_precision),
    }
