"""Facts about the code and machine a run used: git sha, versions, device."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from bench.hashing import CODE_VERSION
from bench.timing import cuda_fp32_precision, device_name

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def git_state() -> dict[str, Any]:
    """``{"git_sha": ..., "git_dirty": ...}`` of the checkout the code runs from, or unknown.

    Read once per process (``dfml-run`` asks when a run starts, when its code has been imported):
    a record names the code that ran, even if the checkout moves on while a long run is going.
    """
    return dict(_git_state_once())


@functools.cache
def _git_state_once() -> dict[str, Any]:
    """The first reading of :func:`git_state` in this process."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            # results/ holds committed records and tables that runs write: not code
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return {"git_sha": sha, "git_dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": "unknown", "git_dirty": None}


def environment(device: torch.device) -> dict[str, Any]:
    """Device, versions and platform for the record."""
    facts = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "code_version": CODE_VERSION,
    }
    if device.type == "cuda":
        facts["cuda_fp32_precision"] = cuda_fp32_precision()
    return facts
