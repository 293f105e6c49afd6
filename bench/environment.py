"""Facts about the code and machine a run used: git sha, code checksum, versions, device."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
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


#: The packages whose sources define what a run computes: the harness and its plug-in folders.
CODE_PACKAGES = ("bench", "baselines", "purer", "zoos")
CODE_SUFFIXES = (".py", ".yaml")


def code_sha256(packages: tuple[str, ...] = CODE_PACKAGES) -> str:
    """Hex sha256 of the ``.py`` and ``.yaml`` sources of ``packages``, as found on the import path.

    Unlike the git sha, it names the code exactly when the tree has uncommitted changes or when
    the checkout's git metadata is not the code's (a copy of the tree on another machine). Each
    file enters as ``package/relative/path``, its length and its bytes, in sorted order; a package
    that is not installed enters as its name alone. Read once per process, like :func:`git_state`.
    """
    return _code_sha256_once(packages)


@functools.cache
def _code_sha256_once(packages: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for package in packages:
        spec = importlib.util.find_spec(package)
        roots = list(spec.submodule_search_locations or []) if spec else []
        digest.update(f"package {package} {len(roots)}\n".encode())
        for root in map(Path, roots):
            files = sorted(
                p
                for p in root.rglob("*")
                if p.suffix in CODE_SUFFIXES and p.is_file() and "__pycache__" not in p.parts
            )
            for path in files:
                data = path.read_bytes()
                digest.update(f"{package}/{path.relative_to(root).as_posix()} {len(data)}\n".encode())
                digest.update(data)
    return digest.hexdigest()


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
        # ATen's CPU kernel set (AVX2 / AVX512 / DEFAULT): softmax rounds differently between them at
        # most row widths, portable numerics included (zoos/numerics.py)
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "code_version": CODE_VERSION,
    }
    if device.type == "cuda":
        facts["cuda_fp32_precision"] = cuda_fp32_precision()
    return facts
