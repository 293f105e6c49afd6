"""Records -> tidy DataFrame -> leaderboard CSV (numeric) and Markdown (formatted pivot).

A pure function of records: no server, no run directory other than ``record.json`` files.
Rows of the tidy table are (table, method, dataset, zoo, task, test_steps, profile), aggregated over
seeds (per-run CIs over episodes, averaged; ``n_seeds`` says how many). Paired differences against a
reference method (``random_init`` by default) are computed episode by episode on identical suites;
an experiment's ``compare_to`` methods (e.g. ``purer``) get further paired-difference columns
``delta_vs_<method>`` / ``delta_vs_<method>_ci95`` and sections.

Records of one method that share a setting but differ in configuration (an ablation run with
``method.adv.scale=1`` beside the default, a smoke run with ``eval.limit=50``) are never pooled:
each configuration gets its own row, named by the settings that tell them apart (see
:func:`row_names`).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.atomic import atomic_write_text
from bench.errors import BenchError
from bench.evaluate import CI_METHOD, paired_difference
from bench.records import IDENTITY_KEYS, RunRecord
from bench.sweep_cells import cell_status_line
from bench.tracking import flatten
from zoos.numerics import configured_numerics

GROUP = ["table", "method", "dataset", "zoo", "task", "test_steps", "profile"]
REFERENCE = "random_init"
log = logging.getLogger(__name__)

#: Config keys that can tell two runs' numbers apart: the run-key sections and the device (an
#: allowlist: a presentation key added to the experiment later, e.g. ``experiment.compare_to``,
#: must not split one method's rows between records made before and after it).
RESULT_KEYS = tuple(f"{k}." for k in IDENTITY_KEYS) + (
    "seed",
    "profile",
    "device.",
    "numerics",
    "meta_model.",
)
#: How a row name shows a key that a record's config does not have (the method's default applied).
UNSET = "default"
#: Config keys added after records were made, with the value the older records ran with.
ADDED_KEY_DEFAULTS = {
    "device.tf32": False,  # before 2026-11-27 no run used TF32 (CPU records)
    "numerics": configured_numerics(None),  # before 2026-12-07 every run used the CPU's native kernels
    "meta_model.global_pool": False,  # before 2026-12-07 no meta model pooled globally (MH included)
}


def _setting(record: RunRecord) -> tuple:
    """What a leaderboard cell of one method is: one record per (setting, seed, suite)."""
    s = record.setting
    return (
        s["dataset"],
        s["zoo"],
        s["task"],
        s.get("profile", "-"),
        record.seeds["root"],
        record.hashes["suite"],
    )


def row_names(
    records: Sequence[RunRecord],
    earlier: Mapping[str, str] | None = None,
    earlier_numerics: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Map each run key to its leaderboard row name: the method, plus what sets its config apart.

    Where several finished records of one method share a cell (same setting, seed and suite), the
    config keys whose values differ between them (``RESULT_KEYS`` ones, descriptions aside) are appended
    to every record of that method, e.g. ``purer [method.adv.scale=1.0]`` / ``purer
    [method.adv.scale=10.0]``, so that rows stay consistent across settings. Records whose configs
    do not differ (other code, same key inputs) are told apart by run key.

    ``earlier`` (run key -> row name in the previous CSV) keeps the labels of carried rows in
    force: where a committed row of a method without a record here (a carried sibling) is labelled
    ``method [k=v, ...]``, every record of the method is labelled by those keys too, each with its
    *own* config's values. Otherwise a re-run (or a new seed) would come out as a bare
    ``maml_oracle`` beside its carried ``maml_oracle [method.init=default]``. Once no labelled
    sibling is carried, the bare name returns. A run key with a record here, failed ones included,
    is not carried (``carry_rows`` drops its old row).

    Where an experiment's rows mix native and portable numerics (a table being re-made with
    ``numerics=portable``), every row names its numerics, so that a method run one way only is not
    read as the other. Carried rows count, with their numerics from ``earlier_numerics`` (run key
    -> the previous CSV's ``numerics`` column; native where it has none).
    """
    ok = [r for r in records if r.status == "ok"]
    recorded = {r.run_key for r in records}
    carried_kinds = {
        (earlier_numerics or {}).get(key, ADDED_KEY_DEFAULTS["numerics"])
        for key in (earlier or {})
        if key not in recorded
    }
    numerics: dict[str, set[str]] = defaultdict(lambda: set(carried_kinds))
    for r in ok:
        numerics[r.experiment].add(configured_numerics(r.config))
    by_method: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    # a run with reference bugs switched on is a different row from the start
    names = {r.run_key: r.method + _legacy_label(r.legacy_use) for r in ok}
    for r in ok:
        by_method[(r.experiment, names[r.run_key])].append(r)
    carried = [name for key, name in (earlier or {}).items() if key not in recorded]  # rows without a record
    for (_, method), group in by_method.items():
        flat = {r.run_key: {**ADDED_KEY_DEFAULTS, **flatten(r.config)} for r in group}
        cells: dict[tuple, list[RunRecord]] = defaultdict(list)
        for r in group:
            cells[_setting(r)].append(r)
        keys: set[str] = set()
        for members in cells.values():
            if len(members) > 1:
                union = set().union(*(flat[r.run_key] for r in members))
                keys |= {k for k in union if len({repr(flat[r.run_key].get(k)) for r in members}) > 1}
        keys = {k for k in keys if k.startswith(RESULT_KEYS) and not k.endswith(".description")}
        keys |= _label_keys(method, carried)
        if len(numerics[group[0].experiment]) > 1:
            keys.add("numerics")
        for r in group:
            if keys:
                names[r.run_key] = (
                    f"{method} ["
                    + ", ".join(f"{k}={flat[r.run_key].get(k, UNSET)}" for k in sorted(keys))
                    + "]"
                )
        for members in cells.values():
            if len({names[r.run_key] for r in members}) < len(members):
                for r in members:
                    names[r.run_key] = f"{names[r.run_key]} [run {r.run_key}]"
    return names


