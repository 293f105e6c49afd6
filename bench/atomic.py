"""Atomic writes: build into a temporary sibling, fsync, then rename into place.

A crash between write and rename leaves only a ``.tmp`` file that no reader treats as valid.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.locks import UNSUPPORTED


def _umask() -> int:
    """The process umask (read by setting it and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _as_if_created(path: str | Path, directory: bool = False) -> None:
    """Give a mkstemp/mkdtemp path (0600/0700) the mode open()/mkdir() would: 0666/0777 & ~umask.

    Results and caches are shared folders: a leaderboard readable by its writer only is a bug.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (same-directory temp file + ``os.replace``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _as_if_created(tmp_name)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_save(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` then rename ``tmp_path`` to ``path`` (for torch.save & co)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        writer(Path(tmp_name))
        with open(tmp_name, "rb") as written:  # on disk before the rename, as atomic_write_bytes does
            os.fsync(written.fileno())
        _as_if_created(tmp_name)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success rename it to ``final`` and mark it done.

    If ``final`` is already done (another process won the race) the temporary one is discarded
    and ``final`` stays as it is: a reader may be using it. A ``final`` left without ``done`` (not
    written by this function, or a crash) is moved aside and removed, then replaced. The check and
    the rename run under an ``flock`` of the parent directory, so two writers finishing together
    cannot take each other's finished ``final`` for debris.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    _as_if_created(tmp, directory=True)
    try:
        yield tmp
        (tmp / "done").write_text("ok\n")
        with _directory_locked(final.parent):
            if is_done(final):
                shutil.rmtree(tmp)
                return
            if final.exists():
                stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".stale", dir=final.parent))
                os.replace(final, stale / "old")  # one rename: no reader sees a half-deleted final
                shutil.rmtree(stale, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:
                if not is_done(final):
                    raise
                shutil.rmtree(tmp)  # another process finished final meanwhile: keep theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def _directory_locked(directory: Path) -> Iterator[None]:
    """An exclusive ``flock`` of ``directory`` itself (no lock file); unlocked where unsupported."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as error:
            if error.errno not in UNSUPPORTED:
                raise
        yield
    finally:
        os.close(fd)


def remove_directory(directory: str | Path) -> None:
    """Delete ``directory`` as one rename (aside, then removed): no reader sees it half-deleted."""
    directory = Path(directory)
    if not directory.exists():
        return
    stale = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".stale", dir=directory.parent))
    try:
        os.replace(directory, stale / "old")
    except FileNotFoundError:  # another process removed it meanwhile
        pass
    shutil.rmtree(stale, ignore_errors=True)


def is_done(directory: str | Path) -> bool:
    """True if ``directory`` was completed by :func:`atomic_directory`."""
    return (Path(directory) / "done").is_file()
