"""RunRecord: the schema-versioned ``record.json`` every run writes; the source of truth.

Layout of a run directory ``<results>/runs/<experiment>/<run_key>/``::

    record.json    this record (atomic write)
    episodes.csv   per-episode accuracies, one column per readout
    config.yaml    the resolved config
    done           written last; a directory without it is not a finished run
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.atomic import atomic_write_json, atomic_write_text, is_done
from bench.legacy import legacy_switches

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: The top-level config sections that determine a run's numbers (its run key hashes them, less
#: their ``description``s, plus the device type); everything else (experiment, paths, tracking,
#: threads, force) is presentation or plumbing.
IDENTITY_KEYS = ("dataset", "zoo", "method", "task", "seed", "budget", "eval", "profile")


@dataclass
class RunRecord:
    """One run: what was asked, on what, what came out, how fast.

    ``metrics`` maps a readout name (``steps_1``, ``steps_10``) to mean/std/ci95/n of the per-episode
    query accuracies (%) in ``per_episode``; ``primary_readout`` names the one reported as ``acc_mean``.
    """

    run_key: str
    experiment: str
    method: str
    data_free: bool
    status: str
    setting: dict[str, Any]
    config: dict[str, Any]
    choices: dict[str, str]
    seeds: dict[str, int]
    hashes: dict[str, Any]
    environment: dict[str, Any]
    #: What real data meta-training saw: ``none``, ``meta_val`` (episodes), ``meta_train`` (oracle).
    #: Empty in records written before the field existed (read ``data_free`` then).
    real_data: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    primary_readout: str = ""
    per_episode: dict[str, list[float]] = field(default_factory=dict)
    throughput: dict[str, Any] = field(default_factory=dict)
    zoo: dict[str, Any] = field(default_factory=dict)
    train_stats: dict[str, Any] = field(default_factory=dict)
    ci_method: str = ""
    #: Labelled extra numbers, e.g. ``acc_test_best_of_evals`` (reference-style selection on test).
    extra_metrics: dict[str, float] = field(default_factory=dict)
    #: Files the method produced (paths relative to the run directory), mirrored to MLflow.
    artifacts: list[str] = field(default_factory=list)
    transductive: bool = False
    #: Reference-code behaviours switched on (``bench.legacy``); empty = the method as specified.
    legacy: list[str] = field(default_factory=list)
    started_at: str = ""
    finished_at: str = ""
    error: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def real_data_use(self) -> str:
        """``real_data``, or for records older than that field what ``data_free`` implies."""
        return self.real_data or ("none" if self.data_free else "meta_train")

    @property
    def legacy_use(self) -> list[str]:
        """``legacy``, or for records older than that field the switches their config turns on."""
        return self.legacy or legacy_switches(self.config.get("method") or {})

    @property
    def acc_mean(self) -> float:
        """Mean accuracy (%) of the primary readout."""
        return self.metrics[self.primary_readout]["mean"]

    @property
    def acc_ci95(self) -> float:
        """95% CI half-width of the primary readout."""
        return self.metrics[self.primary_readout]["ci95"]

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def readout_name(steps: int) -> str:
    """Metric key of a readout: ``steps_10``."""
    return f"steps_{steps}"


def episodes_csv(record: RunRecord) -> str:
    """Per-episode accuracies as CSV text: ``episode,steps_1,steps_10``."""
    names = sorted(record.per_episode, key=lambda n: int(n.split("_")[1]))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["episode", *names])
    for index, row in enumerate(zip(*(record.per_episode[n] for n in names), strict=True)):
        writer.writerow([index, *(f"{v:.4f}" for v in row)])
    return buffer.getvalue()


#: Written beside a record once it is in an MLflow store (see ``bench.tracking``).
MLFLOW_MARKER = "mlflow_run.json"


def write_record(run_dir: Path, record: RunRecord, config_yaml: str) -> None:
    """Write config, episodes and record atomically, then the ``done`` marker (last).

    Files of a previous record in ``run_dir`` that this one would not replace go first: its
    ``episodes.csv`` (a failed record has none) and its MLflow marker (the new record is not in
    the store until it is uploaded).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "done").unlink(missing_ok=True)
    (run_dir / MLFLOW_MARKER).unlink(missing_ok=True)
    if not record.per_episode:
        (run_dir / "episodes.csv").unlink(missing_ok=True)
    atomic_write_text(run_dir / "config.yaml", config_yaml)
    if record.per_episode:
        atomic_write_text(run_dir / "episodes.csv", episodes_csv(record))
    atomic_write_json(run_dir / "record.json", record.to_json())
    atomic_write_text(run_dir / "done", "ok\n")


def read_record(path: Path) -> RunRecord:
    """Load one ``record.json``; raises ValueError on a schema mismatch or missing keys."""
    data = json.loads(Path(path).read_text())
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {data.get('schema_version')} != {SCHEMA_VERSION}")
    return RunRecord(**data)


def finished_run(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a finished, successful run (a failed one is retried)."""
    if not (is_done(run_dir) and (run_dir / "record.json").is_file()):
        return False
    try:
        return json.loads((run_dir / "record.json").read_text()).get("status") == "ok"
    except json.JSONDecodeError:
        return False


def read_records(root: Path) -> list[RunRecord]:
    """Every finished record under ``root`` (recursively), sorted by run key; bad ones are skipped."""
    records = []
    for path in sorted(Path(root).rglob("record.json")):
        if not is_done(path.parent):
            continue
        try:
            records.append(read_record(path))
        except (ValueError, TypeError, json.JSONDecodeError) as error:
            log.warning("skipping unreadable record %s: %s", path, error)
    return sorted(records, key=lambda r: (r.experiment, r.run_key))
