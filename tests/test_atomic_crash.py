"""A crash between write and rename never leaves a file that later code reads as valid.

``os.replace`` is made to fail and the clean-up of temporary files is disabled, so the leftovers
are exactly what a ``kill -9`` at that instant would leave; then the readers are run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import bench.atomic as atomic
from bench.checkpoint import load_checkpoint, save_checkpoint
from bench.leaderboard import write_leaderboard
from bench.records import finished_run, read_records, write_record
from tests.fixtures.make_leaderboard_fixture import fake_record
from zoos.zoo import load_or_build_zoo, manifest_path


class Crash(BaseException):
    """The process dies here."""


@pytest.fixture
def crash_on_rename(monkeypatch):
    def replace(src, dst):  # noqa: ANN001, ANN202
        raise Crash(f"killed between writing {src} and renaming it to {dst}")

    monkeypatch.setattr(atomic.os, "replace", replace)
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda *a, **k: None)  # a dead process cleans nothing
    monkeypatch.setattr(atomic.Path, "unlink", lambda *a, **k: None)


def test_record(tmp_path, crash_on_rename):
    run_dir = tmp_path / "runs" / "exp" / "key"
    with pytest.raises(Crash):
        write_record(run_dir, fake_record("random_init", True, 30.0, "5w1s", 0), "cfg: 1\n")
    assert not finished_run(run_dir) and read_records(tmp_path / "runs") == []


def test_checkpoint(tmp_path, crash_on_rename):
    with pytest.raises(Crash):
        save_checkpoint(tmp_path / "checkpoint.pt", {"it": 5, "X": torch.zeros(2)})
    assert not (tmp_path / "checkpoint.pt").exists()  # a resume starts from scratch, never from junk
    assert list(tmp_path.glob(".checkpoint.pt.*.tmp"))


def test_checkpoint_overwrite_keeps_the_previous_valid_one(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "checkpoint.pt", {"it": 4})
    monkeypatch.setattr(atomic.os, "replace", lambda *a: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        save_checkpoint(tmp_path / "checkpoint.pt", {"it": 8})
    assert load_checkpoint(tmp_path / "checkpoint.pt", torch.device("cpu"))["it"] == 4


def test_leaderboard(tmp_path, crash_on_rename):
    with pytest.raises(Crash):
        write_leaderboard([fake_record("random_init", True, 30.0, "5w1s", 0)], tmp_path, "exp")
    assert not (tmp_path / "exp.md").exists() and not (tmp_path / "exp.csv").exists()


def test_zoo_member_and_manifest(small_glyphs, cache_root, crash_on_rename):
    cfg = {"name": "crashy", "arch": "conv4", "arch_options": {"width": 4}, "n_members": 1, "seed": 9}
    cfg["recipe"] = {"epochs": 1, "milestones": [1]}
    with pytest.raises(Crash):
        load_or_build_zoo(cfg, small_glyphs)
    leftovers = list((cache_root / "zoo_members").glob(".*.tmp"))
    assert leftovers and all((d / "done").exists() for d in leftovers)  # complete, but never renamed
    names = [json.loads(p.read_text())["name"] for p in (cache_root / "zoos").glob("*/manifest.json")]
    assert "crashy" not in names


def test_zoo_manifest_write_crash_after_members(small_glyphs, cache_root, monkeypatch):
    cfg = {"name": "crashy2", "arch": "conv4", "arch_options": {"width": 4}, "n_members": 1, "seed": 10}
    cfg["recipe"] = {"epochs": 1, "milestones": [1]}
    zoo = load_or_build_zoo(cfg, small_glyphs)  # members and manifest written normally
    path = manifest_path(zoo.key)
    before = path.read_text()
    monkeypatch.setattr(atomic.os, "replace", lambda *a: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        load_or_build_zoo(cfg, small_glyphs)
    assert path.read_text() == before  # the old manifest is intact, not half-written


def test_a_second_writer_keeps_the_finished_directory_a_reader_may_hold(tmp_path):
    """atomic_directory: when ``final`` is already done, the late writer's copy is discarded."""
    final = tmp_path / "member"
    with atomic.atomic_directory(final) as tmp:
        (tmp / "weights.pt").write_text("first")
    with atomic.atomic_directory(final) as tmp:
        (tmp / "weights.pt").write_text("second")
    assert (final / "weights.pt").read_text() == "first" and atomic.is_done(final)
    assert [p.name for p in tmp_path.iterdir()] == ["member"]  # no temporary directory left
    # a directory at ``final`` that this function did not finish (no ``done``) is replaced
    unfinished = tmp_path / "partial"
    unfinished.mkdir()
    (unfinished / "weights.pt").write_text("stale")
    with atomic.atomic_directory(unfinished) as tmp:
        (tmp / "weights.pt").write_text("fresh")
    assert (unfinished / "weights.pt").read_text() == "fresh" and atomic.is_done(unfinished)


