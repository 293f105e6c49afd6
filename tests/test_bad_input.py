"""Bad input: each case is a one-line actionable error, a non-zero exit, and no record written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SMOKE = ["experiment=smoke", "method=random_init", "task.n_episodes=2", "tracking=none"]

CASES = {
    "unknown method": (
        ["method=weight_avrage"],
        r"unknown method 'weight_avrage'; did you mean 'weight_average'",
    ),
    "unknown dataset": (["dataset=omniglott"], r"unknown dataset 'omniglott'; did you mean 'omniglot'"),
    "unknown method, nothing close": (
        ["method=zzz"],
        r"unknown method 'zzz'; available: bidfmkd, .*random_init, .*weight_average",
    ),
    "unknown zoo": (["zoo=glyphs_ss_conv"], r"unknown zoo 'glyphs_ss_conv'; did you mean 'glyphs_ss_conv4'"),
    "unknown experiment": (["experiment=omniglt"], r"unknown experiment 'omniglt'; did you mean 'omniglot'"),
    "unknown tracking": (["tracking=sqlit"], r"unknown tracking 'sqlit'; did you mean 'sqlite'"),
    "unknown arch": (["zoo.arch=conv44"], r"unknown architecture 'conv44'; did you mean 'conv4'"),
    "n_way too large": (["task.n_way=500"], r"n_way=500 is larger than the \d+ classes"),
    "zero shots": (["task.k_shot=0"], r"must all be >= 1; got .*k_shot=0"),
    "shots exceed class size": (
        ["task.k_shot=30"],
        r"k_shot \+ n_query = 30 \+ 15 = 45 exceeds the 20 images",
    ),
    "wrong type": (
        ["method.inner_lr=fast"],
        r"bad config for method .random_init.: method.inner_lr: .*valid keys",
    ),
    "zero budget": (["budget.meta_iterations=0"], r"budget.meta_iterations must be > 0 or null; got 0"),
    "negative seconds": (["budget.max_seconds=-5"], r"budget.max_seconds must be > 0 or null; got -5"),
    "zero threads": (["threads=0"], r"threads must be >= 1 or null; got 0"),
    "threads not a number": (["threads=abc"], r"threads must be an integer >= 1 or null; got 'abc'"),
    "episode count not a number": (["task.n_episodes=abc"], r"task.n_episodes='abc' is not an integer"),
    "method key typo": (["+method.inner_lrr=0.1"], r"bad config for method .random_init.: .*inner_lrr"),
    "zero probe episodes": (
        ["method=dfmaml", "method.val_episodes=0"],
        r"method.val_episodes must be >= 1; got 0",
    ),
    "missing dataset root": (
        [
            "dataset=omniglot",
            "zoo=omniglot_ss_conv4",
            "~dataset.max_classes",
            "dataset.root=/nonexistent/omniglot",
        ],
        r"omniglot.*/nonexistent/omniglot",
    ),
    "mh zoo for another dataset": (
        ["zoo=mh_paper"],
        r"multi-dataset \(MH\) zoo over .*'glyphs' is not one of them",
    ),
    "zoo of another dataset": (
        ["zoo=cifar_fs_ss_conv4"],
        r"built on dataset 'cifar_fs'.*use dataset=cifar_fs",
    ),
    "option of another dataset": (
        ["dataset=omniglot", "zoo=omniglot_ss_conv4"],
        r"dataset 'omniglot' has no option\(s\) \['max_classes'\]; valid: root",
    ),
    "ota on a mixed-architecture zoo": (
        ["zoo=glyphs_sh", "method=ota"],
        r"ota averages parameters, so it needs a same-architecture \(SS\) zoo; zoo 'glyphs_sh' is "
        r"heterogeneous: zoo.arch=\['conv4', 'resnet10', 'resnet18'\]",
    ),
    "weight_average on a mixed-architecture zoo": (
        ["zoo=glyphs_sh", "method=weight_average"],
        r"weight_average averages parameters, so it needs a same-architecture \(SS\) zoo",
    ),
    "cuda without a gpu": (["device=cuda"], r"CUDA is not available; use device=cpu"),
    "bad test_steps": (["task.test_steps=[-1]"], r"test_steps must be a non-empty list of integers >= 0"),
    "primary readout not read out": (
        ["task.primary_steps=5"],
        r"task.primary_steps=5 is not in task.test_steps=\[1, 10\]; valid: one of \[1, 10\]",
    ),
    "fractional way count": (["task.n_way=5.5"], r"task.n_way=5.5 is not an integer"),
    "zero eval limit": (["eval.limit=0"], r"eval.limit=0 is not valid; valid: null \(every episode\)"),
    "method key the experiment's method_overrides replaces": (
        ["method=purer", "+method_overrides.purer.init=random", "method.init=average"],
        r"method.init=average is overridden by method_overrides.purer .*sets method.init=random; to change "
        r"it in this experiment, pass method_overrides.purer.init=average",
    ),
    "a boolean that is not one": (["force=flase"], r"force='flase' is not valid; valid: true, false"),
    "task key typo": (["+task.nway=10"], r"unknown task key 'task.nway'; did you mean 'task.n_way'"),
    "unknown top-level key": (["+sed=1"], r"unknown top-level key 'sed'; did you mean 'seed'"),
    "fractional seed": (["seed=1.5"], r"seed=1.5 is not valid; valid: an integer"),
    "budget not a number": (["budget.meta_iterations=abc"], r"budget.meta_iterations='abc' is not valid"),
    "empty results dir": (["paths.results="], r"paths.results is empty"),
    "probe episodes not a number": (
        ["method=dfmaml", "method.val_episodes=abc"],
        r"bad config for method .dfmaml.: method.val_episodes",
    ),
}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TQDM_DISABLE": "1", "HYDRA_FULL_ERROR": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [str(BIN / "dfml-run"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_actionable_line_and_writes_nothing(case, tmp_path, small_glyphs):
    if case == "cuda without a gpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    overrides, pattern = CASES[case]
    done = _run([*SMOKE, *overrides], tmp_path)
    assert done.returncode != 0
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "error" in line.lower()]
    assert errors, done.stdout[-1500:] + done.stderr[-1500:]
    import re

    assert any(re.search(pattern, line) for line in errors), "\n".join(errors)[-2000:]
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "results").rglob("record.json"))


def test_unwritable_results_dir_is_named(tmp_path, small_glyphs):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    done = _run([*SMOKE, f"paths.results={blocker}/results"], tmp_path)
    assert done.returncode != 0 and f"results dir '{blocker}/results' cannot be created" in done.stderr


def test_truncated_checkpoint_and_corrupt_member_name_the_file_and_the_fix(tmp_path, small_glyphs):
    purer = [
        "experiment=smoke",
        "method=purer_no_icfil",
        "budget.meta_iterations=2",
        "method.selection.val_episodes=2",
        "task.n_episodes=2",
        "tracking=none",
    ]
    assert _run(purer, tmp_path).returncode == 0
    (checkpoint,) = (tmp_path / "results" / "meta_train").glob("*/checkpoint.pt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    done = _run([*purer, "method=purer"], tmp_path)
    assert done.returncode != 0 and f"checkpoint {checkpoint} is unreadable" in done.stderr
    assert "delete it" in done.stderr


@pytest.mark.parametrize(
    "experiment", ["paper_ss_cifar_fs", "paper_ss_mini", "paper_sh_cifar_fs", "paper_mh"]
)
def test_paper_experiments_start_and_fail_with_the_missing_data_message(experiment, tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1", "DFML_DATA": str(tmp_path / "no-data")}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [str(BIN / "dfml-run"), f"experiment={experiment}", "tracking=none"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert str(tmp_path / "no-data") in done.stderr and "dfml-run: error:" in done.stderr
    assert not list((tmp_path / "results").rglob("record.json"))
