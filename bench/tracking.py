"""MLflow sink: mirrors each record as an MLflow run (SQLite by default, any tracking URI).

experiment = the table id, run name = the run key; params = the flattened config; tags = Hydra
choices, git sha, zoo hash, device; metrics = ``acc_mean``, ``acc_ci95`` (+ per readout) and
throughput; artifacts = the record, the config and the per-episode CSV. If the tracking server
cannot be reached the run still completes: a warning names the URI and the record stays on disk;
``dfml-collect <experiment> --sync-mlflow`` uploads the runs whose ``mlflow_run.json`` marker is
missing for the current URI (a run already in the store under its run key is not uploaded twice).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from bench.atomic import atomic_write_json
from bench.records import MLFLOW_MARKER as MARKER
from bench.records import RunRecord

log = logging.getLogger(__name__)
#: Per-run marker: the tracking URI and MLflow run id the record was mirrored to.


class Sink(Protocol):
    """Where finished records are mirrored."""

    def log_record(self, record: RunRecord, run_dir: Path) -> bool:
        """Mirror one record; False if the store could not be reached."""


class NullSink:
    """Tracking off (``tracking=none``)."""

    def log_record(self, record: RunRecord, run_dir: Path) -> bool:
        """Do nothing."""
        return True


def tracking_uri(configured: str | None, results_dir: Path) -> str:
    """``tracking.uri`` if set, else ``MLFLOW_TRACKING_URI``, else SQLite at results/mlflow.db."""
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


def bounded_http_retries() -> None:
    """Cap MLflow's HTTP retries (default 7, exponential backoff: minutes on a closed port).

    An unreachable server must not stall a run; user-set ``MLFLOW_HTTP_REQUEST_*`` values win.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def ensure_store(uri: str) -> None:
    """Create the tracking store (SQLite schema) once, before parallel jobs race to create it."""
    import mlflow

    bounded_http_retries()
    mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"method": {"inner_lr": 0.01}}`` -> ``{"method.inner_lr": "0.01"}``."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def record_metrics(record: RunRecord) -> dict[str, float]:
    """The numeric metrics MLflow gets for a record."""
    metrics = {"acc_mean": record.acc_mean, "acc_ci95": record.acc_ci95} if record.metrics else {}
    for readout, summary in record.metrics.items():
        metrics[f"acc_mean_{readout}"] = summary["mean"]
        metrics[f"acc_ci95_{readout}"] = summary["ci95"]
    for key, value in {**record.throughput, **record.extra_metrics}.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics[key] = float(value)
    return metrics


def record_tags(record: RunRecord) -> dict[str, str]:
    """Tags: Hydra choices, hashes, device, status."""
    tags = {f"choice.{k}": str(v) for k, v in record.choices.items()}
    tags.update(
        {
            "method": record.method,
            "run_key": record.run_key,
            "status": record.status,
            "data_free": str(record.data_free).lower(),
            "real_data": record.real_data_use,
            "legacy": ",".join(record.legacy_use) or "none",
            "git_sha": str(record.hashes.get("git_sha")),
            "zoo_hash": str(record.hashes.get("zoo")),
            "suite_hash": str(record.hashes.get("suite")),
            "device": str(record.environment.get("device_name")),
            # which record of this run key (a rerun replaces); microseconds since 2026-12-07, so that a
            # force=true rerun finishing within the same second is not taken for the logged record
            "finished_at": str(record.finished_at),
        }
    )
    return tags


