"""Portable zoo numerics (zoos/numerics.py): the same weights under other instruction sets, refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.errors import BenchError
from zoos.numerics import check_numerics, member_numerics, portable_numerics_active

BIN = Path(sys.executable).parent
#: conv4 + resnet10 members of the SH zoo, one epoch: every kind of layer a zoo member has.
SH_SMALL = [
    "dataset.max_classes=260",
    "zoo.n_members=2",
    "zoo.recipe.epochs=1",
    "zoo.recipe.milestones=[2]",
]
#: Another CPU, emulated: ATen's AVX2 kernels, oneDNN and MKL capped below AVX (valid on any x86-64).
OTHER_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}

needs_mkl_avx2 = pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512")
    or not torch.backends.mkl.is_available(),
    reason="portable numerics need torch's MKL and a CPU with AVX2",
)


def _fresh_cache(root: Path, name: str, zoo_cache: Path) -> Path:
    """An empty zoo cache sharing the session's dataset cache (as conftest's ``zoo_cache``)."""
    cache = root / name
    cache.mkdir()
    (cache / "datasets").symlink_to((zoo_cache / "datasets").resolve(), target_is_directory=True)
    return cache


def _build(cache: Path, cwd: Path, numerics: str, extra_env: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1", "DFML_CACHE": str(cache), **extra_env}
    for name in OTHER_CPU:
        if name not in extra_env:
            env.pop(name, None)
    command = [str(BIN / "dfml-zoo"), "build", "glyphs_sh", "--threads", "1", "--numerics", numerics]
    return subprocess.Popen(
        [*command, *SH_SMALL], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _members(cache: Path) -> dict[str, dict]:
    """member key -> member.json of every member in ``cache``."""
    return {
        path.parent.name: json.loads(path.read_text())
        for path in (cache / "zoo_members").glob("*/member.json")
    }


@needs_mkl_avx2
def test_portable_build_is_bit_identical_under_other_instruction_sets_where_native_is_not(
    tmp_path, zoo_cache, small_glyphs
):
    builds = {}
    for numerics in ("portable", "native"):
        caches = {
            where: _fresh_cache(tmp_path, f"{numerics}-{where}", zoo_cache) for where in ("here", "other")
        }
        processes = {
            where: _build(cache, tmp_path, numerics, OTHER_CPU if where == "other" else {})
            for where, cache in caches.items()
        }
        for process in processes.values():
            _, err = process.communicate(timeout=600)
            assert process.returncode == 0, err[-2000:]
        builds[numerics] = {where: _members(cache) for where, cache in caches.items()}
    portable, native = builds["portable"], builds["native"]
    assert len(portable["here"]) == 2 and portable["here"].keys() == native["here"].keys()
    here = tmp_path / "portable-here"
    archs = {
        json.loads((here / "zoo_members" / key / "spec.json").read_text())["arch"] for key in portable["here"]
    }
    assert archs == {"conv4", "resnet10"}
    (card,) = (here / "zoos").glob("*/card.md")
    assert "numerics: portable 2" in card.read_text() and "portable numerics)" in card.read_text()
    for key, info in portable["here"].items():
        assert info["train_numerics"] == "portable" and portable["other"][key]["train_numerics"] == "portable"
        assert info["weights_sha256"] == portable["other"][key]["weights_sha256"], key
        assert info["weights_sha256"] != native["here"][key]["weights_sha256"], "portable = native weights"
    # The emulation must change something, or the equality above proves nothing.
    differ = [
        k
        for k, info in native["here"].items()
        if info["weights_sha256"] != native["other"][k]["weights_sha256"]
    ]
    assert differ, "capping the instruction sets changed no native member: the emulation is inert"
    assert all(info["train_numerics"] == "native" for info in native["here"].values())


PROBE = """
import sys, torch
from bench.errors import BenchError
from zoos.numerics import enable_portable_numerics, portable_numerics_active
if sys.argv[1] == "after":
    torch.randn(64, 64) @ torch.randn(64, 64)
try:
    enable_portable_numerics()
except BenchError as error:
    print("refused:", error)
print("active:", portable_numerics_active(), torch.backends.cpu.get_cpu_capability())
if sys.argv[1] == "before":
    from zoos.numerics import member_numerics
    outside = (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled())
    with member_numerics("portable", torch.device("cpu")):
        print("inside:", torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled())
    print("restored:", (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()) == outside)
