"""A real MLflow server: unreachable at run time (the run completes, a warning names the URI), then
started on that port; ``dfml-collect --sync-mlflow`` uploads the missing run, read back over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from bench.records import read_records

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server at {url} not ready after {timeout} s")


def _sync(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [str(BIN / "dfml-collect"), "smoke", "--sync-mlflow"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_unreachable_server_then_sync_uploads_to_a_real_server(tmp_path, small_glyphs):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TQDM_DISABLE": "1", "MLFLOW_TRACKING_URI": url}
    args = ["experiment=smoke", "method=random_init", "task.n_episodes=4"]
    done = subprocess.run(
        [str(BIN / "dfml-run"), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr  # Hydra's job log goes to the console and the job's log file
    assert f"MLflow at {url} unreachable" in output and "dfml-collect smoke --sync-mlflow" in output
    (record,) = read_records(tmp_path / "results" / "runs" / "smoke")
    assert record.status == "ok" and record.per_episode["steps_10"]
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_ready(url, server)
        sync = _sync(tmp_path, env)
        assert sync.returncode == 0, sync.stderr[-2000:]
        assert "1 run(s) uploaded" in sync.stdout
        again = _sync(tmp_path, env)
        assert "0 run(s) uploaded" in again.stdout  # nothing uploaded twice
        mlflow.set_tracking_uri(url)
        runs = mlflow.search_runs(experiment_names=["smoke"])
        assert list(runs["tags.mlflow.runName"]) == [record.run_key]
        assert runs.iloc[0]["metrics.acc_mean"] == pytest.approx(record.acc_mean)
    finally:
        server.terminate()
        server.wait(timeout=30)
        mlflow.set_tracking_uri(None)
