"""CLI smoke: dfml-run (smoke experiment) end to end, idempotent relaunch, dfml-collect, dfml-ls."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from bench.records import read_records

BIN = Path(sys.executable).parent


def _run(tool: str, *args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DFML_RESULTS", None)  # ./results under cwd, unless a test sets it
    env.update(env_extra or {})
    return subprocess.run(
        [str(BIN / tool), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, small_glyphs):
    work = tmp_path_factory.mktemp("cli")
    done = _run("dfml-run", "experiment=smoke", cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    return work, done


def test_smoke_run_writes_records_leaderboard_and_mlflow(smoke_results):
    work, done = smoke_results
    results = work / "results"
    records = read_records(results / "runs" / "smoke")
    assert {r.method for r in records} == {"random_init", "weight_average"}
    for record in records:
        assert record.status == "ok" and record.setting["task"] == "5w1s"
        assert len(record.per_episode["steps_10"]) == 20 and len(record.per_episode["steps_1"]) == 20
        assert record.throughput["eval_episodes_per_s"] > 0 and record.environment["torch"]
        assert record.environment["aten_cpu_capability"] in ("DEFAULT", "AVX2", "AVX512")
        assert record.hashes["suite"] and record.hashes["zoo"] and record.choices["method"] == record.method
        assert len(record.hashes["zoo_weights"]) == 64  # which build of the zoo (member weights)
    assert len({r.hashes["suite"] for r in records}) == 1  # same episodes for every method
    assert len({r.hashes["zoo_weights"] for r in records}) == 1
    assert "| random_init" in done.stdout and "| weight_average" in done.stdout
    assert (results / "leaderboards" / "smoke.csv").is_file() and (
        results / "leaderboards" / "smoke.md"
    ).is_file()
    assert (results / "leaderboards" / "smoke.png").is_file()
    mlflow.set_tracking_uri(f"sqlite:///{results / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"])
    board = runs[runs["tags.kind"] == "leaderboard"]
    runs = runs[runs["tags.kind"] != "leaderboard"]
    assert sorted(runs["tags.mlflow.runName"]) == sorted(r.run_key for r in records)
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(board.iloc[0]["run_id"])}
    assert {"smoke.md", "smoke.csv", "smoke.png"} <= files


def test_relaunch_skips_finished_runs_and_force_reruns_one(smoke_results):
    work, _ = smoke_results
    record_files = sorted((work / "results" / "runs" / "smoke").glob("*/record.json"))
    before = {p: p.stat().st_mtime_ns for p in record_files}
    again = _run("dfml-run", "experiment=smoke", cwd=work)
    assert again.returncode == 0, again.stderr
    assert (again.stdout + again.stderr).count("finished record exists") == 2
    assert {p: p.stat().st_mtime_ns for p in record_files} == before
    forced = _run("dfml-run", "experiment=smoke", "method=random_init", "force=true", cwd=work)
    assert forced.returncode == 0, forced.stderr
    changed = [p for p in record_files if p.stat().st_mtime_ns != before[p]]
    assert len(changed) == 1


def test_a_skipped_record_missing_from_the_store_is_uploaded(smoke_results, tmp_path):
    """A kill between record and MLflow log, or a fresh store: the relaunch mirrors what it skips."""
    shutil.copytree(smoke_results[0] / "results", tmp_path / "results")
    (tmp_path / "results" / "mlflow.db").unlink()
    for marker in (tmp_path / "results" / "runs").glob("*/*/mlflow_run.json"):
        marker.unlink()
    again = _run("dfml-run", "experiment=smoke", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (again.stdout + again.stderr).count("finished record exists") == 2
    keys = sorted(r.run_key for r in read_records(tmp_path / "results" / "runs" / "smoke"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"])
    assert sorted(runs.loc[runs["tags.kind"] != "leaderboard", "tags.mlflow.runName"]) == keys


def test_collect_checks_every_name_and_the_reference_before_writing_any_table(smoke_results, tmp_path):
    shutil.copytree(smoke_results[0] / "results", tmp_path / "results")
    board = tmp_path / "results" / "leaderboards" / "smoke.csv"
    before = board.stat().st_mtime_ns  # a rewrite gives the same bytes: the time tells
    typo = _run("dfml-collect", "smoke", "smok", cwd=tmp_path)
    assert (
        typo.returncode == 2 and "did you mean 'smoke'" in typo.stderr and board.stat().st_mtime_ns == before
    )
    absent = _run("dfml-collect", "smoke", "--reference", "purer", cwd=tmp_path)
    assert absent.returncode == 2 and board.stat().st_mtime_ns == before
    assert (
        "experiment smoke has no rows of the reference method 'purer'; its methods: random_init"
        in absent.stderr
    )
    (tmp_path / "results" / "runs" / "empty" / "0123" / "work").mkdir(parents=True)  # an interrupted run
    empty = _run("dfml-collect", "empty", cwd=tmp_path)
    assert empty.returncode == 2 and "experiment empty has no finished records" in empty.stderr
    assert not (tmp_path / "results" / "leaderboards" / "empty.csv").exists()
    blank = _run("dfml-collect", "smoke", "--results", "", cwd=tmp_path)
    assert blank.returncode == 2 and "--results is empty" in blank.stderr


def test_collect_and_ls(smoke_results):
    work, _ = smoke_results
    shutil.rmtree(work / "results" / "leaderboards")
    collected = _run("dfml-collect", "smoke", cwd=work)
    assert collected.returncode == 0, collected.stderr
    assert "weight_average" in collected.stdout and (work / "results" / "leaderboards" / "smoke.md").is_file()
    missing = _run("dfml-collect", "smok", cwd=work)
    assert missing.returncode == 2 and "did you mean 'smoke'" in missing.stderr
    shutil.copytree(work / "results" / "leaderboards", work / "tables_only" / "leaderboards")
    again = _run("dfml-collect", "smoke", "--results", "tables_only", cwd=work)  # records elsewhere
    assert again.returncode == 0, again.stderr
    assert "weight_average" in again.stdout and "Carried over from the previous table" in again.stdout
    none = _run("dfml-collect", "smoke", "--results", "tables_only", "--no-carry", cwd=work)
    assert none.returncode == 2 and "experiment with records or a table" in none.stderr
    # a mistyped reference is refused before any table is rewritten
    board = work / "results" / "leaderboards" / "smoke.md"
    before = board.read_text()
    typo = _run("dfml-collect", "smoke", "--reference", "random_int", cwd=work)
    assert (
        typo.returncode == 2
        and "unknown reference method 'random_int'; did you mean 'random_init'" in typo.stderr
    )
    assert board.read_text() == before
    # the experiment's own reference not run yet (a sweep of one method): a table without differences
    shutil.copytree(work / "results" / "runs", work / "wa_only" / "runs")
    for record in (work / "wa_only" / "runs" / "smoke").glob("*/record.json"):
        if '"method": "random_init"' in record.read_text():
            shutil.rmtree(record.parent)
    alone = _run("dfml-collect", "smoke", "--results", "wa_only", "--no-carry", cwd=work)
    assert alone.returncode == 0 and "weight_average" in alone.stdout, alone.stderr
    nowhere = _run("dfml-collect", "smoke", "--results", "no_such_dir", cwd=work)
    assert nowhere.returncode == 2 and "no_such_dir does not exist" in nowhere.stderr
    from_env = _run("dfml-collect", "smoke", cwd=work, env_extra={"DFML_RESULTS": str(work / "tables_only")})
    assert from_env.returncode == 0 and "Carried over from the previous table" in from_env.stdout
    listing = _run("dfml-ls", cwd=work)
    assert listing.returncode == 0
    for needle in (
        "datasets:",
        "glyphs",
        "architectures:",
        "conv4",
        "zoos:",
        "glyphs_ss_conv4",
        "methods:",
        "weight_average",
        "tasks:",
        "5w1s",
        "experiments:",
        "default",
    ):
        assert needle in listing.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_gpu_is_an_error_not_a_fallback(tmp_path):
    done = _run("dfml-run", "experiment=smoke", "device=cuda", cwd=tmp_path)
    assert done.returncode != 0 and "CUDA is not available; use device=cpu" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["method=weight_avrage"], "did you mean 'weight_average'"),
        (["experiment=smoke", "task.n_way=400"], "n_way=400 is larger than the"),
        (["experiment=smoke", "task.n_query=30"], "k_shot + n_query = 1 + 30 = 31 exceeds"),
        (["experiment=smoke", "budget.meta_iterations=0"], "budget.meta_iterations must be > 0"),
        (["experiment=smoke", "meta_model.global_pool=maybe"], "meta_model.global_pool='maybe' is not valid"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, args, message, small_glyphs):
    done = _run("dfml-run", *args, cwd=tmp_path)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results" / "runs").exists() or not any(
        (tmp_path / "results" / "runs").rglob("record.json")
    )


def test_purer_end_to_end_records_selection_artefacts_and_throughput(tmp_path, small_glyphs):
    args = [
        "experiment=smoke",
        "method=purer",
        "budget.meta_iterations=4",
        "method.selection.every=2",
        "method.selection.val_episodes=4",
        "method.icfil.inversion_steps=3",
        "task.n_episodes=4",
    ]
    done = _run("dfml-run", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = read_records(tmp_path / "results" / "runs" / "smoke")
    assert record.method == "purer" and record.data_free and record.transductive
    assert record.train_stats["meta_iterations"] == 4 and record.train_stats["selected_iteration"] in (2, 4)
    assert {"acc_test_best_of_evals", "acc_test_probe_last"} <= set(record.extra_metrics)
    assert record.throughput["synth_images_per_s"] > 0 and record.throughput["meta_iterations_per_s"] > 0
    assert {
        "work/artefacts/synthesized_start.png",
        "work/artefacts/curves.png",
        "work/purer_log.json",
    } <= set(record.artifacts)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"])
    run = runs[runs["tags.kind"] != "leaderboard"].iloc[0]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"], "work/artefacts")}
    assert "work/artefacts/synthesized_end.png" in artifacts
    assert run["metrics.acc_test_best_of_evals"] == pytest.approx(
        record.extra_metrics["acc_test_best_of_evals"]
    )
    # purer_no_icfil differs only in ICFIL (eval-only): it resumes purer's finished meta-training.
    args[1] = "method=purer_no_icfil"
    done = _run("dfml-run", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    by_method = {r.method: r for r in read_records(tmp_path / "results" / "runs" / "smoke")}
    shared, original = by_method["purer_no_icfil"], by_method["purer"]
    assert shared.config["method"]["icfil"]["enabled"] is False
    assert original.train_stats["resumed_at_iteration"] == 0
    assert shared.train_stats["resumed_at_iteration"] == 4
    # Its meta-training seconds are the checkpointed ones of the run that trained (not ~0 s of
    # this process), so its throughput is that run's, not 4 iterations over a checkpoint load.
    assert original.throughput["meta_train_resumed_s"] == 0
    resumed = shared.train_stats["resumed_seconds"]
    assert original.train_stats["meta_iterations_per_s"] == pytest.approx(4 / resumed)
    # the step rate times meta_iteration() alone (no selection), carried in the checkpoint
    step_rate = original.train_stats["step_meta_iterations_per_s"]
    assert step_rate > original.train_stats["meta_iterations_per_s"]
    assert shared.train_stats["step_meta_iterations_per_s"] == step_rate
    assert shared.train_stats["timed_meta_iterations"] == 4
    # both runs carry the training's start / middle / end grids (before: only the trainer's run)
    for run_record in (original, shared):
        grids = {f"work/artefacts/synthesized_{tag}.png" for tag in ("start", "middle", "end")}
        assert grids <= set(run_record.artifacts), run_record.method
    assert shared.throughput["meta_train_resumed_s"] == resumed
    assert shared.throughput["meta_train_s"] > resumed
    assert shared.throughput["episodes_per_s"] < 16 / resumed
    assert shared.train_stats["selected_iteration"] == original.train_stats["selected_iteration"]
    assert shared.seeds["method"] == original.seeds["method"]  # one training, whichever runs first
    assert shared.extra_metrics == original.extra_metrics
    assert len(list((tmp_path / "results" / "meta_train").iterdir())) == 1


def test_four_parallel_joblib_jobs_share_one_sqlite_store(tmp_path, small_glyphs):
    args = [
        "experiment=smoke",
        "method=random_init,weight_average",
        "task=5w1s,5w5s",
        "task.n_episodes=6",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "threads=1",
    ]
    done = _run("dfml-run", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_records(tmp_path / "results" / "runs" / "smoke")
    cells = sorted((r.method, r.setting["task"]) for r in records)
    assert cells == sorted({(m, t) for m in ("random_init", "weight_average") for t in ("5w1s", "5w5s")})
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"])
    runs = runs[runs["tags.kind"] != "leaderboard"]
    assert sorted(runs["tags.mlflow.runName"]) == sorted(r.run_key for r in records)  # each exactly once
    table = pd.read_csv(tmp_path / "results" / "leaderboards" / "smoke.csv")
    for record in records:
        row = table[
            (table.method == record.method)
            & (table.task == record.setting["task"])
            & (table.test_steps == 10)
        ]
        assert row.iloc[0].acc_mean == pytest.approx(record.metrics["steps_10"]["mean"], abs=1e-3)


def test_submitit_slurm_launcher_composes_for_dfml_run():
    from hydra import compose, initialize_config_module

    with initialize_config_module("bench.conf", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=600"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.timeout_min == 600


def test_tds_real_val_is_recorded_and_shown_as_not_data_free(smoke_results, tmp_path):
    """The opt-in real meta-val TDS: record says so, the leaderboard row is marked (reuses the smoke zoo)."""
    # a copy of the smoke results: the module's other tests see exactly the smoke sweep's records
    shutil.copytree(smoke_results[0] / "results", tmp_path / "results")
    work = tmp_path
    args = [
        "experiment=smoke",
        "method=tds_real_val",
        "budget.meta_iterations=3",
        "method.generate_iterations=2",
        "method.ngf=4",
        "method.nz=8",
        "method.check_every=1",
        "method.patience=1",
        "method.select_every=1000",
        "method.val_episodes=2",
        "task.n_episodes=4",
    ]
    done = _run("dfml-run", *args, cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    record = next(r for r in read_records(work / "results" / "runs" / "smoke") if r.method == "tds_real_val")
    assert record.data_free is False and record.real_data == "meta_val"
    assert record.train_stats["real_val_episodes"] == 4 * 2  # val_checks x checks (iterations 2, 3)
    plain = next(r for r in read_records(work / "results" / "runs" / "smoke") if r.method == "random_init")
    assert plain.data_free and plain.real_data == "none"
    done = _run("dfml-collect", "smoke", "--results", "results", cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    markdown = (work / "results" / "leaderboards" / "smoke.md").read_text()
    assert "tds_real_val (uses real meta-val episodes)" in markdown
    assert "| random_init " in markdown or "random_init |" in markdown


@pytest.mark.parametrize(
    ("tool", "needle"),
    [
        ("dfml-run", "A bare `dfml-run` runs experiment=default"),
        ("dfml-zoo-job", "build zoo members as independent jobs"),
    ],
)
def test_help_says_what_the_tool_does(tool, needle, tmp_path):
    done = _run(tool, "--help", cwd=tmp_path)
    assert done.returncode == 0 and needle in done.stdout and "Traceback" not in done.stderr
