"""SIGTERM ends a process the way Ctrl-C does: by an exception, so cleanup code runs.

Python's default SIGTERM handling exits at once, without running ``finally`` blocks or ``except
BaseException`` handlers. Cluster schedulers (SLURM on a timeout or preemption) and ``kill`` send
SIGTERM first, so the atomic writers' clean-up of their temporary files (``bench.atomic``) would
never run and hidden ``.tmp`` files of checkpoints or dataset caches would pile up. The checkpoints
themselves stay as they were: a terminated run resumes from its last one, as after SIGKILL.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

#: Exit status of a process ended by SIGTERM, as a shell reports it (128 + 15).
SIGTERM_STATUS = 128 + signal.SIGTERM


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(SIGTERM_STATUS)


def exit_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit(143)`` in the main thread (call from an entry point)."""
    signal.signal(signal.SIGTERM, _raise_system_exit)


#: Exit status of a process ended by Ctrl-C (SIGINT), as a shell reports it (128 + 2).
SIGINT_STATUS = 128 + signal.SIGINT


def interrupted(tool: str) -> SystemExit:
    """What an entry point raises on Ctrl-C: one line saying how to go on, instead of a traceback."""
    print(
        f"{tool}: interrupted; relaunch the same command to resume (finished work is kept: records, "
        "checkpoints, zoo members)",
        file=sys.stderr,
    )
    return SystemExit(SIGINT_STATUS)
