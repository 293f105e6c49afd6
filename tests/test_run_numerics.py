"""``dfml-run numerics=portable``: a whole cell (zoo, meta-training, evaluation) computed the same
under other instruction sets, where ``native`` is not; run keys; refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import bench.app as app
from bench.errors import BenchError
from bench.records import read_records
from tests.test_zoo_numerics import OTHER_CPU, _fresh_cache, needs_mkl_avx2

BIN = Path(sys.executable).parent
#: A meta-trained method that reads the zoo, on a 2-member zoo: every part of a cell, small.
CELL = [
    "experiment=smoke",
    "hydra.mode=RUN",
    "method=purer_no_icfil",
    "zoo.n_members=2",
    "zoo.recipe.epochs=2",
    "zoo.recipe.milestones=[1]",
    "budget.meta_iterations=3",
    "method.selection.every=3",
    "method.selection.val_episodes=2",
    "task.n_episodes=3",
    "threads=1",
    "tracking=none",
]


def _run(
    root: Path, name: str, numerics: str, extra_env: dict[str, str], zoo_cache: Path
) -> subprocess.Popen:
    """dfml-run of CELL into ``root/name`` with its own empty zoo cache (the dataset cache shared)."""
    cache = _fresh_cache(root, f"{name}-cache", zoo_cache)
    env = {**os.environ, "TQDM_DISABLE": "1", "DFML_CACHE": str(cache), "DFML_RESULTS": str(root / name)}
    env.pop("MLFLOW_TRACKING_URI", None)
    for key in (*OTHER_CPU, "MKL_CBWR"):
        env.pop(key, None)
    env.update(extra_env)
    return subprocess.Popen(
        [str(BIN / "dfml-run"), *CELL, f"numerics={numerics}"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _outcome(results: Path) -> dict:
    """What a cell computed: its run key, zoo build, per-episode accuracies and meta-training log."""
    (record,) = read_records(results / "runs" / "smoke")
    (log,) = (results / "runs" / "smoke").glob("*/work/purer_log.json")
    return {
        "key": record.run_key,
        "zoo_weights": record.hashes["zoo_weights"],
        "episodes": record.per_episode,
        "numerics": record.config["numerics"],
        "aten": record.environment["aten_cpu_capability"],
        "log": json.loads(log.read_text()),
    }


@needs_mkl_avx2
def test_portable_cell_is_identical_under_other_instruction_sets_where_native_is_not(tmp_path, zoo_cache):
    outcomes = {}
    for numerics in ("portable", "native"):
        runs = {
            where: _run(
                tmp_path, f"{numerics}-{where}", numerics, OTHER_CPU if where == "other" else {}, zoo_cache
            )
            for where in ("here", "other")
        }
        for process in runs.values():
            _, err = process.communicate(timeout=600)
            assert process.returncode == 0, err[-3000:]
        outcomes[numerics] = {where: _outcome(tmp_path / f"{numerics}-{where}") for where in runs}
    portable, native = outcomes["portable"], outcomes["native"]
    assert portable["here"]["numerics"] == "portable" and native["here"]["numerics"] == "native"
    assert portable["here"]["key"] != native["here"]["key"]  # portable runs are other cells
    assert portable["here"]["aten"] == "AVX2"  # on AVX-512 CPUs too: see zoos/numerics.py
    assert native["here"]["aten"] == torch.backends.cpu.get_cpu_capability()
    assert portable["here"]["key"] == portable["other"]["key"]
    assert portable["here"]["zoo_weights"] == portable["other"]["zoo_weights"]
    assert portable["here"]["log"] == portable["other"]["log"]  # every loss of every iteration
    assert portable["here"]["episodes"] == portable["other"]["episodes"]
    # The emulation must change a native cell, or the equalities above prove nothing.
    assert native["here"]["zoo_weights"] != native["other"]["zoo_weights"]
    assert native["here"]["log"] != native["other"]["log"]


def test_native_run_keys_do_not_name_numerics_and_portable_ones_do():
    """Records made before numerics existed keep their keys: only ``portable`` enters the identity."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("bench.conf", version_base="1.3"):
        native = compose("config", ["experiment=smoke"])
        portable = compose("config", ["experiment=smoke", "numerics=portable"])
    assert native.numerics == "native"
    cpu = torch.device("cpu")
    assert "numerics" not in app.run_identity(native, cpu)
    assert app.run_identity(portable, cpu)["numerics"] == "portable"
    legacy = OmegaConf.create(OmegaConf.to_container(native))
    del legacy["numerics"]  # a config from before the key existed
    assert app.run_identity(legacy, cpu) == app.run_identity(native, cpu)


def test_run_numerics_refusals(monkeypatch):
    with pytest.raises(BenchError, match=r"unknown numerics 'fast'; valid: native, portable"):
        app.check_run_numerics("fast", torch.device("cpu"))
    with pytest.raises(BenchError, match=r"numerics=portable is for CPU runs; this run's device is cuda"):
        app.check_run_numerics("portable", torch.device("cuda"))
    if torch.backends.mkl.is_available():
        torch.randn(64, 64) @ torch.randn(64, 64)  # MKL has run in this process: too late to switch
        with pytest.raises(BenchError, match="after a numerics=native cell in the same process"):
            app.check_run_numerics("portable", torch.device("cpu"))
    monkeypatch.setattr(app, "portable_numerics_active", lambda missing_mkl=True: True)
    with pytest.raises(BenchError, match="numerics=native, but MKL runs its portable branch in this process"):
        app.check_run_numerics("native", torch.device("cpu"))
