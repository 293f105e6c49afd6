"""Which cells of an experiment's sweep have results: the status line of a leaderboard.

A *cell* is one value of each swept key that names a table row's setting (method, dataset, zoo,
task). Keys such as ``seed`` or ``eval.limit`` do not name a cell: their runs share one row.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import pandas as pd

CELL_KEYS = ("method", "dataset", "zoo", "task")


def sweep_cells(params: Mapping[str, object]) -> list[dict[str, str]]:
    """The cells of a Hydra basic sweeper's ``params`` (``{"method": "a,b", "task": "5w1s"}``).

    Values are comma-separated strings or lists. Returns [] when ``method`` is not swept or a value
    uses sweeper syntax this does not expand (``choice(...)``, ``range(...)``, globs): no status
    line then, rather than a wrong one.
    """
    axes: dict[str, list[str]] = {}
    for key in CELL_KEYS:
        if key not in params:
            continue
        value = params[key]
        items = [str(v) for v in value] if isinstance(value, list | tuple) else str(value).split(",")
        items = [v.strip() for v in items if v.strip()]
        if not items or any(c in v for v in items for c in "()*[]{}"):
            return []
        axes[key] = items
    if "method" not in axes:
        return []
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _done(table: pd.DataFrame) -> set[tuple[str, ...]]:
    """(method, dataset, zoo, task) of every row with a result (record or carried)."""
    if table.empty:
        return set()
    rows = table[table["acc_mean"].notna()]
    methods = rows["method"].astype(str).str.split(" [", n=1, regex=False).str[0]
    return set(zip(methods, *(rows[k].astype(str) for k in CELL_KEYS[1:]), strict=True))


def cell_status_line(table: pd.DataFrame, cells: Sequence[Mapping[str, str]]) -> str | None:
    """``Cells of the sweep with results: 36 of 39; missing: `m` 5w5s, ...`` (None without cells).

    A cell is done when some row of its method (any configuration of it) has a result for its
    dataset, zoo and task; a key the sweep does not set matches any value. Missing cells are named
    by the method and the values of the keys that vary across the sweep.
    """
    if not cells:
        return None
    done = _done(table)
    varying = [k for k in CELL_KEYS[1:] if len({c.get(k) for c in cells}) > 1]
    missing: dict[str, list[str]] = {}
    total: dict[str, int] = {}
    for cell in cells:
        method = cell["method"]
        total[method] = total.get(method, 0) + 1
        found = any(
            name == method
            and all(cell.get(k) in (None, value) for k, value in zip(CELL_KEYS[1:], rest, strict=True))
            for name, *rest in done
        )
        if not found:
            missing.setdefault(method, []).append(" · ".join(cell[k] for k in varying if k in cell))
    named = []
    for method, labels in missing.items():
        if len(labels) == total[method] > 1:
            named.append(f"`{method}` (all {total[method]})")
        else:
            named += [f"`{method}`" + (f" {label}" if label else "") for label in labels]
    n_missing = sum(len(labels) for labels in missing.values())
    line = f"Cells of the sweep with results: {len(cells) - n_missing} of {len(cells)}"
    return line + (f"; missing: {', '.join(named)}." if named else " (complete).")
