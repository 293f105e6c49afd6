from __future__ import annotations

import json
import os

import mlflow
import pytest

from bench.atomic import atomic_write_json
from bench.records import read_record, read_records, write_record
from bench.tracking import MlflowSink, ensure_store, flatten, tracking_uri
from tests.fixtures.make_leaderboard_fixture import fake_record


def test_mlflow_sink_round_trip(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_store(uri)
    records = [
        fake_record("random_init", True, 30.0, "5w1s", 0),
        fake_record("weight_average", True, 45.0, "5w1s", 0),
    ]
    for record in records:
        run_dir = tmp_path / "runs" / record.run_key
        write_record(run_dir, record, "a: 1\n")
        MlflowSink(uri, "golden").log_record(record, run_dir)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["golden"]).set_index("tags.mlflow.runName")
    assert set(runs.index) == {r.run_key for r in records}
    for record in records:
        row = runs.loc[record.run_key]
        assert row["metrics.acc_mean"] == pytest.approx(record.acc_mean)
        assert row["metrics.acc_ci95"] == pytest.approx(record.acc_ci95)
        assert row["metrics.acc_mean_steps_1"] == pytest.approx(record.metrics["steps_1"]["mean"])
        assert row["params.method.name"] == record.method
        assert row["tags.method"] == record.method and row["status"] == "FINISHED"
        artifacts = mlflow.MlflowClient(uri).list_artifacts(row["run_id"])
        assert {a.path for a in artifacts} == {"record.json", "config.yaml", "episodes.csv"}
    assert (tmp_path / "mlartifacts").is_dir()  # next to the DB, not in the working directory


def test_a_rerun_replaces_its_run_in_mlflow_and_a_repeated_upload_does_not_duplicate(tmp_path):
    from bench.evaluate import summarize

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_store(uri)
    sink, run_dir = MlflowSink(uri, "golden"), tmp_path / "runs" / "k"
    first = fake_record("weight_average", True, 45.0, "5w1s", 0)
    first.finished_at = "2026-01-01T00:00:00+00:00"
    write_record(run_dir, first, "a: 1\n")
    assert sink.log_record(first, run_dir) and sink.synced(run_dir, first)
    marker = json.loads((run_dir / "mlflow_run.json").read_text())
    assert sink.log_record(first, run_dir)  # the same record again (e.g. --sync-mlflow): no duplicate
    mlflow.set_tracking_uri(uri)
    assert len(mlflow.search_runs(experiment_names=["golden"])) == 1
    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == marker["run_id"]
    rerun = fake_record("weight_average", True, 45.0, "5w1s", 0)  # a force=true rerun: same run key
    rerun.finished_at = "2026-02-01T00:00:00+00:00"
    rerun.per_episode = {k: [v - 10.0 for v in vs] for k, vs in rerun.per_episode.items()}
    rerun.metrics = {k: summarize(v) for k, v in rerun.per_episode.items()}
    write_record(run_dir, rerun, "a: 1\n")
    assert not sink.synced(run_dir, rerun)  # the old marker went with the old record
    (run_dir / "mlflow_run.json").write_text(json.dumps({"uri": uri, "run_id": "x"}))  # pre-fix marker
    assert not sink.synced(run_dir, rerun)  # a marker that does not name this record is not trusted
    assert sink.log_record(rerun, run_dir)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["golden"])
    assert len(runs) == 1
    assert runs.iloc[0]["metrics.acc_mean"] == pytest.approx(rerun.acc_mean)
    assert runs.iloc[0]["tags.finished_at"] == rerun.finished_at


def test_a_rerun_within_the_same_second_supersedes_every_earlier_run_of_its_key(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_store(uri)
    sink, run_dir = MlflowSink(uri, "golden"), tmp_path / "runs" / "k"
    record = fake_record("weight_average", True, 45.0, "5w1s", 0)
    write_record(run_dir, record, "a: 1\n")
    for attempt in range(11):  # eleven earlier uploads of the key (e.g. interrupted or superseded ones)
        record.finished_at = f"2026-01-01T00:00:00.{attempt:06d}+00:00"
        sink._log(record, run_dir)
    record.finished_at = "2026-01-01T00:00:00.000011+00:00"  # the same second, a later record
    assert sink.log_record(record, run_dir) and sink.synced(run_dir, record)
    runs = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("golden").experiment_id]
    )
    assert [r.data.tags["finished_at"] for r in runs] == [record.finished_at]


