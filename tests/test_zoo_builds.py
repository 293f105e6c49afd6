"""dfml-run keeps one build of a zoo per experiment (bench/zoo_builds.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from bench.app import run_one
from bench.data import load_dataset
from bench.errors import BenchError
from bench.records import read_records
from tests.fixtures.zoo_builds import rebuild_member
from zoos.zoo import load_or_build_zoo


def _cfg(results: Path, *overrides: str):  # noqa: ANN202
    with initialize_config_module("bench.conf", version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "experiment=smoke",
                "task.n_episodes=2",
                "tracking=none",
                f"paths.results={results}",
                *overrides,
            ],
        )


def _rebuild_one_member(cache: Path) -> None:
    """Turn the cached zoo into another build of the same configuration: member 0, other weights."""
    (manifest,) = (cache / "zoos").glob("*/manifest.json")
    rebuild_member(cache, json.loads(manifest.read_text())["members"][0]["key"])


def _builds(results: Path) -> dict[str, str]:
    return {
        f"{r.method} {r.setting['task']}": r.hashes["zoo_weights"][:12]
        for r in read_records(results / "runs")
    }


def _recorded_then_rebuilt(tmp_path: Path, zoo_cache: Path, monkeypatch) -> tuple[Path, str]:  # noqa: ANN001
    """weight_average 5w1s recorded on the cached build, then the zoo rebuilt: (results, first build)."""
    monkeypatch.setenv("DFML_CACHE", str(zoo_cache))
    results = tmp_path / "results"
    run_one(_cfg(results, "method=weight_average", "task=5w1s"))
    (first,) = _builds(results).values()
    _rebuild_one_member(zoo_cache)
    return results, first


def test_a_zoo_reading_cell_on_another_build_is_refused_unless_allowed(tmp_path, zoo_cache, monkeypatch):
    results, first = _recorded_then_rebuilt(tmp_path, zoo_cache, monkeypatch)
    with pytest.raises(
        BenchError,
        match=rf"another build of zoo 'glyphs_ss_conv4' \(member weights {first} × 1.*allow_mixed_zoo_builds",
    ):
        run_one(_cfg(results, "method=weight_average", "task=5w5s"))
    assert list(_builds(results)) == ["weight_average 5w1s"], "nothing is recorded for the refused cell"
    run_one(_cfg(results, "method=random_init", "task=5w5s"))  # never reads the zoo: any build will do
    run_one(_cfg(results, "method=weight_average", "task=5w5s", "allow_mixed_zoo_builds=true"))
    builds = _builds(results)
    assert (
        builds["weight_average 5w5s"] != first and builds["random_init 5w5s"] == builds["weight_average 5w5s"]
    )
    # another experiment name is another table: no refusal there
    run_one(_cfg(results, "method=weight_average", "task=5w1s", "experiment.name=smoke_rebuilt"))


def test_records_of_methods_that_never_read_the_zoo_do_not_pin_a_build(tmp_path, zoo_cache, monkeypatch):
    monkeypatch.setenv("DFML_CACHE", str(zoo_cache))
    results = tmp_path / "results"
    run_one(_cfg(results, "method=random_init", "task=5w1s"))
    _rebuild_one_member(zoo_cache)
    run_one(_cfg(results, "method=weight_average", "task=5w1s"))
    assert len(set(_builds(results).values())) == 2


def test_force_rerun_of_a_cell_is_not_refused_for_its_own_record(tmp_path, zoo_cache, monkeypatch):
    results, first = _recorded_then_rebuilt(tmp_path, zoo_cache, monkeypatch)
    run_one(_cfg(results, "method=weight_average", "task=5w1s", "force=true"))  # replaces the only record
    (second,) = _builds(results).values()
    assert second != first


def test_missing_members_of_a_recorded_build_are_not_trained_by_dfml_run(tmp_path, zoo_cache, monkeypatch):
    """A fresh cache would build the zoo anew (another build on another CPU): refused before training."""
    monkeypatch.setenv("DFML_CACHE", str(zoo_cache))
    results = tmp_path / "results"
    run_one(_cfg(results, "method=weight_average", "task=5w1s"))
    fresh = tmp_path / "fresh-cache"
    fresh.mkdir()
    (fresh / "datasets").symlink_to(zoo_cache / "datasets", target_is_directory=True)
    monkeypatch.setenv("DFML_CACHE", str(fresh))
    with pytest.raises(
        BenchError, match=r"this cache lacks 3 of its members \(indices 0, 1, 2\).*dfml-zoo build"
    ):
        run_one(_cfg(results, "method=weight_average", "task=5w5s"))
    with pytest.raises(BenchError, match="not even for a method that reads no zoo"):
        run_one(_cfg(results, "method=random_init", "task=5w5s"))  # it would build the zoo too
    assert not (fresh / "zoo_members").exists() or not any((fresh / "zoo_members").iterdir())
    # `dfml-zoo build` on the machine of the recorded build remakes it; dfml-run then runs
    cfg = _cfg(results, "method=weight_average", "task=5w5s")
    load_or_build_zoo(OmegaConf.to_container(cfg.zoo, resolve=True), load_dataset(dict(cfg.dataset)), "cpu")
    run_one(cfg)
    assert len(set(_builds(results).values())) == 1


def test_a_mistyped_experiment_reference_is_refused_before_any_run(tmp_path, zoo_cache, monkeypatch):
    monkeypatch.setenv("DFML_CACHE", str(zoo_cache))
    with pytest.raises(BenchError, match="unknown reference method 'random_int'; did you mean 'random_init'"):
        run_one(_cfg(tmp_path, "method=weight_average", "experiment.reference=random_int"))
    assert not (tmp_path / "runs").exists()
    with pytest.raises(BenchError, match="unknown reference method 'weight_avg'"):
        run_one(_cfg(tmp_path, "method=weight_average", "+experiment.compare_to=[weight_avg]"))


def test_portable_and_native_records_pin_builds_of_their_own(tmp_path, zoo_cache, monkeypatch):
    """A numerics=portable cell is a row of its own on a portable build: only its kind's records count."""
    from bench.zoo_builds import recorded_builds

    monkeypatch.setenv("DFML_CACHE", str(zoo_cache))
    results = tmp_path / "results"
    run_one(_cfg(results, "method=weight_average", "task=5w1s"))
    (record,) = read_records(results / "runs" / "smoke")
    zoo = (record.setting["zoo"], record.hashes["zoo"])
    runs = results / "runs" / "smoke"
    assert recorded_builds(runs, *zoo, "another-cell") == {record.hashes["zoo_weights"]: 1}
    assert recorded_builds(runs, *zoo, "another-cell", "portable") == {}
    (path,) = runs.glob("*/record.json")
    data = json.loads(path.read_text())
    data["config"]["numerics"] = "portable"
    path.write_text(json.dumps(data))
    assert recorded_builds(runs, *zoo, "another-cell", "portable") == {record.hashes["zoo_weights"]: 1}
    assert recorded_builds(runs, *zoo, "another-cell") == {}


