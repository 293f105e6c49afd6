"""Which code computed a run that spanned several processes.

A run resumes meta-training checkpoints and evaluation progress written by earlier processes; those
may have run other code (a session ends mid-run; the next one resumes on a newer checkout). Every
checkpoint and progress file therefore carries the *code history* of the work it holds: one entry
(``git_sha``, ``git_dirty``, ``code_sha256``) per distinct code that wrote part of it, oldest first.
A process that resumes such a file inherits its history; the record then names, under
``hashes.resumed_code``, every earlier code that differs from its own (empty: one code did it all).
Entries also name the process's torch intra-op thread count (``threads``), which moves float
summation order: a run resumed at another count names the earlier counts under
``hashes.resumed_threads`` (files written before the field carry none and are not flagged).

State is per process (one run per process; :func:`reset` at a run's start).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from bench.environment import code_sha256, git_state

log = logging.getLogger(__name__)

#: Entry of a file written before files carried their code history.
UNKNOWN = {"git_sha": "unknown", "git_dirty": None, "code_sha256": "unknown"}

_inherited: list[dict[str, Any]] = []


def current_code() -> dict[str, Any]:
    """This process's code: ``{"git_sha", "git_dirty", "code_sha256"}``."""
    return {**git_state(), "code_sha256": code_sha256()}


def reset() -> None:
    """Forget inherited histories (a new run starts in this process)."""
    _inherited.clear()


def _is_other(entry: dict[str, Any]) -> bool:
    """Whether a history entry names code other than this process's."""
    return entry.get("code_sha256") != code_sha256()


def _add(history: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    if entry not in history:
        history.append(dict(entry))


def inherit(history: list[dict[str, Any]] | None, source: Path) -> None:
    """Note the code history of a resumed file (None: a file older than the field)."""
    entries = [UNKNOWN] if history is None else history
    others = [e for e in entries if _is_other(e)]
    for entry in entries:
        _add(_inherited, entry)
    threads = resumed_threads()
    if threads:
        log.warning(
            "%s was written (in part) at %s torch thread(s) and resumes at %d; float sums may round "
            "differently, so the record names the earlier counts under hashes.resumed_threads",
            source,
            ", ".join(map(str, threads)),
            _threads(),
        )
    if others:
        names = ", ".join(
            f"git {str(e.get('git_sha'))[:7]} code {str(e.get('code_sha256'))[:8]}" for e in others
        )
        log.warning(
            "%s was written (in part) by other code (%s); resuming it, the record names that code "
            "under hashes.resumed_code",
            source,
            names,
        )


def _threads() -> int:
    """This process's torch intra-op thread count (a function: tests stand in other counts)."""
    return torch.get_num_threads()


def stamp() -> list[dict[str, Any]]:
    """The history to save with a checkpoint or progress file now: inherited + this process's code.

    This process's entry also names its thread count (``threads``).
    """
    history = [dict(e) for e in _inherited]
    _add(history, {**current_code(), "threads": _threads()})
    return history


def resumed_code() -> list[dict[str, Any]]:
    """The inherited entries whose code differs from this process's (for the record)."""
    return [dict(e) for e in _inherited if _is_other(e)]


def resumed_threads() -> list[int]:
    """Thread counts of inherited entries other than this process's (sorted; for the record)."""
    now = _threads()
    return sorted({int(e["threads"]) for e in _inherited if e.get("threads") not in (None, now)})