def _label_keys(method: str, names: Sequence[str]) -> set[str]:
    """The config keys that the labels ``method [k=v, ...]`` among ``names`` name (``RESULT_KEYS`` only).

    Labels of other methods, run-key labels (``[run ...]``) and labels naming any key outside
    ``RESULT_KEYS`` give none.
    """
    keys: set[str] = set()
    prefix = method + " ["
    for name in names:
        if not (name.startswith(prefix) and name.endswith("]")) or " [" in name[len(prefix) :]:
            continue
        found = re.findall(r"(?:^|, )([A-Za-z_][\w.]*)=", name[len(prefix) : -1])
        if found and all(k.startswith(RESULT_KEYS) and not k.endswith(".description") for k in found):
            keys |= set(found)
    return keys


def base_method(name: str) -> str:
    """The registry name of a row name (``purer [method.adv.scale=1.0]`` -> ``purer``)."""
    return name.split(" [", 1)[0]


def _rows(records: Sequence[RunRecord], names: dict[str, str]) -> list[dict[str, object]]:
    rows = []
    for record in records:
        if record.status != "ok":
            continue
        if record.ci_method != CI_METHOD:  # a table averages CIs across records: one definition
            raise BenchError(
                f"record {record.experiment}/{record.run_key} gives CIs as {record.ci_method!r}; this "
                f"leaderboard's are {CI_METHOD!r}: re-run it (same command, force=true) or keep it out of "
                "this results directory"
            )
        for readout, summary in record.metrics.items():
            rows.append(
                {
                    "table": record.experiment,
                    "method": names[record.run_key],
                    "data_free": record.data_free,
                    "real_data": record.real_data_use,
                    "external_model": bool(record.train_stats.get("uses_external_model", 0.0)),
                    "legacy": ";".join(record.legacy_use),
                    "dataset": record.setting["dataset"],
                    "zoo": record.setting["zoo"],
                    "task": record.setting["task"],
                    "test_steps": int(readout.split("_")[1]),
                    "profile": record.setting.get("profile", "-"),
                    "seed": record.seeds["root"],
                    "suite_hash": record.hashes["suite"],
                    "acc_mean": summary["mean"],
                    "acc_ci95": summary["ci95"],
                    "n_episodes": int(summary["n"]),
                    "episodes_per_s": record.throughput.get("eval_episodes_per_s", float("nan")),
                    "run_key": record.run_key,
                    "zoo_build": str(record.hashes.get("zoo_weights") or "")[:12],
                    "numerics": configured_numerics(record.config),
                    "readout": readout,
                }
            )
    return rows


