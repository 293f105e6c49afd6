"""dfml-collect: run records -> results/leaderboards/<experiment>.{csv,md,png}."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.leaderboard import REFERENCE, base_method, latex_table, write_leaderboard
from bench.method import check_reference_methods
from bench.records import read_records
from bench.sweep_cells import sweep_cells

log = logging.getLogger(__name__)


def collect_experiment(
    results: Path,
    experiment: str,
    reference: str | None = None,
    carry: bool = True,
    strict_reference: bool = False,
    records: list | None = None,
) -> tuple[pd.DataFrame, str]:
    """Build the leaderboard of one experiment from its records under ``results/runs``.

    ``reference`` defaults to the experiment YAML's ``experiment.reference`` (as the end-of-sweep
    callback uses), else ``random_init``. The YAML's ``experiment.compare_to`` (a list of methods)
    adds paired differences to each of them beside the ones to ``reference``.
    A reference that is not a registered method is refused. ``strict_reference`` (one typed for
    this table: ``dfml-collect --reference``) also refuses one that no record or carried row has;
    otherwise a reference not run yet (a sweep of purer alone) gives a table without differences.
    """
    if records is None:  # ``records``: already read by the caller (dfml-collect checks them first)
        records = read_records(results / "runs" / experiment)
    spec = experiment_yaml(experiment)
    if reference is None:
        reference = str((spec.get("experiment") or {}).get("reference") or REFERENCE)
    check_reference_methods([reference, *compare_to_of(spec)])
    if strict_reference:
        carried = results / "leaderboards" / f"{experiment}.csv" if carry else None
        check_reference(reference, records, carried)
    params = ((spec.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    expected = [m.strip() for m in str(params.get("method") or "").split(",") if m.strip()]
    compare_to = compare_to_of(spec)
    return write_leaderboard(
        records,
        results / "leaderboards",
        experiment,
        reference,
        spec.get("paper"),
        expected,
        compare_to,
        carry,
        sweep_cells(params),
    )


def compare_to_of(spec: dict) -> list[str]:
    """The experiment YAML's ``experiment.compare_to``: more methods for paired differences."""
    return [str(m) for m in ((spec.get("experiment") or {}).get("compare_to") or [])]


def check_reference(reference: str, records: list, carried_csv: Path | None, experiment: str = "") -> None:
    """Raise unless ``reference`` is a method of the records (or of the carried table's rows).

    A mistyped ``--reference`` would otherwise rewrite the tables without any paired difference.
    """
    known = {r.method for r in records}
    if carried_csv is not None and carried_csv.is_file():
        # carried rows may be labelled (``random_init [numerics=native]``): their method is the base name
        known |= {base_method(name) for name in pd.read_csv(carried_csv)["method"].astype(str)}
    if known and reference not in known:
        from bench.method import METHODS
        from bench.registry import unknown_key_message

        if reference not in METHODS:  # a typo: suggest the close names
            raise BenchError(unknown_key_message("reference method", reference, sorted(known)))
        where = f"experiment {experiment} has" if experiment else "these records have"
        raise BenchError(
            f"{where} no rows of the reference method {reference!r}; its methods: {', '.join(sorted(known))}"
        )


def experiment_yaml(experiment: str) -> dict:
    """``bench/conf/experiment/<experiment>.yaml`` as written ({} if there is no such file)."""
    from importlib import resources

    import yaml

    path = resources.files("bench.conf") / "experiment" / f"{experiment}.yaml"
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def experiment_paper_block(experiment: str) -> dict | None:
    """The ``paper:`` block of ``bench/conf/experiment/<experiment>.yaml``, if any."""
    return experiment_yaml(experiment).get("paper")