class MlflowSink:
    """Logs records to MLflow at ``uri`` under experiment ``experiment``."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment

    def log_record(self, record: RunRecord, run_dir: Path) -> bool:
        """Create one MLflow run mirroring ``record``; warn (never fail the run) if unreachable.

        On success writes ``run_dir/mlflow_run.json`` (uri, run id), which ``dfml-collect
        --sync-mlflow`` uses to find the runs still missing from a store. Returns success.
        """
        bounded_http_retries()
        try:
            run_id = self._log_with_retries(record, run_dir)
        except Exception as error:  # noqa: BLE001 - tracking must never lose a finished run
            log.warning(
                "MLflow at %s unreachable or failing (%s: %s); record kept at %s; upload it later "
                "with: dfml-collect %s --sync-mlflow",
                self.uri,
                type(error).__name__,
                str(error).splitlines()[0][:300] if str(error) else "",
                run_dir / "record.json",
                record.experiment,
            )
            return False
        marker = {"uri": self.uri, "run_id": run_id, "experiment": self.experiment}
        atomic_write_json(run_dir / MARKER, {**marker, "finished_at": str(record.finished_at)})
        return True

    def synced(self, run_dir: Path, record: RunRecord) -> bool:
        """True when this very ``record`` (not an earlier one of its run key) is known to be in this store."""
        marker = run_dir / MARKER
        if not marker.is_file():
            return False
        saved = json.loads(marker.read_text())
        return saved.get("uri") == self.uri and saved.get("finished_at") == str(record.finished_at)

    def holds(self, run_dir: Path, record: RunRecord) -> bool:
        """:meth:`synced`, and the store still holds that run, active (not deleted, not a reset store)."""
        if not self.synced(run_dir, record):
            return False
        import mlflow

        run_id = json.loads((run_dir / MARKER).read_text()).get("run_id")
        try:
            run = mlflow.MlflowClient(tracking_uri=self.uri).get_run(str(run_id))
        except Exception:  # noqa: BLE001 - missing run (MlflowException) or store: not held
            return False
        return run.info.lifecycle_stage == "active"

    def _existing_run(self, record: RunRecord) -> str | None:
        """The id of the MLflow run already holding this very record (no duplicate uploads).

        Runs of the same run key holding another record (an earlier ``force=true`` run, a failed
        attempt since retried: their ``finished_at`` tag differs) are superseded: they are deleted
        (MLflow's soft delete), so the store shows what ``results/runs`` holds.
        """
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=self.uri)
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            return None
        found = client.search_runs(  # every run of the key: each superseded one is deleted below
            [experiment.experiment_id], filter_string=f"tags.run_key = '{record.run_key}'", max_results=50000
        )
        for run in found:
            same = run.data.tags.get("finished_at") == str(record.finished_at)
            if same and run.info.status in ("FINISHED", "FAILED"):
                return run.info.run_id
        for run in found:  # superseded, or left half-logged by an interrupted attempt: replace it
            log.info(
                "MLflow run %s (run key %s) superseded by a newer record", run.info.run_id, record.run_key
            )
            client.delete_run(run.info.run_id)
        return None

    def _log_with_retries(self, record: RunRecord, run_dir: Path, attempts: int = 4) -> str:
        """Log once; SQLite "database is locked" (parallel jobs on one store) is retried with backoff."""
        for attempt in range(attempts):
            try:
                return self._existing_run(record) or self._log(record, run_dir)
            except Exception as error:
                locked = self.uri.startswith("sqlite:") and "locked" in str(error).lower()
                if not locked or attempt == attempts - 1:
                    raise
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _experiment_id(self, client) -> str:  # noqa: ANN001 - MlflowClient
        """The experiment's id, created if missing; safe when parallel jobs race to create it."""
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(self.experiment, self._artifact_location())
        except Exception:
            experiment = client.get_experiment_by_name(self.experiment)  # another job created it first
            if experiment is None:
                raise
            return experiment.experiment_id

    def _artifact_location(self) -> str | None:
        """Artifacts of a SQLite store go next to the DB (not into the working directory)."""
        if not self.uri.startswith("sqlite:///"):
            return None
        db_path = Path(self.uri.removeprefix("sqlite:///"))
        return (db_path.parent / "mlartifacts" / self.experiment).resolve().as_uri()

    def _log(self, record: RunRecord, run_dir: Path) -> str:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=self.uri)
        experiment_id = self._experiment_id(client)
        run = client.create_run(experiment_id, run_name=record.run_key, tags=record_tags(record))
        run_id = run.info.run_id
        from mlflow.entities import Metric, Param

        params = [Param(k, v) for k, v in sorted(flatten(record.config).items())]
        for start in range(0, len(params), 100):
            client.log_batch(run_id, params=params[start : start + 100])
        metrics = [Metric(k, v, 0, 0) for k, v in sorted(record_metrics(record).items())]
        client.log_batch(run_id, metrics=metrics)
        for name in ("record.json", "config.yaml", "episodes.csv", *record.artifacts):
            if (run_dir / name).is_file():
                folder = str(Path(name).parent) if "/" in name else None
                client.log_artifact(run_id, str(run_dir / name), artifact_path=folder)
        client.set_terminated(run_id, "FINISHED" if record.status == "ok" else "FAILED")
        return run_id


def log_leaderboard(uri: str, experiment: str, files: list[Path]) -> None:
    """Attach the leaderboard files (md, csv, png) to a run named ``leaderboard`` of the experiment.

    The run is created once (tag ``kind=leaderboard``) and its artifacts are overwritten on each
    collect; failures only warn (the files are on disk).
    """
    bounded_http_retries()
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return  # no runs were ever logged to this experiment
        runs = client.search_runs(
            [found.experiment_id], filter_string="tags.kind = 'leaderboard'", max_results=1
        )
        if runs:
            run_id = runs[0].info.run_id
        else:
            run_id = client.create_run(
                found.experiment_id, run_name="leaderboard", tags={"kind": "leaderboard"}
            ).info.run_id
            client.set_terminated(run_id, "FINISHED")
        for path in files:
            if path.is_file():
                client.log_artifact(run_id, str(path))
    except Exception as error:  # noqa: BLE001 - tracking must never fail a collect
        log.warning("leaderboard not mirrored to MLflow at %s (%s: %s)", uri, type(error).__name__, error)


def make_sink(cfg: Mapping[str, Any], results_dir: Path, experiment: str) -> Sink:
    """The sink named by ``cfg.name`` (``sqlite``/``mlflow`` or ``none``)."""
    from bench.errors import BenchError

    name = cfg.get("name", "sqlite")
    if name == "none":
        return NullSink()
    if name in ("sqlite", "mlflow"):
        return MlflowSink(tracking_uri(cfg.get("uri"), results_dir), experiment)
    raise BenchError(f"unknown tracking {name!r}; valid: sqlite, mlflow, none")
