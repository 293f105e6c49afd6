"""The sweep-cell status line of a leaderboard (bench/sweep_cells.py)."""

from __future__ import annotations

import math

import pandas as pd

from bench.collect import experiment_yaml
from bench.sweep_cells import cell_status_line, sweep_cells


def _table(rows: list[tuple[str, str, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["method", "dataset", "zoo", "task", "acc_mean"])


def test_sweep_cells_expand_comma_strings_and_lists_over_the_cell_keys_only():
    cells = sweep_cells({"method": "a, b", "task": ["5w1s", "5w5s"], "seed": "0,1,2"})
    assert cells == [
        {"method": "a", "task": "5w1s"},
        {"method": "a", "task": "5w5s"},
        {"method": "b", "task": "5w1s"},
        {"method": "b", "task": "5w5s"},
    ]
    assert len(sweep_cells(experiment_yaml("glyphs_untrusted")["hydra"]["sweeper"]["params"])) == 39


def test_sweep_cells_refuse_what_they_cannot_expand():
    assert sweep_cells({"task": "5w1s"}) == []  # method not swept
    assert sweep_cells({"method": "a", "seed": "range(0,3)", "task": "choice(5w1s,5w5s)"}) == []


def test_status_line_counts_rows_with_results_and_names_the_missing_cells():
    cells = sweep_cells({"method": "random_init,purer,tds", "zoo": "z0,z1", "task": "5w1s"})
    table = _table(
        [
            ("random_init", "glyphs", "z0", "5w1s", 23.0),
            ("random_init", "glyphs", "z1", "5w1s", 23.0),
            ("purer [method.adv.scale=1.0]", "glyphs", "z0", "5w1s", 50.0),  # any configuration counts
            ("purer", "glyphs", "z1", "5w1s", math.nan),  # a failed run is not a result
            ("tds", "glyphs", "z0", "5w5s", 40.0),  # another task: not this sweep's cell
        ]
    )
    line = cell_status_line(table, cells)
    assert line == "Cells of the sweep with results: 3 of 6; missing: `purer` z1, `tds` (all 2)."
    methods, zoos = ("random_init", "purer", "tds"), ("z0", "z1")
    done = _table([(m, "glyphs", z, "5w1s", 1.0) for m in methods for z in zoos])
    assert cell_status_line(done, cells) == "Cells of the sweep with results: 6 of 6 (complete)."
    assert cell_status_line(done, []) is None


def test_the_leaderboard_markdown_carries_the_status_line_under_its_title():
    from bench.leaderboard import markdown_table, tidy_table
    from tests.fixtures.make_leaderboard_fixture import fixture_records

    table = tidy_table(fixture_records())
    methods = ",".join(sorted({m.split(" [", 1)[0] for m in table["method"]} | {"not_run_method"}))
    cells = sweep_cells({"method": methods})
    lines = markdown_table(table, "golden", cells=cells).splitlines()
    status = next(x for x in lines if x.startswith("Cells of the sweep"))
    assert status.endswith(f"{len(cells) - 1} of {len(cells)}; missing: `not_run_method`.")
    assert lines.index(status) < next(i for i, x in enumerate(lines) if x.startswith("## "))
    expected = methods.split(",")
    with_cells = markdown_table(table, "golden", expected=expected, cells=cells)
    assert "Not run yet" not in with_cells and "`not_run_method`" in with_cells  # one line, not two
    assert "Not run yet" in markdown_table(table, "golden", expected=expected)
    assert not any(x.startswith("Cells of") for x in markdown_table(table, "golden").splitlines())
