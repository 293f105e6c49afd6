"""dfml-ls experiments: sweep progress from the records on disk."""

from __future__ import annotations


def test_dfml_ls_counts_finished_cells_of_an_experiment_sweep(tmp_path):
    from bench.listing import experiment_progress
    from bench.records import write_record
    from tests.fixtures.make_leaderboard_fixture import fake_record

    assert experiment_progress("smoke", tmp_path) == "finished 0/2 cells"
    done = fake_record("random_init", True, 30.0, "5w1s", 0)
    failed = fake_record("weight_average", True, 40.0, "5w1s", 0)
    failed.status = "failed"
    for record in (done, failed):
        record.experiment = "smoke"
        write_record(tmp_path / "runs" / "smoke" / record.run_key, record, "fixture: true\n")
    assert experiment_progress("smoke", tmp_path) == "finished 1/2 cells"
    assert experiment_progress("omniglot", tmp_path) == "finished 0/30 cells"  # method x task


def test_an_unusable_cache_dir_is_one_line_naming_it(monkeypatch, capsys):
    from bench.listing import main

    monkeypatch.setenv("DFML_CACHE", "/dev/null/cache")
    assert main([]) == 2
    assert (
        "dfml-ls: error: cache dir '/dev/null/cache' ($DFML_CACHE) cannot be created"
        in capsys.readouterr().err
    )
