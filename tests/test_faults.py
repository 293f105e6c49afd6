"""Faults survived: kill -9 during PURER meta-training and evaluation, non-finite losses, failed records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.evaluate import evaluate
from bench.learners.maml import FineTuneLearner
from bench.method import MethodContext
from bench.records import read_records
from bench.tasks import TaskShape, TaskSuite
from purer.config import PurerConfig
from tests.test_purer import _trainer
from zoos.meta_model import fresh_meta_model

BIN = Path(sys.executable).parent


def _dfml_run(*args: str, cwd: Path, wait: bool = True):  # noqa: ANN202
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [str(BIN / "dfml-run"), *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _kill_when(process: subprocess.Popen, appears: Path, pattern: str, timeout: float = 1800) -> None:
    """SIGKILL ``process`` as soon as ``appears/pattern`` exists; a clear failure if it never does."""
    deadline = time.monotonic() + timeout
    while not list(appears.glob(pattern)):
        if process.poll() is not None:
            raise AssertionError(
                "the run finished before it could be killed: " + process.stderr.read().decode()
            )
        if time.monotonic() > deadline:  # a heavily loaded machine: say so instead of a later mismatch
            process.kill()
            raise AssertionError(f"{appears}/{pattern} did not appear within {timeout:.0f} s")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _record(results: Path) -> dict:
    (path,) = (results / "runs" / "smoke").glob("*/record.json")
    return json.loads(path.read_text())


PURER = [
    "experiment=smoke",
    "method=purer",
    "budget.meta_iterations=16",
    "method.checkpoint_every=4",
    "method.selection.every=8",
    "method.selection.val_episodes=4",
    "method.icfil.inversion_steps=2",
    "task.n_episodes=4",
    "tracking=none",
]


def test_kill_9_during_purer_meta_training_then_rerun_gives_the_identical_record(tmp_path, small_glyphs):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    assert _dfml_run(*PURER, cwd=straight).returncode == 0
    process = _dfml_run(*PURER, cwd=killed, wait=False)
    _kill_when(process, killed / "results" / "meta_train", "*/checkpoint.pt")
    assert not list((killed / "results" / "runs" / "smoke").glob("*/record.json"))
    done = _dfml_run(*PURER, cwd=killed)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _record(straight / "results"), _record(killed / "results")
    assert 0 < b["train_stats"]["resumed_at_iteration"] < 16
    assert b["throughput"]["meta_train_resumed_s"] == b["train_stats"]["resumed_seconds"] > 0
    assert a["per_episode"] == b["per_episode"] and a["metrics"] == b["metrics"]
    assert a["extra_metrics"] == b["extra_metrics"]
    assert a["train_stats"]["selected_iteration"] == b["train_stats"]["selected_iteration"]
    assert "resumed_code" not in b["hashes"]  # the same code wrote the checkpoint it resumed


EVAL = ["experiment=smoke", "method=random_init", "task=5w1s", "task.n_episodes=100", "tracking=none"]


def test_kill_9_during_evaluation_resumes_after_the_last_saved_episode(tmp_path, small_glyphs):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    assert _dfml_run(*EVAL, cwd=straight).returncode == 0
    process = _dfml_run(*EVAL, cwd=killed, wait=False)
    _kill_when(process, killed / "results" / "runs" / "smoke", "*/work/eval_progress.json")
    (progress,) = (killed / "results" / "runs" / "smoke").glob("*/work/eval_progress.json")
    written = json.loads(progress.read_text())
    saved = len(written["per_episode"]["10"])
    assert 0 < saved < 100
    done = _dfml_run(*EVAL, cwd=killed)
    assert done.returncode == 0, done.stderr[-2000:]
    record = _record(killed / "results")
    assert _record(straight / "results")["per_episode"] == record["per_episode"]
    assert [e["code_sha256"] for e in written["code_history"]] == [record["hashes"]["code_sha256"]]
    assert "resumed_code" not in record["hashes"]


def test_a_killed_forced_run_no_longer_counts_as_finished_and_a_plain_relaunch_resumes_it(
    tmp_path, small_glyphs
):
    assert _dfml_run(*EVAL, cwd=tmp_path).returncode == 0
    (run_dir,) = (tmp_path / "results" / "runs" / "smoke").glob("*/")
    first = _record(tmp_path / "results")
    (run_dir / "work" / "eval_progress.json").unlink(missing_ok=True)
    process = _dfml_run(*EVAL, "force=true", cwd=tmp_path, wait=False)
    _kill_when(process, run_dir / "work", "eval_progress.json")  # the forced evaluation is under way
    assert not (run_dir / "done").exists()  # else a relaunch would skip it for the old numbers
    done = _dfml_run(*EVAL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finished record exists" not in done.stdout + done.stderr
    again = _record(tmp_path / "results")
    assert again["finished_at"] != first["finished_at"] and again["per_episode"] == first["per_episode"]


def test_a_second_process_on_the_same_cell_waits_then_skips_it(tmp_path, small_glyphs):
    first = _dfml_run(*EVAL, cwd=tmp_path, wait=False)
    runs = tmp_path / "results" / "runs" / "smoke"
    deadline = time.monotonic() + 600
    while not list(runs.glob("*/work/eval_progress.json")):  # the first is inside the cell
        assert first.poll() is None and time.monotonic() < deadline, "the first run ended too soon"
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)  # paused inside the cell, holding its lock
    log = tmp_path / "second.log"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("w") as out:
        second = subprocess.Popen(
            [str(BIN / "dfml-run"), *EVAL], cwd=tmp_path, env=env, stdout=out, stderr=out
        )
        try:
            while "is computing it; waiting" not in log.read_text():
                assert second.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.05)
        finally:
            first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=600) == 0 and second.wait(timeout=600) == 0, log.read_text()[-2000:]
    assert "another process finished it meanwhile" in log.read_text()
    assert len(list(runs.glob("*/record.json"))) == 1


def test_ctrl_c_is_one_line_saying_how_to_resume(tmp_path, small_glyphs):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(  # SIGINT as at a terminal (an xdist worker passes it on ignored)
        [str(BIN / "dfml-run"), *EVAL],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    runs = tmp_path / "results" / "runs" / "smoke"
    deadline = time.monotonic() + 600
    while not list(runs.glob("*/work/eval_progress.json")):  # inside the evaluation
        assert process.poll() is None and time.monotonic() < deadline, "the run ended too soon"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "dfml-run: interrupted; relaunch the same command to resume" in err.decode()
    assert "Traceback" not in err.decode()


class _Crashing(FineTuneLearner):
    """A learner that dies at a given episode count (a kill during evaluation, in-process)."""

    def __init__(self, base: FineTuneLearner, die_after: int) -> None:
        super().__init__(base.model, base.inner_lr)
        self.calls, self.die_after = 0, die_after

    def adapt_readouts(self, support_x, support_y, steps):  # noqa: ANN001, ANN201
        self.calls += 1
        if self.calls > self.die_after:
            raise KeyboardInterrupt
        return super().adapt_readouts(support_x, support_y, steps)


def test_a_damaged_evaluation_progress_file_is_ignored_by_name(tmp_path, small_glyphs, caplog):
    suite = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 6, seed=3)
    context = MethodContext(5, 1, 32, 3, torch.device("cpu"), 0)
    learner = FineTuneLearner(fresh_meta_model(context, 8), 0.01)
    clean = evaluate(learner, suite, [1, 10])
    progress = tmp_path / "eval_progress.json"
    for damage in ("{not json", json.dumps({"suite": suite.content_hash, "readouts": [1, 10]})):
        progress.write_text(damage)
        assert evaluate(learner, suite, [1, 10], progress=progress).per_episode == clean.per_episode
        assert f"ignoring {progress}: unreadable" in caplog.text
        caplog.clear()


def test_evaluation_resume_is_identical_and_skips_saved_episodes(tmp_path, small_glyphs):
    suite = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 60, seed=3)
    context = MethodContext(5, 1, 32, 3, torch.device("cpu"), 0)
    learner = FineTuneLearner(fresh_meta_model(context, 8), 0.01)
    clean = evaluate(learner, suite, [1, 10])
    progress = tmp_path / "eval_progress.json"
    crashing = _Crashing(learner, die_after=37)
    with pytest.raises(KeyboardInterrupt):
        evaluate(crashing, suite, [1, 10], progress=progress, save_every=25)
    resumed_learner = _Crashing(learner, die_after=10**6)
    resumed = evaluate(resumed_learner, suite, [1, 10], progress=progress, save_every=25)
    assert resumed_learner.calls == 60 - 25
    assert resumed.per_episode == clean.per_episode
    # a progress file of another suite, or of other readouts, is ignored: every episode re-run
    other = TaskSuite(small_glyphs, "test", TaskShape(5, 1, 15), 60, seed=4)
    counted = _Crashing(learner, die_after=10**6)
    stale = evaluate(counted, other, [1, 10], progress=progress)
    assert counted.calls == 60 and stale.per_episode == evaluate(learner, other, [1, 10]).per_episode
    partial = tmp_path / "partial_progress.json"
    with pytest.raises(KeyboardInterrupt):
        evaluate(_Crashing(learner, die_after=30), suite, [1, 10], progress=partial, save_every=25)
    counted = _Crashing(learner, die_after=10**6)
    assert set(evaluate(counted, suite, [1, 5], progress=partial).per_episode) == {1, 5}
    assert counted.calls == 60


def test_non_finite_loss_stops_naming_iteration_last_losses_and_kept_checkpoint(tmp_path):
    cfg = PurerConfig(meta_iterations=8, checkpoint_every=2)
    trainer = _trainer(cfg, work_dir=tmp_path)
    original = trainer.meta_iteration

    def poisoned():  # noqa: ANN202
        if trainer.it == 5:
            trainer.data.X.data[0, 0, 0, 0] = float("nan")
        return original()

    trainer.meta_iteration = poisoned
    with pytest.raises(FloatingPointError, match=r"meta-iteration 6 .*last finite: \{'iteration': 5.*"):
        trainer.run()
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["it"] == 4 and torch.isfinite(checkpoint["X"]).all()


def test_a_failed_run_is_recorded_as_failed_and_retried(tmp_path, small_glyphs, monkeypatch):
    from hydra import compose, initialize_config_module

    from bench.app import run_one
    from bench.errors import BenchError
    from purer.method import Purer

    def explode(self, zoo, budget, gen):  # noqa: ANN001, ANN202
        raise FloatingPointError("purer: non-finite loss at meta-iteration 3; last finite: {...}")

    monkeypatch.setattr(Purer, "meta_train", explode)
    with initialize_config_module("bench.conf", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["experiment=smoke", "method=purer", "tracking=none", f"paths.results={tmp_path}"],
        )
    with pytest.raises(BenchError, match="failed and was recorded as such.*meta-iteration 3"):
        run_one(cfg)
    (record,) = read_records(tmp_path / "runs" / "smoke")
    assert record.status == "failed" and "FloatingPointError" in record.error and not record.metrics
    with pytest.raises(BenchError):  # not skipped as finished: relaunching retries it
        run_one(cfg)