def test_a_writer_whose_rename_loses_the_race_keeps_the_winner(tmp_path, monkeypatch):
    """Another process renames its finished copy into ``final`` between this one's check and rename."""
    final = tmp_path / "member"
    real_replace = os.replace

    def winner_lands_first(source, target):  # noqa: ANN001, ANN202
        if Path(target) == final and not final.exists():
            final.mkdir()
            (final / "weights.pt").write_text("winner")
            (final / "done").write_text("ok\n")
        return real_replace(source, target)  # now fails: final is a non-empty directory

    monkeypatch.setattr(atomic.os, "replace", winner_lands_first)
    with atomic.atomic_directory(final) as tmp:
        (tmp / "weights.pt").write_text("loser")
    assert (final / "weights.pt").read_text() == "winner" and atomic.is_done(final)
    assert [p.name for p in tmp_path.iterdir()] == ["member"]  # the loser's copy is gone


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4])
def test_a_rerun_killed_at_any_write_does_not_leave_the_old_record_looking_finished(
    tmp_path, monkeypatch, crash_at
):
    """write_record over a finished run, killed at its n-th rename (config, episodes, record, done)."""
    run_dir = tmp_path / "runs" / "exp" / "key"
    write_record(run_dir, fake_record("random_init", True, 30.0, "5w1s", 0), "cfg: 1\n")
    assert finished_run(run_dir)
    renames = []
    real_replace = atomic.os.replace

    def replace(src, dst):  # noqa: ANN001, ANN202
        renames.append(dst)
        if len(renames) == crash_at:
            raise Crash(f"killed before renaming {src} to {dst}")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(Crash):
        write_record(run_dir, fake_record("random_init", True, 45.0, "5w1s", 0), "cfg: 2\n")
    order = ["config.yaml", "episodes.csv", "record.json", "done"]
    assert [Path(p).name for p in renames] == order[:crash_at]  # done is written last
    assert not finished_run(run_dir) and read_records(tmp_path / "runs") == []


def test_atomic_files_and_directories_get_the_usual_permissions(tmp_path):
    """Not mkstemp's owner-only 0600 / 0700: what open() / mkdir() give under the umask."""
    import os
    import stat

    mask = os.umask(0o022)
    try:
        atomic.atomic_write_text(tmp_path / "table.md", "x")
        atomic.atomic_save(tmp_path / "weights.pt", lambda p: p.write_bytes(b"w"))
        with atomic.atomic_directory(tmp_path / "member") as tmp:
            (tmp / "spec.json").write_text("{}")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "table.md").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "weights.pt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "member").stat().st_mode) == 0o755


TERMINATED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from bench.atomic import atomic_directory, atomic_save
from bench.signals import exit_on_sigterm
if sys.argv[2] == "handled":
    exit_on_sigterm()
folder = Path(sys.argv[1])
with atomic_directory(folder / "entry") as tmp:
    (tmp / "data.bin").write_bytes(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGTERM)  # e.g. a cluster job's time limit, mid-write
"""


@pytest.mark.parametrize("handler", ["handled", "default"])
def test_sigterm_mid_write_leaves_no_temporary_directory_behind(tmp_path, handler):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", TERMINATED_MID_WRITE, str(tmp_path), handler], capture_output=True, text=True
    )
    leftovers = [p.name for p in tmp_path.iterdir()]
    if handler == "handled":  # what dfml-run, dfml-zoo and dfml-zoo-job install
        assert done.returncode == 143 and leftovers == [], (done.returncode, leftovers, done.stderr)
    else:  # Python's default: killed at once, the temporary directory stays (why the handler exists)
        assert done.returncode == -15 and len(leftovers) == 1 and leftovers[0].endswith(".tmp")


def test_a_finished_copy_landing_while_a_writer_waits_is_kept(tmp_path):
    """Two writers finishing together: the later one must not take the earlier one's final for debris."""
    import threading
    import time

    final = tmp_path / "member"

    def late_writer() -> None:
        with atomic.atomic_directory(final) as tmp:
            (tmp / "weights.pt").write_text("late")

    with atomic._directory_locked(tmp_path):  # the other writer's rename section
        thread = threading.Thread(target=late_writer)
        thread.start()
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".member.*.tmp/done")):  # the late writer is at its rename
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)
        assert not final.exists(), "the late writer renamed while the other held the directory"
        final.mkdir()
        (final / "weights.pt").write_text("first")
        (final / "done").write_text("ok\n")
    thread.join(timeout=60)
    assert (final / "weights.pt").read_text() == "first" and atomic.is_done(final)
    assert [p.name for p in tmp_path.iterdir()] == ["member"]


def test_remove_directory_takes_it_away_in_one_rename(tmp_path, monkeypatch):
    entry = tmp_path / "member"
    entry.mkdir()
    (entry / "weights.pt").write_text("w")
    (entry / "done").write_text("ok\n")
    seen = []
    real_rmtree = atomic.shutil.rmtree

    def rmtree(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(entry.exists())  # by the time anything is deleted, the entry is gone as a whole
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(atomic.shutil, "rmtree", rmtree)
    atomic.remove_directory(entry)
    atomic.remove_directory(entry)  # already gone: nothing to do
    assert seen == [False] and list(tmp_path.iterdir()) == []
