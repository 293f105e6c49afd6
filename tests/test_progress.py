"""Progress policy: a bar on a terminal, log lines without one, nothing under TQDM_DISABLE."""

from __future__ import annotations

import logging

from tqdm.auto import tqdm

from bench.progress import progress_options


def _run_bar(n: int) -> None:
    for _ in tqdm(range(n), desc="work", unit="it", **progress_options()):
        pass


def test_without_a_terminal_progress_goes_to_the_log(monkeypatch, caplog):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # a line per update
    with caplog.at_level(logging.INFO, logger="bench.progress"):
        _run_bar(3)
    lines = [r.getMessage() for r in caplog.records if r.name == "bench.progress"]
    assert lines and lines[-1].startswith("work: 100%") and "3/3" in lines[-1]
    assert all("\r" not in line for line in lines)


def test_tqdm_disable_silences_progress(monkeypatch, caplog):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    with caplog.at_level(logging.INFO, logger="bench.progress"):
        _run_bar(3)
    assert not [r for r in caplog.records if r.name == "bench.progress"]
    assert progress_options() == {"disable": True}
