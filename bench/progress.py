"""Progress-bar policy: tqdm on outer loops only, off under ``TQDM_DISABLE`` or without a TTY."""

from __future__ import annotations

import os
import sys


def progress_enabled() -> bool:
    """True when bars should be shown: ``TQDM_DISABLE`` unset/false and stderr is a terminal."""
    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    return sys.stderr.isatty()