def test_unreachable_tracking_server_warns_and_keeps_the_record(tmp_path, caplog):
    record = fake_record("random_init", True, 30.0, "5w1s", 0)
    run_dir = tmp_path / record.run_key
    write_record(run_dir, record, "a: 1\n")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "2"
    try:
        MlflowSink("http://127.0.0.1:9", "x").log_record(record, run_dir)
    finally:
        del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"], os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    assert "http://127.0.0.1:9" in caplog.text
    assert read_record(run_dir / "record.json").run_key == record.run_key


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid")
    assert tracking_uri(None, tmp_path) == "http://example.invalid"
    assert tracking_uri("sqlite:////x.db", tmp_path) == "sqlite:////x.db"


def test_flatten_config():
    assert flatten({"method": {"inner_lr": 0.01, "x": [1, 2]}, "seed": 0}) == {
        "method.inner_lr": "0.01",
        "method.x": "[1, 2]",
        "seed": "0",
    }


def test_record_without_done_marker_is_ignored(tmp_path):
    record = fake_record("random_init", True, 30.0, "5w1s", 0)
    write_record(tmp_path / "a", record, "")
    (tmp_path / "a" / "done").unlink()
    assert read_records(tmp_path) == []


def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {1j: 1})  # complex keys are not JSON
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    # a failure after the new bytes are written, before the rename: the old file stands, no temp left

    def fail(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_json(target, {"ok": 2, "padding": "x" * 10_000})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_record_of_another_schema_is_refused_by_name_and_skipped_by_the_collector(tmp_path, caplog):
    from bench.records import SCHEMA_VERSION

    write_record(tmp_path / "good", fake_record("random_init", True, 30.0, "5w1s", 0), "")
    write_record(tmp_path / "old", fake_record("weight_average", True, 40.0, "5w1s", 0), "")
    path = tmp_path / "old" / "record.json"
    data = json.loads(path.read_text())
    data["schema_version"] = SCHEMA_VERSION - 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"schema_version {SCHEMA_VERSION - 1} != {SCHEMA_VERSION}"):
        read_record(path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "record.json").write_text("{not json")
    (tmp_path / "broken" / "done").write_text("ok\n")
    with caplog.at_level("WARNING"):
        assert [r.method for r in read_records(tmp_path)] == ["random_init"]
    assert "skipping unreadable record" in caplog.text and "old" in caplog.text and "broken" in caplog.text


def test_sync_uploads_again_a_record_whose_marked_run_left_the_store(tmp_path):
    """A marker says 'synced', but the store was recreated (or the run deleted): sync uploads it."""
    from bench.collect import sync_mlflow

    results = tmp_path / "results"
    record = fake_record("weight_average", True, 45.0, "5w1s", 0)
    record.experiment = "golden"
    run_dir = results / "runs" / "golden" / record.run_key
    write_record(run_dir, record, "a: 1\n")
    assert sync_mlflow(results, "golden") == (1, 0)
    assert sync_mlflow(results, "golden") == (0, 0)  # held: nothing to do
    uri = json.loads((run_dir / "mlflow_run.json").read_text())["uri"]
    client = mlflow.MlflowClient(uri)
    client.delete_run(json.loads((run_dir / "mlflow_run.json").read_text())["run_id"])
    assert sync_mlflow(results, "golden") == (1, 0)  # the marker alone is not trusted
    experiment = client.get_experiment_by_name("golden").experiment_id
    assert len(client.search_runs([experiment])) == 1


def test_sync_into_a_damaged_store_is_a_clear_error(tmp_path, monkeypatch):
    from bench.collect import sync_mlflow
    from bench.errors import BenchError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "runs" / "golden").mkdir(parents=True)
    (tmp_path / "mlflow.db").write_bytes(b"not a database" * 100)
    with pytest.raises(
        BenchError, match=r"--sync-mlflow: cannot open the MLflow store sqlite:///.*mlflow.db"
    ):
        sync_mlflow(tmp_path, "golden")


def test_sync_to_a_store_of_an_unsupported_kind_is_a_clear_error(tmp_path, monkeypatch):
    from bench.collect import sync_mlflow
    from bench.errors import BenchError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://store")
    (tmp_path / "runs" / "golden").mkdir(parents=True)
    with pytest.raises(
        BenchError, match=r"--sync-mlflow: cannot open the MLflow store bogus://store .*sqlite:///"
    ):
        sync_mlflow(tmp_path, "golden")