def _paired(
    records: Sequence[RunRecord], reference: str, names: dict[str, str]
) -> dict[tuple, dict[str, float]]:
    """Group key -> paired difference to ``reference`` pooled over matching (seed, suite) runs.

    Each value: ``mean``, ``ci95`` (see :func:`bench.stats.paired_difference`) and ``n_seeds``, the
    seeds of the row that found a reference run of their own seed (can be fewer than the row's).

    A record is paired only with reference runs of its own numerics (native and portable runs
    differ by float order in every episode, which is not the method's effect), and that reference
    must have exactly one finished configuration in the cell (else, ambiguous, no
    difference is computed for that cell); runs whose episode counts differ are not paired.
    ``names``: :func:`row_names` of ``records``.
    """
    references: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in records:
        if r.status == "ok" and r.method == reference:
            references[(r.experiment, *_setting(r), configured_numerics(r.config))].append(r)
    # group -> suite -> per-seed (method, reference) episode lists
    pooled: dict[tuple, dict[str, list[tuple[list[float], list[float]]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    paired_seeds: dict[tuple, set] = defaultdict(set)
    for record in records:
        if record.status != "ok" or record.method == reference:
            continue
        candidates = references.get(
            (record.experiment, *_setting(record), configured_numerics(record.config)), []
        )
        if len(candidates) != 1:
            if len(candidates) > 1:
                log.warning(
                    "%s: %d configurations of the reference %s in one cell (%s); no paired difference",
                    names[record.run_key],
                    len(candidates),
                    reference,
                    ", ".join(sorted(c.run_key for c in candidates)),
                )
            continue
        (ref,) = candidates
        for readout, values in record.per_episode.items():
            if readout in ref.per_episode and len(values) == len(ref.per_episode[readout]):
                group = (
                    record.experiment,
                    names[record.run_key],
                    record.setting["dataset"],
                    record.setting["zoo"],
                    record.setting["task"],
                    int(readout.split("_")[1]),
                    record.setting.get("profile", "-"),
                )
                pooled[group][record.hashes["suite"]].append((values, ref.per_episode[readout]))
                paired_seeds[group].add(record.seeds["root"])
    return {
        group: {**paired_difference(*_seed_means(suites)), "n_seeds": len(paired_seeds[group])}
        for group, suites in pooled.items()
    }


def _seed_means(suites: dict[str, list[tuple[list[float], list[float]]]]) -> tuple[list[float], list[float]]:
    """Per episode, the mean over seeds that share its suite; suites' episodes are concatenated.

    Seeds evaluated on one suite see the same episodes, so they are not independent samples: the
    CI of a difference is over episodes of the seed-averaged accuracies (a repeated seed adds no
    information and leaves the CI as it was).
    """

    def mean_over_seeds(lists: list[list[float]]) -> list[float]:
        counts = sorted({len(values) for values in lists})
        if len(counts) > 1:
            raise BenchError(
                f"seeds evaluated on one suite have different episode counts {counts} "
                "(a run with eval.limit beside full runs under one row name); re-run them alike, or keep "
                "the eval.limit runs in another results directory"
            )
        return [sum(column) / len(lists) for column in zip(*lists, strict=True)]

    methods, references = [], []
    for runs in suites.values():
        methods += mean_over_seeds([a for a, _ in runs])
        references += mean_over_seeds([b for _, b in runs])
    return methods, references


def tidy_table(
    records: Sequence[RunRecord],
    reference: str = REFERENCE,
    compare_to: Sequence[str] = (),
    earlier_names: Mapping[str, str] | None = None,
    earlier_numerics: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One numeric row per (table, method, dataset, zoo, task, test_steps, profile).

    ``compare_to``: further methods to pair every row with (columns ``delta_vs_<m>``, ``..._ci95``);
    ``earlier_names`` / ``earlier_numerics``: run key -> row name / numerics of a previous CSV (see
    :func:`row_names`).
    """
    extra = [m for m in dict.fromkeys(compare_to) if m != reference]
    columns = [
        *GROUP,
        "data_free",
        "real_data",
        "external_model",
        "legacy",
        "numerics",
        "acc_mean",
        "acc_ci95",
        "n_episodes",
        "n_seeds",
        "episodes_per_s",
        "reference",
        "delta_vs_reference",
        "delta_ci95",
        "delta_n_seeds",
        *(column for m in extra for column in delta_columns(m)),
        "run_keys",
        "zoo_builds",  # member weights sha256[:12] of the records behind the row ('' before the field)
    ]
    names = row_names(records, earlier_names, earlier_numerics)
    rows = _rows(records, names)
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    table = (
        frame.groupby(GROUP, sort=False)
        .agg(
            data_free=("data_free", "all"),
            real_data=("real_data", "first"),
            external_model=("external_model", "any"),
            legacy=("legacy", "first"),  # the row name carries the switches: one value per group
            numerics=("numerics", "first"),  # mixed numerics are named in the row name: one value
            acc_mean=("acc_mean", "mean"),
            acc_ci95=("acc_ci95", "mean"),
            n_episodes=("n_episodes", "min"),
            n_seeds=("seed", "nunique"),
            episodes_per_s=("episodes_per_s", "mean"),
            run_keys=("run_key", lambda keys: ";".join(sorted(set(keys)))),
            zoo_builds=("zoo_build", lambda builds: ";".join(sorted({b for b in builds if b}))),
        )
        .reset_index()
    )
    paired = _paired(records, reference, names)
    deltas = [paired.get(tuple(row[g] for g in GROUP)) for _, row in table.iterrows()]
    table["reference"] = reference
    table["delta_vs_reference"] = [d["mean"] if d else float("nan") for d in deltas]
    table["delta_ci95"] = [d["ci95"] if d else float("nan") for d in deltas]
    table["delta_n_seeds"] = [d["n_seeds"] if d else float("nan") for d in deltas]
    for method in extra:
        paired = _paired(records, method, names)
        deltas = [paired.get(tuple(row[g] for g in GROUP)) for _, row in table.iterrows()]
        value, ci, seeds = delta_columns(method)
        table[value] = [d["mean"] if d else float("nan") for d in deltas]
        table[ci] = [d["ci95"] if d else float("nan") for d in deltas]
        table[seeds] = [d["n_seeds"] if d else float("nan") for d in deltas]
    return _finish(table, reference, extra, columns)


def delta_columns(method: str | None = None) -> tuple[str, str, str]:
    """(difference, its ci95, its seed count) columns: to the reference (``None``) or to ``method``."""
    if method is None:
        return "delta_vs_reference", "delta_ci95", "delta_n_seeds"
    return f"delta_vs_{method}", f"delta_vs_{method}_ci95", f"delta_vs_{method}_n_seeds"


def _finish(
    table: pd.DataFrame, reference: str, extra: Sequence[str], columns: Sequence[str]
) -> pd.DataFrame:
    """Add the dataset averages and put the rows in leaderboard order."""
    averages = dataset_averages(table, extra)
    if not averages.empty:
        table = pd.concat([table, averages], ignore_index=True)
    table["_order"] = table["method"].map(lambda m: _method_rank(m, table, reference))
    table = table.sort_values(["_order", "method", "dataset", "zoo", "task", "test_steps"])
    return table.drop(columns="_order")[list(columns)].reset_index(drop=True)


#: Values for columns an older leaderboard CSV may lack.
CSV_DEFAULTS = {
    "data_free": True,
    "real_data": "none",
    "external_model": False,
    "legacy": "",
    "numerics": ADDED_KEY_DEFAULTS["numerics"],  # CSVs from before the column: every run was native
    "zoo_builds": "",
}


def carry_rows(
    table: pd.DataFrame,
    previous: pd.DataFrame,
    reference: str,
    extra: Sequence[str],
    record_keys: set[str] = frozenset(),
) -> pd.DataFrame:
    """``table`` plus the rows of an earlier leaderboard CSV (``previous``) that nothing replaces.

    A previous row is dropped when ``table`` has a row with its ``GROUP`` (table, row name,
    dataset, zoo, task, readout, profile), or when any of its run keys is in ``record_keys`` (the
    run keys of every record being collected, failed ones included: a renamed or failed re-run
    of the same run must not leave the old numbers beside it). Carried rows keep their numbers;
    their paired differences are kept only where they were taken to the same methods and the
    partner row is carried too or barely moved (a carried row paired with another reference, or
    with a partner a new record has replaced and moved, shows none; see
    :func:`_blank_stale_carried_differences`, whose notes go to the rows' ``REMADE_COLUMN``). Dataset
    averages are recomputed. ``previous["numerics"]`` holds its rows' numerics (see
    :func:`_previous_numerics`; ``write_leaderboard`` fills it). Where the rows then mix numerics,
    carried rows named without theirs get it (``free`` -> ``free [numerics=native]``), as
    :func:`row_names` names the records' rows.
    """
    if previous.empty:
        return table
    previous = previous.copy()
    for column, default in CSV_DEFAULTS.items():
        previous[column] = (
            previous[column].astype(object).where(previous[column].notna(), default)
            if column in previous
            else default
        )
    previous = previous[~previous["dataset"].astype(str).str.startswith(AVERAGE_PREFIX)]
    previous["test_steps"] = previous["test_steps"].astype(int)
    current = table[~table["dataset"].astype(str).str.startswith(AVERAGE_PREFIX)]
    rerun = [bool(set(_split(keys)) & record_keys) for keys in previous["run_keys"]]
    kinds = set(current["numerics"].astype(str)) | set(previous.loc[[not r for r in rerun], "numerics"])
    if len(kinds) > 1:
        previous["method"] = [
            _with_numerics_label(str(m), str(k))
            for m, k in zip(previous["method"], previous["numerics"], strict=True)
        ]
    have = {tuple(row) for row in current[GROUP].astype(str).itertuples(index=False)}
    replaced = [
        tuple(row) in have or again
        for row, again in zip(previous[GROUP].astype(str).itertuples(index=False), rerun, strict=True)
    ]
    keep = previous[[not r for r in replaced]].copy()
    if keep.empty:
        return table
    if "reference" in keep:  # deltas to another reference are not this table's
        other = keep["reference"].astype(str) != reference
        keep.loc[other, [c for c in delta_columns() if c in keep]] = float("nan")
        keep["reference"] = reference
    merged = pd.concat([current.assign(carried=False), keep.assign(carried=True)], ignore_index=True)
    columns = [*table.columns, *([] if REMADE_COLUMN in table else [REMADE_COLUMN]), "carried"]
    for column in columns:  # an older CSV may lack a column added since (e.g. a compare_to delta)
        if column not in merged:
            merged[column] = float("nan")
    merged[REMADE_COLUMN] = merged[REMADE_COLUMN].astype(object)
    merged["carried"] = merged["carried"].astype(bool)
    for column in ("data_free", "external_model"):
        merged[column] = merged[column].astype(bool)
    numeric = [c for c in columns if c.startswith(("acc_", "delta_", "episodes_per_s", "n_", "test_steps"))]
    merged[numeric] = merged[numeric].apply(pd.to_numeric)  # a records-less table starts as objects
    _blank_stale_carried_differences(merged, previous, reference, extra)
    return _finish(merged, reference, extra, columns)


def _blank_stale_carried_differences(
    merged: pd.DataFrame, previous: pd.DataFrame, reference: str, extra: Sequence[str]
) -> None:
    """Blank carried rows' paired differences whose partner row was re-made; note it on those rows.

    A carried difference was taken against the partner's earlier record (``previous``). While the
    partner is carried too, both rows shown are the ones paired. When a new record replaces the
    partner (a re-run; even under the same run key the means move with host and code: 10-step
    fine-tunes amplify float-order differences), the carried difference is kept only if the
    partner's mean moved by at most half its earlier 95% CI half-width (float-order noise, e.g.
    a random_init re-run: 0.16 against ±0.8) and blanked otherwise; either way a note naming the
    partner's earlier and current mean goes into the affected rows' ``REMADE_COLUMN`` (the footer
    reads it there). Decision and note are written into the CSV (a blanked difference stays blank),
    so only the first collect after the re-run can make them, and it needs the earlier partner row
    in ``previous``. The partner is the row of the partner method (whatever its label) with the
    carried row's numerics and episode count (``random_init [numerics=native]`` for ``free
    [numerics=native]``); where that is not one row, the difference is blanked. Edits ``merged`` in
    place.
    """

    def setting_keys(frame: pd.DataFrame) -> pd.Series:
        steps = frame["test_steps"].astype(int).astype(str)
        return (
            frame[["dataset", "zoo", "task"]]
            .astype(str)
            .assign(s=steps, p=frame["profile"].astype(str))
            .apply(tuple, axis=1)
        )

    keys, old_keys = setting_keys(merged), setting_keys(previous)
    # a row was paired with the partner run of its own numerics and episode count
    kinds = merged["numerics"].astype(str) + "/" + merged["n_episodes"].astype(int).astype(str)
    old_kinds = previous["numerics"].astype(str) + "/" + previous["n_episodes"].astype(int).astype(str)
    bases, old_bases = merged["method"].map(base_method), previous["method"].map(base_method)
    carried = merged["carried"]
    columns = [(reference, *delta_columns()), *((m, *delta_columns(m)) for m in extra)]
    several_settings = merged["dataset"].nunique() > 1 or merged["zoo"].nunique() > 1
    for partner, value, ci, seeds in columns:
        if value not in merged:
            continue
        with_value = carried & merged[value].notna()
        for key, kind in sorted(set(zip(keys[with_value], kinds[with_value], strict=True))):
            here = (bases == partner) & (keys == key) & (kinds == kind)
            if (here & carried).any():
                continue  # paired with the same, carried partner row
            before = previous[(old_bases == partner) & (old_keys == key) & (old_kinds == kind)]
            now = merged.loc[here & ~carried, "acc_mean"]
            shift = None
            if len(now) == 1 and len(before) == 1:  # several: which one was paired is not known
                shift = abs(float(now.iloc[0]) - float(before["acc_mean"].iloc[0]))
            tolerated = shift is not None and shift <= 0.5 * float(before["acc_ci95"].iloc[0])
            affected = with_value & (keys == key) & (kinds == kind)
            if not tolerated:
                merged.loc[affected, [c for c in (value, ci, seeds) if c in merged]] = float("nan")
            if shift is not None and shift > 1e-3:  # a later collect compares a record with itself
                # (the CSV keeps 4 decimals): nothing to say
                label = f"{key[2]} · {key[3]} step{'s' if key[3] != '1' else ''}"
                if several_settings:
                    label = f"{key[0]} · {key[1]} · {label}"
                verdict = "kept (within half its CI)" if tolerated else "blanked"
                name = str(merged.loc[here & ~carried, "method"].iloc[0])
                note = (
                    f"`{name}` {label} was re-made ({float(before['acc_mean'].iloc[0]):.1f} → "
                    f"{float(now.iloc[0]):.1f}); carried rows' differences to it {verdict}."
                )
                # kept on the rows themselves, so later collects still say why a difference is blank
                earlier = merged.loc[affected, REMADE_COLUMN]
                joined = [NOTE_SEPARATOR.join([*_row_notes(o), note]) for o in earlier]
                merged.loc[affected, REMADE_COLUMN] = joined


def _previous_numerics(previous: pd.DataFrame) -> pd.Series:
    """Each row's numerics in a previous leaderboard CSV.

    From its ``numerics`` column; in a CSV from before that column, from the row name's
    ``numerics=...`` label (a table that mixed numerics named them), else native (every run before
    portable numerics existed was native).
    """
    named = previous["method"].astype(str).str.extract(r"[\[ ]numerics=(\w+)", expand=False)
    kinds = (
        previous["numerics"].where(previous["numerics"].notna(), named) if "numerics" in previous else named
    )
    return kinds.fillna(CSV_DEFAULTS["numerics"]).astype(str)


def _with_numerics_label(name: str, numerics: str) -> str:
    """``name`` naming its ``numerics``; a name that names them stays as it is.

    ``free`` -> ``free [numerics=native]``; ``purer [method.init=average]`` -> ``purer
    [method.init=average, numerics=native]``; ``tds [run 0a1b]`` -> ``tds [numerics=native] [run 0a1b]``.
    """
    if re.search(r"[\[ ]numerics=", name):
        return name
    base = base_method(name)
    rest = name[len(base) :]
    label = re.match(r" \[([^\]]*)\]", rest)
    if label and "=" in label.group(1) and not label.group(1).startswith("run "):
        entries = sorted([*label.group(1).split(", "), f"numerics={numerics}"], key=lambda e: e.split("=")[0])
        return f"{base} [{', '.join(entries)}]{rest[label.end() :]}"
    return f"{base} [numerics={numerics}]{rest}"


#: CSV column of carried rows: the notes of :func:`_blank_stale_carried_differences` that concern them.
REMADE_COLUMN = "partner_remade"
NOTE_SEPARATOR = " | "


def _row_notes(cell: object) -> list[str]:
    """The notes in one ``REMADE_COLUMN`` cell (empty for NaN or "")."""
    return [n for n in str(cell).split(NOTE_SEPARATOR) if n] if isinstance(cell, str) else []


def _remade_lines(table: pd.DataFrame) -> list[str]:
    """Footer lines for partner rows re-made under carried rows (see ``carry_rows``).

    Read from the carried rows' ``REMADE_COLUMN``, in order of first appearance: a note lasts as long
    as a carried row it concerns (not only for the collect that made it).
    """
    if REMADE_COLUMN not in table:
        return []
    notes = list(dict.fromkeys(n for cell in table[REMADE_COLUMN] for n in _row_notes(cell)))
    if not notes:
        return []
    return ["Re-made rows that carried rows were paired with:", "", *(f"- {n}" for n in notes), ""]


def carried_lines(table: pd.DataFrame, records: Sequence[RunRecord] = ()) -> list[str]:
    """Footer lines naming the rows carried over from an earlier CSV (see :func:`carry_rows`).

    They name the zoo builds behind the carried rows (where their CSV recorded them) and say when
    one is not a build of ``records`` (the table's records): those rows come from other member
    weights than the rows beside them.
    """
    if "carried" not in table or not table["carried"].fillna(False).astype(bool).any():
        return []
    carried = table[table["carried"].fillna(False).astype(bool)]
    cells = sorted({f"`{m}` {t}" for m, t in zip(carried["method"], carried["task"], strict=True)})
    keys = sorted({k for keys in carried["run_keys"].astype(str) for k in _split(keys)})
    line = (
        f"Carried over from the previous table (their records are not in this results directory; "
        f"numbers as collected then): {', '.join(cells)}; run keys {', '.join(keys)}"
    )
    builds: dict[str, set[str]] = defaultdict(set)
    for zoo, named in zip(carried["zoo"].astype(str), carried["zoo_builds"], strict=True):
        builds[zoo] |= set(_split(named))
    recorded: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.status == "ok" and r.hashes.get("zoo_weights"):
            recorded[str(r.setting.get("zoo"))].add(str(r.hashes["zoo_weights"])[:12])
    named = {zoo: found for zoo, found in builds.items() if found}
    if named:
        line += "; zoo builds " + "; ".join(f"`{z}` {', '.join(sorted(b))}" for z, b in sorted(named.items()))
        other = sorted({b for z, found in named.items() if recorded.get(z) for b in found - recorded[z]})
        if other:
            line += (
                f" ({', '.join(other)} is not a build of this table's records: those carried rows come "
                "from other member weights than the rows beside them)"
            )
    return [line + ".", ""]


def _split(joined: object) -> list[str]:
    """The entries of a ``;``-joined CSV cell (``run_keys``, ``zoo_builds``); none for a blank one."""
    if not isinstance(joined, str):
        return []
    return [entry for entry in joined.split(";") if entry]


AVERAGE_PREFIX = "average over "


def dataset_averages(table: pd.DataFrame, compare_to: Sequence[str] = ()) -> pd.DataFrame:
    """Rows averaging each (method, task, readout) over the datasets of a multi-dataset (MH) table.

    Only for (table, zoo, profile) groups evaluated on >= 2 datasets, and only for methods that have
    every dataset. The datasets' suites are independent, so the CI of the mean is
    sqrt(sum ci_d^2) / n_datasets (same for the paired difference; missing where any dataset's
    difference is missing, never an average of the ones present). ``dataset`` is
    ``average over <d1>, <d2>``.
    """
    rows = []
    for (name, zoo, profile), part in table.groupby(["table", "zoo", "profile"], sort=False):
        datasets = sorted(set(part["dataset"]))
        if len(datasets) < 2:
            continue
        for (method, task, steps), cells in part.groupby(["method", "task", "test_steps"], sort=False):
            if sorted(cells["dataset"]) != datasets:
                continue
            k = len(datasets)
            rows.append(
                {
                    "table": name,
                    "method": method,
                    "dataset": AVERAGE_PREFIX + ", ".join(datasets),
                    "zoo": zoo,
                    "task": task,
                    "test_steps": steps,
                    "profile": profile,
                    "data_free": bool(cells["data_free"].all()),
                    "real_data": cells["real_data"].iloc[0],
                    "external_model": bool(cells["external_model"].any()),
                    "legacy": cells["legacy"].iloc[0],
                    "numerics": cells["numerics"].iloc[0],
                    "acc_mean": cells["acc_mean"].mean(),
                    "acc_ci95": (cells["acc_ci95"] ** 2).sum() ** 0.5 / k,
                    "n_episodes": int(cells["n_episodes"].min()),
                    "n_seeds": int(cells["n_seeds"].min()),
                    "episodes_per_s": cells["episodes_per_s"].mean(),
                    "reference": cells["reference"].iloc[0],
                    "delta_vs_reference": cells["delta_vs_reference"].mean(skipna=False),
                    "delta_ci95": (cells["delta_ci95"] ** 2).sum(min_count=k) ** 0.5 / k,
                    "delta_n_seeds": cells["delta_n_seeds"].min(skipna=False),
                    "run_keys": ";".join(sorted(set(";".join(cells["run_keys"]).split(";")))),
                    "zoo_builds": ";".join(sorted({b for bs in cells["zoo_builds"] for b in _split(bs)})),
                    **{
                        column: cells[column].mean(skipna=False)
                        if suffix == ""
                        else (cells[column] ** 2).sum(min_count=k) ** 0.5 / k
                        for m in compare_to
                        for suffix, column in (("", f"delta_vs_{m}"), ("_ci95", f"delta_vs_{m}_ci95"))
                    },
                    **{
                        f"delta_vs_{m}_n_seeds": cells[f"delta_vs_{m}_n_seeds"].min(skipna=False)
                        for m in compare_to
                    },
                }
            )
    return pd.DataFrame(rows)


def _method_rank(method: str, table: pd.DataFrame, reference: str) -> int:
    """Sort rank of a row: the reference's rows first, data-free methods next, the rest last.

    Labelled reference rows (``random_init [numerics=portable]``) count as the reference.
    """
    if base_method(method) == reference:
        return 0
    data_free = bool(table.loc[table["method"] == method, "data_free"].all())
    return 1 if data_free else 2


def setting_label(task: str, steps: int) -> str:
    """Column header of a setting: ``5w1s · 1 step (paper)`` / ``5w5s · 10 steps``."""
    unit = "step" if steps == 1 else "steps"
    paper = " (paper)" if steps == 1 else ""
    return f"{task} · {steps} {unit}{paper}"


#: Row-label suffix per ``real_data`` value: what real data the method's meta-training saw.
REAL_DATA_LABEL = {
    "none": "",
    "meta_train": " (oracle: uses real data)",
    "meta_val": " (uses real meta-val episodes)",
}


#: Row-label suffix of a method whose meta-training used a model from outside the zoo (e.g. TGR
#: with a user-given similarity probe): not purely "learnt from the zoo" either.
EXTERNAL_MODEL_LABEL = " (uses an external model)"


def _row_label(method: str, real_data: str, external_model: bool = False) -> str:
    return method + REAL_DATA_LABEL[real_data] + (EXTERNAL_MODEL_LABEL if external_model else "")


def _legacy_label(switches: Sequence[str]) -> str:
    """Row-name suffix of a run with reference-code bugs switched on (``""`` for none)."""
    return f" (legacy: {', '.join(switches)})" if switches else ""


#: Marks a paired difference taken over fewer seeds than the row's accuracy (see :func:`_pivot`).
FEWER_SEEDS_MARK = "†"


def _pivot(table: pd.DataFrame, value: str, ci: str, signed: bool, seeds: str | None = None) -> pd.DataFrame:
    """Rows = row labels, columns = settings, cells ``mean ± ci`` (X where missing).

    ``seeds``: a difference's seed-count column; a cell whose difference covers fewer seeds than the
    row's ``n_seeds`` gets :data:`FEWER_SEEDS_MARK`.
    """
    settings = sorted(
        {(t, s) for t, s in zip(table["task"], table["test_steps"], strict=True)},
        key=lambda ts: (ts[0], ts[1]),
    )
    methods = list(
        dict.fromkeys(zip(table["method"], table["real_data"], table["external_model"], strict=True))
    )
    cells = {}
    for method, real_data, external_model in methods:
        row = {}
        for task, steps in settings:
            hit = table[
                (table["method"] == method)
                & (table["real_data"] == real_data)
                & (table["external_model"] == external_model)
                & (table["task"] == task)
                & (table["test_steps"] == steps)
            ]
            if hit.empty or pd.isna(hit.iloc[0][value]):
                row[setting_label(task, steps)] = "X"
            else:
                sign = "+" if signed else ""
                cell = f"{hit.iloc[0][value]:{sign}.1f} ± {hit.iloc[0][ci]:.1f}"
                paired = hit.iloc[0][seeds] if seeds and seeds in hit else float("nan")
                if pd.notna(paired) and int(paired) < int(hit.iloc[0]["n_seeds"]):
                    cell += f" {FEWER_SEEDS_MARK}{int(paired)}/{int(hit.iloc[0]['n_seeds'])}"
                row[setting_label(task, steps)] = cell
        cells[_row_label(method, real_data, external_model)] = row
    frame = pd.DataFrame.from_dict(cells, orient="index")
    frame.index.name = "method"
    return frame


def _sections(table: pd.DataFrame) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    """(dataset, zoo, profile) blocks in name order, dataset averages after the datasets."""
    groups = list(table.groupby(["dataset", "zoo", "profile"], sort=True))
    return sorted(groups, key=lambda item: (item[0][0].startswith(AVERAGE_PREFIX), item[0]))


def provenance_lines(records: Sequence[RunRecord]) -> list[str]:
    """Footer: failed runs (named, with their errors) and the code versions behind the numbers."""
    lines = []
    failed = [r for r in records if r.status != "ok"]
    if failed:
        lines += ["Failed runs (a record with status `failed`; their cells show X):", ""]
        for r in sorted(failed, key=lambda r: (r.method, r.run_key)):
            setting = " · ".join(str(r.setting.get(k, "-")) for k in ("dataset", "zoo", "task"))
            lines.append(f"- `{r.method}` {setting} (run `{r.run_key}`): {r.error}")
        lines.append("")
    # One group per zoo configuration (name + config key): a zoo override (n_members) is another
    # configuration, not another build; its name gets the config key when the name has several.
    configs: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.status == "ok":
            configs[str(r.setting.get("zoo"))].add(str(r.hashes.get("zoo") or ""))

    def group(r: RunRecord) -> str:
        name, key = str(r.setting.get("zoo")), str(r.hashes.get("zoo") or "")
        return f"{name} (config {key[:8] or 'not named'})" if len(configs[name]) > 1 else name

    builds: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    unnamed: dict[str, int] = defaultdict(int)  # records from before the field
    for r in records:
        if r.status == "ok" and r.hashes.get("zoo_weights"):
            builds[group(r)][str(r.hashes["zoo_weights"])[:12]] += 1
        elif r.status == "ok":
            unnamed[group(r)] += 1
    if builds:
        listed = "; ".join(
            f"`{zoo}` "
            + ", ".join(
                [f"{h} × {n}" for h, n in sorted(builds.get(zoo, {}).items(), key=lambda kv: -kv[1])]
                + ([f"not named × {unnamed[zoo]}"] if unnamed.get(zoo) else [])
            )
            for zoo in sorted(set(builds) | set(unnamed))
        )
        several = any(len(h) > 1 for h in builds.values())
        lines += [
            f"Zoo builds behind these records (member weights sha256 × records; 'not named': records"
            f" older than the field): {listed}."
            + (
                " More than one build of a zoo: its rows come from different member weights."
                if several
                else ""
            ),
            "",
        ]
    commits: dict[str, int] = defaultdict(int)
    for r in records:
        if r.status == "ok":
            commits[code_label(r.hashes)] += 1
    if commits:
        listed = ", ".join(f"{c} × {n}" for c, n in sorted(commits.items(), key=lambda kv: (-kv[1], kv[0])))
        lines += [f"Code behind these records (git commit × records): {listed}.", ""]
    resumed = sorted(r.run_key for r in records if r.status == "ok" and r.hashes.get("resumed_code"))
    if resumed:
        lines += [
            f"Runs that resumed work written by other code (named in each record's"
            f" hashes.resumed_code): {', '.join(resumed)}.",
            "",
        ]
    return lines


def code_label(hashes: dict[str, Any]) -> str:
    """A record's code as the footer names it: the short git sha (+ a checksum when dirty).

    For a tree with uncommitted changes it adds the first 8 hex of the source checksum
    (``code_sha256``, where the record has one), so two different dirty trees on one commit differ.
    """
    sha = str(hashes.get("git_sha") or "unknown")[:7]
    if not hashes.get("git_dirty"):
        return sha
    checksum = hashes.get("code_sha256")
    return f"{sha} (uncommitted changes" + (f", code {str(checksum)[:8]})" if checksum else ")")


def markdown_table(
    table: pd.DataFrame,
    title: str,
    expected: Sequence[str] = (),
    compare_to: Sequence[str] = (),
    footer: Sequence[str] = (),
    cells: Sequence[Mapping[str, str]] = (),
) -> str:
    """The formatted leaderboard: accuracy pivot, paired-difference pivots and a footer.

    ``expected``: the methods the experiment sweeps; those without any finished record are listed
    under the title (a partial table says what it lacks). ``cells``: the sweep's cells (see
    :func:`bench.sweep_cells.sweep_cells`); a line under the title counts those with results and
    names the missing ones. ``footer``: lines appended at the end (see :func:`provenance_lines`).
    """
    present = set() if table.empty else {base_method(m) for m in table["method"]}
    missing = [m for m in expected if m not in present]
    not_run = [
        "Not run yet (in the experiment's sweep, no finished record): "
        + ", ".join(f"`{m}`" for m in missing),
        "",
    ]
    status = cell_status_line(table, cells)
    if table.empty:
        text = f"# {title}\n\nNo finished runs.\n" + ("\n" + not_run[0] + "\n" if missing else "")
        return text + ("\n" + "\n".join(footer).rstrip() + "\n" if footer else "")
    # The cell line names every missing cell, methods never run included: it supersedes "Not run yet".
    summary = [status, ""] if status else (not_run if missing else [])
    lines = [f"# Leaderboard: {title}", "", *summary]
    for (dataset, zoo, profile), part in _sections(table):
        n_eps = sorted(set(part["n_episodes"].astype(int)))
        n_seeds = sorted(set(part["n_seeds"].astype(int)))
        lines += [
            f"## dataset `{dataset}` · zoo `{zoo}` · profile `{profile}`",
            "",
            f"Query accuracy (%), mean ± 95% CI over n = {', '.join(map(str, n_eps))} episodes "
            f"× {', '.join(map(str, n_seeds))} seed(s); X = missing run.",
            "",
            _pivot(part, "acc_mean", "acc_ci95", signed=False).to_markdown(),
            "",
        ]
        reference = part["reference"].iloc[0]
        is_reference = part["method"].map(base_method) == reference
        others = part[~is_reference]
        if not others.empty and others["delta_vs_reference"].notna().any():
            variants = part.loc[is_reference, "method"].str.contains("numerics=", regex=False).any()
            pairing = f"; each row against the `{reference}` row of its numerics" if variants else ""
            lines += [
                f"Paired difference to `{reference}` (same episodes{pairing}), mean ± 95% CI:",
                "",
                _pivot(others, *delta_columns()[:2], signed=True, seeds=delta_columns()[2]).to_markdown(),
                "",
            ]
        for method in compare_to:
            column = f"delta_vs_{method}"
            others = part[part["method"].map(base_method) != method]
            if column in part and not others.empty and others[column].notna().any():
                value, ci, seeds = delta_columns(method)
                lines += [
                    f"Paired difference to `{method}` (same episodes; negative = below {method}), "
                    "mean ± 95% CI:",
                    "",
                    _pivot(others, value, ci, signed=True, seeds=seeds).to_markdown(),
                    "",
                ]
    if any(FEWER_SEEDS_MARK in line for line in lines):
        lines += [
            f"{FEWER_SEEDS_MARK}k/n: this difference pools only the k of the row's n seeds whose partner "
            "row has a run of the same seed; the accuracy beside it averages all n.",
            "",
        ]
    lines += list(footer)
    return "\n".join(lines).rstrip() + "\n"


def write_leaderboard(
    records: Sequence[RunRecord],
    out_dir: Path,
    table_id: str,
    reference: str = REFERENCE,
    paper: dict | None = None,
    expected: Sequence[str] = (),
    compare_to: Sequence[str] = (),
    carry: bool = True,
    cells: Sequence[Mapping[str, str]] = (),
) -> tuple[pd.DataFrame, str]:
    """Write ``<out_dir>/<table_id>.csv`` and ``.md`` atomically; return (table, markdown).

    ``carry`` keeps the rows of an existing ``<table_id>.csv`` that no record here replaces (a
    fresh checkout has the committed tables but not the records behind them): they are marked in
    the markdown's footer; ``carry=False`` builds the table from ``records`` alone.

    With ``paper`` (an experiment's ``paper:`` block) the markdown ends with paper | ours | Δ;
    ``expected`` (the sweep's methods) lists the ones not run yet; ``cells`` (the sweep's cells)
    adds a line counting those with results; ``compare_to`` adds paired differences to those methods.
    """
    mine = [r for r in records if r.experiment == table_id]
    previous_csv = out_dir / f"{table_id}.csv"
    text_columns = {c: str for c in ("method", "run_keys", "zoo_builds", "numerics")}  # hashes stay text
    previous = pd.read_csv(previous_csv, dtype=text_columns) if carry and previous_csv.is_file() else None
    earlier, earlier_numerics = {}, {}
    if previous is not None:
        previous["numerics"] = _previous_numerics(previous)
        for name, keys, kind in zip(
            previous["method"], previous["run_keys"], previous["numerics"], strict=True
        ):
            earlier.update(dict.fromkeys(_split(keys), name))
            earlier_numerics.update(dict.fromkeys(_split(keys), kind))
    table = tidy_table(mine, reference, compare_to, earlier, earlier_numerics)
    others = [m for m in compare_to if m != reference]
    table[REMADE_COLUMN] = pd.Series([float("nan")] * len(table), index=table.index, dtype=object)
    if previous is not None:
        keys = {r.run_key for r in mine}
        table = carry_rows(table, previous, reference, others, keys)
    footer = [*carried_lines(table, mine), *_remade_lines(table), *provenance_lines(mine)]
    table = table.drop(columns=["carried"], errors="ignore")
    markdown = markdown_table(table, table_id, expected, others, footer, cells)
    if paper is not None:
        markdown += "\n" + paper_comparison(table, paper)
    atomic_write_text(out_dir / f"{table_id}.csv", table.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out_dir / f"{table_id}.md", markdown)
    figure, scale = out_dir / f"{table_id}.png", out_dir / f"{table_id}_scale.png"
    sizes = {r.setting["zoo"]: int(r.zoo.get("n_members", 0)) for r in records if r.status == "ok"}
    settings = set() if table.empty else set(zip(table["dataset"], table["zoo"], strict=True))
    from bench.plots import accuracy_figure, save_figure, scale_figure

    if table.empty:
        figure.unlink(missing_ok=True)  # a figure of rows the table no longer has would mislead
    else:
        save_figure(accuracy_figure(table, table_id), figure)
    if len(settings) > 1 and len(set(sizes.values())) > 1:
        save_figure(scale_figure(table, sizes, table_id), scale)
    else:
        scale.unlink(missing_ok=True)
    return table, markdown


def paper_comparison(table: pd.DataFrame, paper: dict) -> str:
    """Markdown ``paper | ours | Δ`` for the published numbers of an experiment's ``paper:`` block.

    ``paper = {source, readout, results: {method: {task: [mean, ci95]}}}``; ours = the readout
    with ``readout`` test steps (PURER's protocol: 1) of the ``profile`` (default ``paper``) runs —
    never a cpu-profile number — and, for a multi-dataset table, the average over its datasets.
    Every published cell is flagged unverified.
    """
    readout = int(paper.get("readout", 1))
    profile = str(paper.get("profile", "paper"))
    lines = [
        f"Published numbers ({paper.get('source', 'unknown source')}; **unverified**) vs ours, "
        f"{readout}-step readout:",
        "",
        "| method | setting | paper | ours | Δ (ours − paper) |",
        "|---|---|---|---|---|",
    ]
    datasets = set(table.loc[~table["dataset"].astype(str).str.startswith(AVERAGE_PREFIX), "dataset"])
    multi_dataset = len(datasets) > 1  # one dataset's number is never set beside a published average
    averaged = table["dataset"].astype(str).str.startswith(AVERAGE_PREFIX) == multi_dataset
    for method, cells in sorted((paper.get("results") or {}).items()):
        # labelled rows of the method (``purer [numerics=portable]``...) each get their own line
        names = sorted({n for n in table["method"].astype(str) if base_method(n) == method}) or [method]
        for name in names:
            for task, (mean, ci) in sorted(cells.items()):
                hit = table[
                    (table["method"] == name)
                    & (table["task"] == task)
                    & (table["test_steps"] == readout)
                    & (table["profile"] == profile)
                    & averaged  # several datasets (MH): the published number is their average
                ]
                if hit.empty:
                    ours, delta = "X", "—"
                else:
                    row = hit.iloc[0]
                    ours, delta = f"{row.acc_mean:.2f} ± {row.acc_ci95:.2f}", f"{row.acc_mean - mean:+.2f}"
                lines.append(f"| {name} | {task} | {mean:.2f} ± {ci:.2f} | {ours} | {delta} |")
    if len(lines) == 4:
        lines.append("| — | — | not transcribed yet | | |")
    return "\n".join(lines) + "\n"


def latex_table(table: pd.DataFrame, title: str) -> str:
    """LaTeX ``tabular`` blocks (booktabs) per (dataset, zoo, profile), for papers.

    The accuracy pivot, then the paired differences to the reference (as in the Markdown) where any
    exist.
    """
    blocks = []
    for (dataset, zoo, profile), part in _sections(table):
        where = f"% {title}: dataset {dataset}, zoo {zoo}, profile {profile}"
        pivot = _pivot(part, "acc_mean", "acc_ci95", signed=False)
        blocks.append(_latex_tabular(pivot, f"{where}; accuracy (%), mean $\\pm$ 95\\% CI"))
        reference = part["reference"].iloc[0]
        others = part[part["method"].map(base_method) != reference]
        value, ci, seeds = delta_columns()
        if not others.empty and others[value].notna().any():
            pivot = _pivot(others, value, ci, signed=True, seeds=seeds)
            caption = f"{where}; paired difference to {reference} (same episodes), mean $\\pm$ 95\\% CI"
            blocks.append(_latex_tabular(pivot, caption))
    return "\n\n".join(blocks) + "\n"


def _latex_tabular(pivot: pd.DataFrame, comment: str) -> str:
    """One booktabs ``tabular`` of a :func:`_pivot` frame, under a ``%`` comment line."""
    columns = " & ".join(_latex_escape(c) for c in pivot.columns)
    lines = [
        comment,
        "\\begin{tabular}{l" + "c" * len(pivot.columns) + "}",
        "\\toprule",
        f"Method & {columns} \\\\",
        "\\midrule",
    ]
    for method, row in pivot.iterrows():
        cells = " & ".join(
            _latex_escape(str(v)).replace("±", "$\\pm$").replace(FEWER_SEEDS_MARK, "$^\\dagger$") for v in row
        )
        lines.append(f"{_latex_escape(str(method))} & {cells} \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    for char, escaped in (
        ("\\", "\\textbackslash{}"),
        ("_", "\\_"),
        ("%", "\\%"),
        ("&", "\\&"),
        ("#", "\\#"),
    ):
        text = text.replace(char, escaped)
    return text.replace("·", "$\\cdot$")
