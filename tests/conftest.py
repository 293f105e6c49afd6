"""Shared fixtures: a session cache dir, a small glyphs dataset and a tiny conv4 zoo (all CPU)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Hermetic: every test session gets its own cache unless DFML_TEST_CACHE points at a reusable one.
_CACHE = os.environ.get("DFML_TEST_CACHE") or tempfile.mkdtemp(prefix="dfml-test-cache-")
os.environ["DFML_CACHE"] = _CACHE
os.environ.setdefault("TQDM_DISABLE", "1")
# Subprocesses the tests start (dfml-run, dfml-zoo) inherit this: one OpenMP thread each, as in
# this process. Tests run one xdist worker per core; a 2-thread child beside another busy worker
# oversubscribes the cores and OpenMP's spin-waits then cost more than the second thread gains
# (measured: a 2-worker suite took 21m56s with 2-thread children, longer than 1 worker).
os.environ.setdefault("OMP_NUM_THREADS", "1")

SMALL_GLYPHS = {"name": "glyphs", "max_classes": 260, "image_size": 32}
TINY_ZOO = {
    "name": "tiny_conv4",
    "arch": "conv4",
    "arch_options": {"width": 32},
    "protocol": "disjoint",
    "classes_per_member": 5,
    "n_members": 3,
    "seed": 0,
    "recipe": {"epochs": 15, "milestones": [10]},
}


# One intra-op thread: results independent of core count, and no OpenMP spin-wait collapse when
# another process shares the two cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cache_root() -> Path:
    return Path(_CACHE)


@pytest.fixture
def zoo_cache(tmp_path) -> Path:
    """A fresh, empty zoo cache that shares the session's dataset cache (no glyph regeneration)."""
    fresh = tmp_path / "cache"
    fresh.mkdir()
    shared = Path(_CACHE) / "datasets"
    shared.mkdir(parents=True, exist_ok=True)
    (fresh / "datasets").symlink_to(shared, target_is_directory=True)
    return fresh


@pytest.fixture(scope="session")
def small_glyphs():
    from bench.data import load_dataset

    return load_dataset(SMALL_GLYPHS)


@pytest.fixture(scope="session")
def tiny_zoo(small_glyphs):
    from zoos.zoo import load_or_build_zoo

    return load_or_build_zoo(TINY_ZOO, small_glyphs, "cpu")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "data"