def sync_mlflow(results: Path, experiment: str) -> tuple[int, int]:
    """Upload the experiment's records not yet in the MLflow store; (uploaded, failed)."""
    from bench.tracking import MlflowSink, ensure_store, tracking_uri

    sink = MlflowSink(tracking_uri(None, results), experiment)
    try:  # the store is opened (a SQLite file created) or reached once, before any upload
        ensure_store(sink.uri)
    except Exception as error:  # noqa: BLE001 - SQLAlchemy / MLflow / HTTP errors: the store is unusable
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BenchError(
            f"--sync-mlflow: cannot open the MLflow store {sink.uri} ({first}); point "
            "MLFLOW_TRACKING_URI at a working store (sqlite:///<file> or http://<host>:<port>), or move a "
            "damaged file aside"
        ) from None
    uploaded = failed = 0
    for record in read_records(results / "runs" / experiment):
        run_dir = results / "runs" / experiment / record.run_key
        if sink.holds(run_dir, record):  # the marker alone is not trusted: the store may be new
            continue
        if sink.log_record(record, run_dir):
            uploaded += 1
        else:
            failed += 1
    return uploaded, failed


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    parser = argparse.ArgumentParser(prog="dfml-collect", description=__doc__)
    parser.add_argument("experiments", nargs="*", help="experiment names (default: all with records)")
    parser.add_argument(
        "--results",
        default=os.environ.get("DFML_RESULTS") or "results",
        help="results directory (default: $DFML_RESULTS, else ./results)",
    )
    parser.add_argument(
        "--reference",
        default=None,
        help=f"method for paired differences (default: the experiment's reference, else {REFERENCE})",
    )
    parser.add_argument("--format", choices=("md", "csv", "latex"), default="md", help="what to print")
    parser.add_argument(
        "--no-carry",
        action="store_true",
        help="build each table from the records alone (default: keep the rows of the existing CSV "
        "that no record replaces, marked as carried)",
    )
    parser.add_argument(
        "--sync-mlflow",
        action="store_true",
        help="upload records missing from the MLflow store ($MLFLOW_TRACKING_URI or results/mlflow.db)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.results.strip():
        print("dfml-collect: error: --results is empty; give a results directory", file=sys.stderr)
        return 2
    results = Path(args.results).expanduser().resolve()
    runs = results / "runs"
    available = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    # A committed table whose records are not here (a fresh checkout) is rebuilt from its own rows.
    tables = results / "leaderboards"
    carried_only = (
        [] if args.no_carry or not tables.is_dir() else sorted(p.stem for p in tables.glob("*.csv"))
    )
    wanted = args.experiments or available
    unsynced = 0
    try:
        if not results.is_dir():
            raise BenchError(f"results directory {results} does not exist (--results or $DFML_RESULTS)")
        if not wanted:
            raise BenchError(f"no records under {runs}; run dfml-run first")
        # every name (and a typed --reference) is checked before any table is rewritten
        if args.reference is not None:
            check_reference_methods([args.reference])
        found: dict[str, list] = {}
        for name in wanted:
            if name not in available and name not in carried_only:
                from bench.registry import unknown_key_message

                known = sorted({*available, *carried_only})
                raise BenchError(unknown_key_message("experiment with records or a table", name, known))
            records = found[name] = read_records(runs / name) if name in available else []
            if not records and name not in carried_only:
                raise BenchError(
                    f"experiment {name} has no finished records under {runs / name} and no table to carry; "
                    f"run dfml-run experiment={name} first"
                )
            if args.reference is not None:
                carried = tables / f"{name}.csv" if not args.no_carry else None
                check_reference(args.reference, records, carried, name)
        for name in wanted:
            if args.sync_mlflow:
                uploaded, failed = sync_mlflow(results, name)
                print(f"{name}: {uploaded} run(s) uploaded to MLflow, {failed} still unreachable")
                unsynced += failed
            table, markdown = collect_experiment(  # names and reference were checked above
                results, name, args.reference, not args.no_carry, records=found[name]
            )
            log.info("%s: wrote %s.{csv,md,png}", name, results / "leaderboards" / name)
            if args.format == "latex":
                print(latex_table(table, name))
            else:
                print(markdown if args.format == "md" else table.to_csv(index=False, float_format="%.4f"))
    except BenchError as error:
        print(f"dfml-collect: error: {error}", file=sys.stderr)
        return 2
    if unsynced:
        print(
            f"dfml-collect: error: {unsynced} run(s) not uploaded to MLflow; run again to retry",
            file=sys.stderr,
        )
        return 1
    return 0
