"""Inter-process locks (``flock``), so two processes never compute one cell or one training at once.

Two ``dfml-run`` processes can reach the same cell (a relaunched sweep beside the first, a requeued
cluster job) or the same meta-training (``purer`` and ``purer_no_icfil`` share one, in a parallel
multirun). Unlocked, both compute it and overwrite each other's checkpoints and record files. Each
lock is an ``flock`` on a small file under ``<results>/locks/`` (git-ignored; never deleted, since
deleting a lock file lets a later process lock a new file while a waiter holds the old one). The
kernel releases a lock when its holder dies, however it dies. Where ``flock`` is not supported
(some network file systems) the block runs unlocked, as before, with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

#: Where a results directory keeps its lock files.
LOCKS = "locks"
#: ``flock`` errors meaning the file system cannot lock (some network file systems): run unlocked.
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)


def lock_path(results: Path, *parts: str) -> Path:
    """``<results>/locks/<parts...>.lock``."""
    return results / LOCKS / Path(*parts).with_suffix(".lock")


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block.

    Waits while another process holds it, saying once which process (``what`` names the work, e.g.
    "run smoke/0a23e56f69476ca6"); the caller should then re-check whether the work is still to do.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                log.warning("%s: process %s is computing it; waiting for it to finish", what, holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            elif error.errno in UNSUPPORTED:
                log.warning(
                    "%s: cannot lock %s on this file system (%s); running unlocked", what, path, error
                )
            else:
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