"""


@needs_mkl_avx2
@pytest.mark.parametrize("when", ["before", "after", "after, ATen pinned"])
def test_portable_numerics_are_set_before_the_first_matrix_product_or_refused(when):
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY")}
    if when == "after, ATen pinned":
        env["ATEN_CPU_CAPABILITY"] = "avx2"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, when.split(",")[0]],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    ).stdout
    if when == "before":  # ATen's AVX2 kernels even on an AVX-512 CPU
        assert out.split() == ["active:", "True", "AVX2", "inside:", "False", "False", "restored:", "True"]
    elif when == "after":  # the first product chose ATen's kernels (AVX-512 here) and used MKL
        native = torch.backends.cpu.get_cpu_capability()
        if native == "AVX2":
            assert "refused: cannot switch MKL to its COMPATIBLE branch" in out
        else:
            assert f"this process runs '{native}'" in out and "ATEN_CPU_CAPABILITY=avx2" in out
        assert "active: False" in out
    else:
        assert "refused: cannot switch MKL to its COMPATIBLE branch" in out
        assert "first matrix product" in out and "active: False AVX2" in out


def test_portable_numerics_refuse_another_kernel_set_named_in_the_environment():
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    env.pop("MKL_CBWR", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "before"], capture_output=True, text=True, timeout=120, env=env
    )
    assert "ATEN_CPU_CAPABILITY=default is set in the environment; unset it or set it to avx2" in out.stdout


def test_member_numerics_refuses_what_would_not_be_portable():
    with pytest.raises(BenchError, match=r"unknown numerics 'fast'; valid: native, portable"):
        check_numerics("fast")
    with pytest.raises(BenchError, match="portable numerics are for CPU builds"):
        with member_numerics("portable", torch.device("cuda")):
            pass
    # This test process has multiplied matrices already: on ATen's native kernels, MKL's default branch.
    assert not portable_numerics_active()
    native = torch.backends.cpu.get_cpu_capability()
    refusal = "not on its strict COMPATIBLE branch" if native == "AVX2" else f"this process runs '{native}'"
    with pytest.raises(BenchError, match=refusal):
        with member_numerics("portable", torch.device("cpu")):
            pass
    enabled = torch.backends.mkldnn.enabled
    with member_numerics("native", torch.device("cpu")):
        assert torch.backends.mkldnn.enabled == enabled


def test_cli_refuses_an_unknown_numerics_before_any_training(tmp_path, zoo_cache):
    env = {**os.environ, "TQDM_DISABLE": "1", "DFML_CACHE": str(zoo_cache)}
    run = subprocess.run(
        [str(BIN / "dfml-zoo"), "build", "glyphs_ss_conv4", "--numerics", "fast"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "invalid choice: 'fast'" in run.stderr and "portable" in run.stderr
    assert not (zoo_cache / "zoo_members").exists()


@needs_mkl_avx2
def test_portable_build_refuses_native_members_unless_told_to_retrain_them(tmp_path, zoo_cache, small_glyphs):
    tiny = ["dataset.max_classes=260", "zoo.n_members=2", "zoo.recipe.epochs=1", "zoo.recipe.milestones=[2]"]
    env = {**os.environ, "TQDM_DISABLE": "1", "DFML_CACHE": str(zoo_cache)}

    def build(*flags: str) -> subprocess.CompletedProcess:
        command = [str(BIN / "dfml-zoo"), "build", "glyphs_ss_conv4", "--threads", "1", *flags, *tiny]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    assert build().returncode == 0
    native = _members(zoo_cache)
    refused = build("--numerics", "portable")
    assert refused.returncode == 2 and "is cached from a native build" in refused.stderr
    assert "--replace-native" in refused.stderr and _members(zoo_cache) == native
    for key in native:  # one member missing, the other native: refused before training the missing one
        kept = tmp_path / "kept"
        shutil.move(zoo_cache / "zoo_members" / key, kept)
        partial = build("--numerics", "portable")
        assert partial.returncode == 2 and "is cached from a native build" in partial.stderr
        assert key not in _members(zoo_cache), "a portable member was trained into a native cache"
        shutil.move(kept, zoo_cache / "zoo_members" / key)
    wrong = build("--replace-native")
    assert wrong.returncode == 2 and "--replace-native applies to --numerics portable" in wrong.stderr
    replaced = build("--numerics", "portable", "--replace-native")
    assert replaced.returncode == 0 and "2 trained" in replaced.stdout, replaced.stderr[-2000:]
    portable = _members(zoo_cache)
    assert portable.keys() == native.keys()
    for key, info in portable.items():
        assert info["train_numerics"] == "portable"
        assert info["weights_sha256"] != native[key]["weights_sha256"]
    reused = build()  # a native build uses the cached portable members
    assert reused.returncode == 0 and "0 trained" in reused.stdout and _members(zoo_cache) == portable
    listing = subprocess.run(
        [str(BIN / "dfml-zoo"), "ls"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert (
        "2 members" in listing.stdout and "(portable)" in listing.stdout and "(native)" not in listing.stdout
    )


@needs_mkl_avx2
def test_parallel_portable_member_jobs_train_the_portable_build(tmp_path, zoo_cache, small_glyphs):
    tiny = ["dataset.max_classes=260", "zoo.n_members=2", "zoo.recipe.epochs=1", "zoo.recipe.milestones=[2]"]
    single = _fresh_cache(tmp_path, "single", zoo_cache)

    def run(cache: Path, *command: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "TQDM_DISABLE": "1", "DFML_CACHE": str(cache)}
        return subprocess.run(
            [str(BIN / command[0]), *command[1:], *tiny],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    built = run(single, "dfml-zoo", "build", "glyphs_ss_conv4", "--threads", "1", "--numerics", "portable")
    assert built.returncode == 0, built.stderr[-2000:]
    jobs = run(
        zoo_cache,
        "dfml-zoo-job",
        "--multirun",
        "zoo=glyphs_ss_conv4",
        "numerics=portable",
        "member=range(0,2)",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    )
    assert jobs.returncode == 0, jobs.stderr[-2000:]
    assert _members(zoo_cache) == {
        key: {**info, "train_seconds": _members(zoo_cache)[key]["train_seconds"]}
        for key, info in _members(single).items()
    }


def test_the_inversion_cost_tool_times_each_numerics_in_a_process_of_its_own():
    """tools/inversion_step_cost.py (the portable-cost table of results/README), on a tiny batch."""
    tool = Path(__file__).parents[1] / "tools" / "inversion_step_cost.py"
    out = subprocess.run(
        [sys.executable, str(tool), "--archs", "conv4", "--batch", "2", "--steps", "1", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    (row,) = [line for line in out.splitlines() if line.startswith("| conv4 |")]
    _, _, native, portable, ratio, _ = (cell.strip() for cell in row.split("|"))
    assert float(native) > 0 and float(portable) > 0 and ratio.endswith("x")
    child = subprocess.run(
        [sys.executable, str(tool), "--child", "portable", "resnet99", "--steps", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode != 0 and "resnet99" in child.stderr
