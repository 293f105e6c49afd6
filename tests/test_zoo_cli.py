"""dfml-zoo (build / ls / verify / card), a killed build resuming, parallel member jobs, SH/MH runs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from bench.records import read_records

BIN = Path(sys.executable).parent
SMALL = ["dataset.max_classes=260"]
TINY = [*SMALL, "zoo.n_members=4", "zoo.recipe.epochs=4", "zoo.recipe.milestones=[2]"]


def _run(tool: str, *args: str, cwd: Path, cache: Path, wait: bool = True):  # noqa: ANN202
    env = {**os.environ, "TQDM_DISABLE": "1", "DFML_CACHE": str(cache)}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [str(BIN / tool), *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture
def cache(zoo_cache) -> Path:
    """A fresh zoo cache that shares the session's dataset cache (conftest's ``zoo_cache``)."""
    return zoo_cache


def _builds(cache: Path) -> list[dict]:
    (log,) = (cache / "zoos").glob("*/builds.json")
    return json.loads(log.read_text())


def test_killed_build_resumes_with_only_the_missing_members(tmp_path, cache, small_glyphs):
    process = _run("dfml-zoo", "build", "glyphs_ss_conv4", *TINY, cwd=tmp_path, cache=cache, wait=False)
    members = cache / "zoo_members"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(members.glob("[!.]*/done"))) < 1:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(members.glob("[!.]*/done")))
    assert 1 <= finished < 4, "the kill should land mid-build"
    done = _run("dfml-zoo", "build", "glyphs_ss_conv4", *TINY, cwd=tmp_path, cache=cache)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{4 - finished} trained" in done.stdout
    (build,) = _builds(cache)  # the killed build never logged itself
    assert build["trained"] == 4 - finished and build["loaded"] == finished
    verify = _run("dfml-zoo", "verify", "glyphs_ss_conv4", cwd=tmp_path, cache=cache)
    assert verify.returncode == 0 and verify.stdout.count(": ok") == 4


def test_ls_card_and_verify_catch_a_corrupt_member(tmp_path, cache, small_glyphs):
    assert _run("dfml-zoo", "build", "glyphs_ss_conv4", *TINY, cwd=tmp_path, cache=cache).returncode == 0
    listing = _run("dfml-zoo", "ls", cwd=tmp_path, cache=cache)
    assert "glyphs_ss_conv4" in listing.stdout and "SS, 4 members" in listing.stdout
    assert "glyphs_sh" in listing.stdout and "not built" in listing.stdout
    card = _run("dfml-zoo", "card", "glyphs_ss_conv4", cwd=tmp_path, cache=cache)
    assert "scenario: **SS**" in card.stdout and "| conv4 | glyphs | 4 |" in card.stdout
    assert "members trained" in card.stdout and "Held-out accuracy" in card.stdout
    (weights, *_) = sorted((cache / "zoo_members").glob("*/weights.pt"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"oops")
    verify = _run("dfml-zoo", "verify", cwd=tmp_path, cache=cache)
    assert verify.returncode == 1 and "SHA256 MISMATCH" in verify.stdout and "--repair" in verify.stderr
    run = _run("dfml-zoo", "build", "glyphs_ss_conv4", *TINY, cwd=tmp_path, cache=cache)
    assert run.returncode == 2 and "does not match" in run.stderr and "--repair" in run.stderr
    repaired = _run("dfml-zoo", "build", "glyphs_ss_conv4", "--repair", *TINY, cwd=tmp_path, cache=cache)
    assert repaired.returncode == 0 and "1 trained" in repaired.stdout
    assert _run("dfml-zoo", "verify", cwd=tmp_path, cache=cache).returncode == 0
    (weights.parent / "member.json").write_text("{not json")  # the weights are fine, the metadata is not
    verify = _run("dfml-zoo", "verify", cwd=tmp_path, cache=cache)
    assert verify.returncode == 1 and "MEMBER.JSON MISSING OR UNREADABLE" in verify.stdout


def test_build_names_its_build_and_checks_an_expected_one(tmp_path, cache, small_glyphs):
    malformed = _run(
        "dfml-zoo", "build", "glyphs_ss_conv4", "--expect-build", "f97a4", *TINY, cwd=tmp_path, cache=cache
    )
    assert malformed.returncode == 2 and "give 6 to 64 lowercase hex digits" in malformed.stderr
    assert not (cache / "zoo_members").exists(), "refused before any training"
    done = _run("dfml-zoo", "build", "glyphs_ss_conv4", *TINY, cwd=tmp_path, cache=cache)
    (manifest,) = (cache / "zoos").glob("*/manifest.json")
    weights = [m["weights_sha256"] for m in json.loads(manifest.read_text())["members"]]
    build = hashlib.sha256("\n".join(weights).encode()).hexdigest()
    assert done.returncode == 0 and f"build {build[:12]}" in done.stdout
    assert f"build {build[:12]}" in _run("dfml-zoo", "ls", cwd=tmp_path, cache=cache).stdout
    same = _run(
        "dfml-zoo", "build", "glyphs_ss_conv4", "--expect-build", build[:8], *TINY, cwd=tmp_path, cache=cache
    )
    assert same.returncode == 0, same.stderr
    other = "0" * 8 if not build.startswith("0" * 8) else "1" * 8
    wrong = _run(
        "dfml-zoo", "build", "glyphs_ss_conv4", "--expect-build", other, *TINY, cwd=tmp_path, cache=cache
    )
    assert wrong.returncode == 2 and f"is build {build[:12]}, not the expected {other}" in wrong.stderr


def test_unknown_zoo_is_a_did_you_mean(tmp_path, cache):
    done = _run("dfml-zoo", "build", "glyphs_ss_conv", cwd=tmp_path, cache=cache)
    assert done.returncode == 2 and "did you mean 'glyphs_ss_conv4'" in done.stderr
    card = _run("dfml-zoo", "card", "glyphs_ss_conv", cwd=tmp_path, cache=cache)
    assert card.returncode == 2 and "did you mean 'glyphs_ss_conv4'" in card.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repiar"], "unrecognized arguments: --repiar"),
        (
            ["zoo.recipe.epoch=5"],
            "bad override in 'zoo.recipe.epoch=5': Could not override 'zoo.recipe.epoch'",
        ),
        (["--dataset", "nosuch"], "unknown dataset 'nosuch'; available: cifar_fs"),
    ],
)
def test_bad_build_arguments_are_one_line_not_a_traceback(args, message, tmp_path, cache):
    done = _run("dfml-zoo", "build", "glyphs_ss_conv4", *args, cwd=tmp_path, cache=cache)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_verify_with_nothing_built_says_so(tmp_path, cache):
    done = _run("dfml-zoo", "verify", cwd=tmp_path, cache=cache)
    assert done.returncode == 0 and "no built zoos in" in done.stdout


def test_parallel_member_jobs_with_the_joblib_launcher(tmp_path, cache, small_glyphs):
    jobs = _run(
        "dfml-zoo-job",
        "--multirun",
        "zoo=glyphs_ss_conv4",
        *TINY,
        "member=range(0,4)",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        cwd=tmp_path,
        cache=cache,
    )
    assert jobs.returncode == 0, jobs.stderr[-2000:]
    assert len(list((cache / "zoo_members").glob("[!.]*/done"))) == 4
    assemble = _run("dfml-zoo", "build", "glyphs_ss_conv4", *TINY, cwd=tmp_path, cache=cache)
    assert assemble.returncode == 0 and "0 trained" in assemble.stdout


def test_submitit_slurm_launcher_composes():
    with initialize_config_module("bench.conf", version_base="1.3"):
        cfg = compose(
            "zoo_job",
            overrides=["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.partition == "gpu"


SH = [*SMALL, "zoo=glyphs_sh", "zoo.n_members=2", "zoo.recipe.epochs=1", "zoo.recipe.milestones=[1]"]


def test_sh_zoo_runs_architecture_agnostic_methods_and_weight_average_refuses(tmp_path, cache, small_glyphs):
    common = [*SH, "experiment=smoke", "task.n_episodes=4"]
    done = _run("dfml-run", *common, "method=random_init", cwd=tmp_path, cache=cache)
    assert done.returncode == 0, done.stderr[-2000:]
    purer = [
        "method=purer",
        "method.init=random",
        "budget.meta_iterations=2",
        "method.selection.every=2",
        "method.selection.val_episodes=2",
        "method.icfil.inversion_steps=2",
    ]
    done = _run("dfml-run", *common, *purer, cwd=tmp_path, cache=cache)
    assert done.returncode == 0, done.stderr[-2000:]
    bank = ["budget.meta_iterations=2", "method.generate_iterations=1", "method.val_episodes=2"]
    bank += ["method.bank_support=1", "method.bank_query=2", "method.n_query=2"]
    for method in ("dfmaml", "dfprotonet"):
        done = _run("dfml-run", *common, f"method={method}", *bank, cwd=tmp_path, cache=cache)
        assert done.returncode == 0, done.stderr[-2000:]
    generator = [*bank, "method.ngf=4", "method.nz=8", "method.kd_inner_steps=1"]
    for method, extra in (("bidfmkd", []), ("bidfmkd_zo", ["method.zo_directions=5"])):
        done = _run("dfml-run", *common, f"method={method}", *generator, *extra, cwd=tmp_path, cache=cache)
        assert done.returncode == 0, done.stderr[-2000:]
    records = {r.method: r for r in read_records(tmp_path / "results" / "runs" / "smoke")}
    assert set(records) == {"random_init", "purer", "dfmaml", "dfprotonet", "bidfmkd", "bidfmkd_zo"}
    assert records["purer"].zoo["architectures"] == {"conv4": 1, "resnet10": 1}
    assert records["bidfmkd_zo"].train_stats["teacher_queries"] > 0
    for method in ("weight_average", "ota"):  # parameter-space methods refuse a mixed-architecture zoo
        refused = _run("dfml-run", *common, f"method={method}", cwd=tmp_path, cache=cache)
        assert refused.returncode != 0
        assert f"{method} averages parameters, so it needs a same-architecture (SS) zoo; zoo 'glyphs_sh'" in (
            refused.stderr
        )


@pytest.mark.data
def test_mh_zoo_runs_through_dfml_run_on_one_of_its_datasets(tmp_path, cache, small_glyphs, shared_data):
    if not (shared_data / "omniglot").is_dir():
        pytest.skip(f"real Omniglot subsets not found at {shared_data / 'omniglot'}")
    os.environ["DFML_OMNIGLOT_ROOT"] = str(shared_data / "omniglot")
    mh = [
        "zoo=mh_glyphs_omniglot",
        "zoo.sources.glyphs.dataset.max_classes=260",
        "zoo.sources.glyphs.n_members=1",
        "zoo.sources.omniglot.n_members=1",
        "zoo.recipe.epochs=1",
        "zoo.recipe.milestones=[1]",
        "experiment=smoke",
        "task.n_episodes=4",
    ]
    try:
        done = _run("dfml-run", *mh, *SMALL, "method=random_init", cwd=tmp_path, cache=cache)
        assert done.returncode == 0, done.stderr[-2000:]
        tiny = ["budget.meta_iterations=2", "method.val_episodes=2", "method.n_query=2"]
        bank = [*tiny, "method.generate_iterations=1", "method.bank_support=1", "method.bank_query=2"]
        purer = ["budget.meta_iterations=2", "method.init=random", "method.selection.val_episodes=2"]
        for extra in (
            ["method=dfmaml", *bank],
            ["method=dfprotonet", *bank],
            ["method=purer_no_icfil", *purer],
        ):
            done = _run("dfml-run", *mh, *SMALL, *extra, cwd=tmp_path, cache=cache)
            assert done.returncode == 0, done.stderr[-2000:]
        records = read_records(tmp_path / "results" / "runs" / "smoke")
        assert {r.method for r in records} == {"random_init", "dfmaml", "dfprotonet", "purer_no_icfil"}
        for record in records:
            assert record.zoo["datasets"] == ["glyphs", "omniglot"] and record.setting["dataset"] == "glyphs"
        refused = _run("dfml-run", *mh, *SMALL, "method=weight_average", cwd=tmp_path, cache=cache)
        assert refused.returncode != 0 and "heterogeneous" in refused.stderr
        wrong = _run(
            "dfml-run", *mh, *SMALL, "method=random_init", "dataset.seed=5", cwd=tmp_path, cache=cache
        )
        assert wrong.returncode != 0 and "multi-dataset (MH) zoo over ['glyphs', 'omniglot']" in wrong.stderr
    finally:
        os.environ.pop("DFML_OMNIGLOT_ROOT", None)


def test_a_name_built_in_two_configurations_is_refused_with_their_keys(tmp_path, monkeypatch):
    from bench.errors import BenchError
    from zoos.cli import find_manifest

    monkeypatch.setenv("DFML_CACHE", str(tmp_path))
    for key, members in (("aaaa1111", 13), ("bbbb2222", 2)):  # the full zoo and a smoke run's
        folder = tmp_path / "zoos" / key
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(
            json.dumps({"name": "glyphs_sh", "key": key, "members": [{}] * members})
        )
    with pytest.raises(BenchError, match=r"'glyphs_sh' is built in 2 configurations") as raised:
        find_manifest("glyphs_sh")
    assert "aaaa1111 (13 members)" in str(raised.value) and "bbbb2222 (2 members)" in str(raised.value)
    assert find_manifest("bbbb2222")["key"] == "bbbb2222"  # a key is unambiguous


def test_building_an_mh_zoo_loads_its_source_as_the_zoo_configures_it():
    from zoos.cli import compose

    assert compose("mh_paper").dataset.image_size == 84  # cifar_fs is 32 px by default; its source is 84
    assert compose("mh_paper", "cub").dataset.image_size == 84
    assert (
        compose("mh_paper", overrides=["dataset.image_size=32"]).dataset.image_size == 32
    )  # the user's last
    assert compose("glyphs_sh").dataset.image_size == 32  # SS / SH: the dataset group as it is


def test_a_member_job_loads_an_mh_source_with_the_sources_own_settings():
    """dfml-zoo-job zoo=mh_paper dataset=cifar_fs: the source's 84 px, as `dfml-zoo build` gives it."""
    from hydra import compose, initialize_config_module

    from zoos.job import job_dataset_config

    with initialize_config_module("bench.conf", version_base="1.3"):
        mh = compose("zoo_job", overrides=["zoo=mh_paper", "dataset=cifar_fs"])
        sh = compose("zoo_job", overrides=["zoo=glyphs_sh"])
    assert mh.dataset.image_size == 32 and job_dataset_config(mh)["image_size"] == 84
    assert job_dataset_config(sh) == dict(sh.dataset)  # SS / SH zoos: the dataset group as composed