def _recorded_as(results: Path, numerics: str) -> tuple[str, str, str]:
    """Turn the only smoke record into one of ``numerics``; (zoo name, zoo key, its build)."""
    (path,) = (results / "runs" / "smoke").glob("*/record.json")
    data = json.loads(path.read_text())
    data["config"]["numerics"] = numerics
    path.write_text(json.dumps(data))
    return data["setting"]["zoo"], data["hashes"]["zoo"], data["hashes"]["zoo_weights"]


def test_a_native_cell_does_not_train_members_where_records_of_any_numerics_name_a_build(
    tmp_path, zoo_cache, monkeypatch
):
    """Natively trained members are a build of this CPU: neither a recorded native nor a portable one."""
    from bench.zoo_builds import check_before_building

    monkeypatch.setenv("DFML_CACHE", str(zoo_cache))
    results = tmp_path / "results"
    run_one(_cfg(results, "method=weight_average", "task=5w1s"))
    name, key, build = _recorded_as(results, "portable")
    runs = results / "runs" / "smoke"
    with pytest.raises(
        BenchError, match=rf"made on build {build[:12]} × 1 record\(s\).*lacks 1 of its members"
    ):
        check_before_building(runs, "smoke", "another-cell", name, key, [2], "native")
    with pytest.raises(BenchError, match="lacks 1 of its members"):  # portable records pin portable cells
        check_before_building(runs, "smoke", "another-cell", name, key, [2], "portable")
    _recorded_as(results, "native")  # a portable cell trains the portable build whatever native records say
    check_before_building(runs, "smoke", "another-cell", name, key, [2], "portable")


def test_a_native_cell_on_the_build_of_portable_records_is_told_about_numerics(
    tmp_path, zoo_cache, monkeypatch
):
    monkeypatch.setenv("DFML_CACHE", str(zoo_cache))
    results = tmp_path / "results"
    run_one(_cfg(results, "method=weight_average", "task=5w1s"))
    run_one(_cfg(results, "method=weight_average", "task=5w5s"))
    first, second = sorted((results / "runs" / "smoke").glob("*/record.json"))
    data = json.loads(first.read_text())
    data["config"]["numerics"] = "portable"  # a portable row on the cached build
    first.write_text(json.dumps(data))
    data = json.loads(second.read_text())
    data["hashes"]["zoo_weights"] = "f" * 64  # a native row on another build
    second.write_text(json.dumps(data))
    with pytest.raises(
        BenchError, match="numerics=portable records use: to add a row of those, run this cell"
    ):
        run_one(_cfg(results, "method=weight_average", "task=5w1s", "seed=1"))


def test_a_build_another_lane_records_during_a_cell_stops_the_cells_record(tmp_path, zoo_cache, monkeypatch):
    """Two lanes of one experiment pass the guard at their start; the one finishing second re-checks."""
    import bench.app as app

    monkeypatch.setenv("DFML_CACHE", str(zoo_cache))
    results = tmp_path / "results"
    run_one(_cfg(results, "method=weight_average", "task=5w1s"))
    (path,) = (results / "runs" / "smoke").glob("*/record.json")
    other_lane = json.loads(path.read_text())
    other_lane["run_key"], other_lane["hashes"]["zoo_weights"] = "other-lane", "f" * 64
    evaluate = app.evaluate

    def evaluate_while_another_lane_records(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        lane = path.parent.parent / "other-lane"
        lane.mkdir()
        (lane / "record.json").write_text(json.dumps(other_lane))
        for name in ("episodes.csv", "config.yaml", "done"):
            (lane / name).write_bytes((path.parent / name).read_bytes())
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(app, "evaluate", evaluate_while_another_lane_records)
    with pytest.raises(BenchError, match=rf"another build of zoo .*{'f' * 12} × 1"):
        run_one(_cfg(results, "method=weight_average", "task=5w5s"))
    assert "weight_average 5w5s" not in _builds(results)  # refused before its record was written
