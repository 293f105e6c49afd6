"""A run that resumes files written by other code names that code (bench.provenance)."""

from __future__ import annotations

import torch

from bench import provenance
from bench.checkpoint import load_checkpoint, save_checkpoint
from bench.evaluate import _resume


def _as_code(monkeypatch, checksum: str, sha: str = "a" * 40) -> None:
    """Make this process look like it runs code ``checksum`` (git ``sha``)."""
    monkeypatch.setattr(provenance, "code_sha256", lambda: checksum)
    monkeypatch.setattr(provenance, "git_state", lambda: {"git_sha": sha, "git_dirty": False})


def test_a_checkpoint_written_by_other_code_is_named_after_resuming(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    provenance.reset()
    _as_code(monkeypatch, "c0de" * 16, "1" * 40)
    save_checkpoint(path, {"it": torch.tensor(3)})
    provenance.reset()  # a new process, on newer code
    _as_code(monkeypatch, "beef" * 16, "2" * 40)
    state = load_checkpoint(path, torch.device("cpu"))
    assert set(state) == {"it"}  # the history is not handed to the trainer
    first = {"git_sha": "1" * 40, "git_dirty": False, "code_sha256": "c0de" * 16}
    assert provenance.resumed_code() == [{**first, "threads": torch.get_num_threads()}]
    save_checkpoint(path, {"it": torch.tensor(4)})  # the file now holds both codes' work
    provenance.reset()  # a third process on the second code still sees the first
    load_checkpoint(path, torch.device("cpu"))
    assert [e["code_sha256"] for e in provenance.resumed_code()] == ["c0de" * 16]
    provenance.reset()


def test_resuming_ones_own_code_names_nothing_and_old_files_name_unknown(tmp_path, monkeypatch):
    provenance.reset()
    _as_code(monkeypatch, "c0de" * 16)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"it": torch.tensor(1)})
    load_checkpoint(path, torch.device("cpu"))
    assert provenance.resumed_code() == []
    torch.save({"it": torch.tensor(1)}, path)  # a checkpoint from before the field
    load_checkpoint(path, torch.device("cpu"))
    assert provenance.resumed_code() == [provenance.UNKNOWN]
    provenance.reset()
    assert provenance.resumed_code() == []


def test_a_checkpoint_written_at_another_thread_count_is_named_after_resuming(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    provenance.reset()
    _as_code(monkeypatch, "c0de" * 16)
    monkeypatch.setattr(provenance, "_threads", lambda: 4)
    save_checkpoint(path, {"it": torch.tensor(3)})
    provenance.reset()  # a new process on the same code, at 1 thread
    monkeypatch.setattr(provenance, "_threads", lambda: 1)
    load_checkpoint(path, torch.device("cpu"))
    assert provenance.resumed_threads() == [4]
    assert provenance.resumed_code() == []  # same code: nothing to name there
    provenance.reset()  # a process at the checkpoint's own count names nothing
    monkeypatch.setattr(provenance, "_threads", lambda: 4)
    load_checkpoint(path, torch.device("cpu"))
    assert provenance.resumed_threads() == []
    provenance.reset()


def test_resumed_evaluation_progress_names_its_code(tmp_path, monkeypatch):
    class Suite:
        content_hash = "suite"

    progress = tmp_path / "eval_progress.json"
    provenance.reset()
    _as_code(monkeypatch, "c0de" * 16)
    progress.write_text(
        '{"suite": "suite", "readouts": [1], "per_episode": {"1": [50.0]}, "seconds": 1.0,'
        f' "code_history": [{{"git_sha": "x", "git_dirty": true, "code_sha256": "{"f" * 64}"}}]}}'
    )
    per_episode, _ = _resume(progress, Suite(), [1], None)
    assert per_episode == {1: [50.0]}
    assert provenance.resumed_code() == [{"git_sha": "x", "git_dirty": True, "code_sha256": "f" * 64}]
    provenance.reset()


def test_a_run_forgets_the_code_history_a_previous_run_in_its_process_inherited(tmp_path, small_glyphs):
    """Hydra multirun runs several jobs in one process: one job's resumed files say nothing of the next."""
    from hydra import compose, initialize_config_module

    from bench.app import run_one
    from bench.records import read_records

    provenance.reset()
    provenance.inherit([{"git_sha": "0" * 40, "git_dirty": False, "code_sha256": "0" * 64}], tmp_path / "x")
    assert provenance.resumed_code()  # as after an earlier job that resumed other code's checkpoint
    with initialize_config_module("bench.conf", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "experiment=smoke",
                "method=random_init",
                "task.n_episodes=2",
                "tracking=none",
                f"paths.results={tmp_path}",
            ],
        )
    run_one(cfg)
    (record,) = read_records(tmp_path / "runs" / "smoke")
    assert record.status == "ok" and "resumed_code" not in record.hashes
    assert record.hashes["code_sha256"] == provenance.current_code()["code_sha256"]
