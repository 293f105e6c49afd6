"""Progress policy: tqdm on outer loops only; a live bar on a terminal, log lines without one.

- stderr is a terminal: the usual tqdm bar;
- no terminal (batch jobs, ``nohup``, SLURM, CI): the same bar text as one ``INFO`` log line per
  ``TQDM_MININTERVAL`` seconds (default 60), so long work still shows progress in the job's log;
- ``TQDM_DISABLE`` set (to anything but 0/false/no): nothing.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from typing import Any

log = logging.getLogger("bench.progress")

#: Seconds between progress log lines when stderr is not a terminal (``TQDM_MININTERVAL`` overrides).
LOG_INTERVAL_S = 60.0
#: Terminal control sequences tqdm writes for nested bars (cursor up, erase line).
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _LogLines(io.TextIOBase):
    """A text file for tqdm that logs each refreshed bar as one line (carriage returns dropped)."""

    def write(self, text: str) -> int:  # noqa: D102
        line = _CONTROL.sub("", text.replace("\r", "")).strip()
        if line:
            log.info(line)
        return len(text)

    def flush(self) -> None:  # noqa: D102
        return None


def _disabled_by_env() -> bool:
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


def progress_enabled() -> bool:
    """True when a live bar is shown: ``TQDM_DISABLE`` unset/false and stderr is a terminal."""
    return not _disabled_by_env() and sys.stderr.isatty()


def progress_options() -> dict[str, Any]:
    """Keyword arguments for ``tqdm(...)`` under the policy above."""
    if _disabled_by_env():
        return {"disable": True}
    if sys.stderr.isatty():
        return {"disable": False}
    interval = float(os.environ.get("TQDM_MININTERVAL", LOG_INTERVAL_S))
    return {"disable": False, "file": _LogLines(), "mininterval": interval, "ascii": True, "ncols": 100}