def test_a_damaged_build_log_or_manifest_is_named_and_set_aside(tmp_path, monkeypatch, caplog):
    from zoos.cli import manifests, read_build_log

    log = tmp_path / "builds.json"
    log.write_text('[{"trained": 1}')  # cut short
    assert read_build_log(log) == [] and not log.exists()
    (aside,) = tmp_path.glob("builds.json.damaged-*")
    assert aside.read_text() == '[{"trained": 1}' and f"build log {log} unreadable" in caplog.text
    log.write_text('[{"trained": 1}]')
    assert read_build_log(log) == [{"trained": 1}]
    monkeypatch.setenv("DFML_CACHE", str(tmp_path / "cache"))
    good, bad = tmp_path / "cache" / "zoos" / "a", tmp_path / "cache" / "zoos" / "b"
    good.mkdir(parents=True), bad.mkdir(parents=True)
    (good / "manifest.json").write_text('{"name": "a", "key": "a"}')
    (bad / "manifest.json").write_text("{")
    assert manifests() == [{"name": "a", "key": "a"}]
    assert f"skipping zoo manifest {bad / 'manifest.json'}" in caplog.text


def test_card_and_export_name_an_out_path_they_cannot_write(tmp_path, capsys):
    """Checked before the zoo is looked up: each is one line naming the path (they were tracebacks)."""
    from zoos.cli import main

    cases = [
        (tmp_path, f"--out '{tmp_path}' is a directory; give a file path"),
        (tmp_path / "missing" / "card.md", f"its folder '{tmp_path / 'missing'}' does not exist"),
    ]
    for out, said in cases:
        for command in ("card", "export"):
            assert main([command, "any_zoo", "--out", str(out)]) == 2
            assert said in capsys.readouterr().err


def test_a_member_job_with_a_misspelled_zoo_gets_a_did_you_mean(tmp_path, cache):
    done = _run("dfml-zoo-job", "zoo=glyhps_sh", cwd=tmp_path, cache=cache)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "dfml-zoo-job: error: unknown zoo 'glyhps_sh'; did you mean 'glyphs_sh'?" in done.stderr
    assert not (tmp_path / "results").exists()  # refused before Hydra made its output folder
