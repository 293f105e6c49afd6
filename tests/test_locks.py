"""bench.locks: a second holder waits for the first (threads hold separate open files, as processes do)."""

from __future__ import annotations

import logging
import threading
import time

from bench.locks import exclusive, lock_path


def test_a_second_holder_waits_until_the_first_releases(tmp_path, caplog):
    path = lock_path(tmp_path, "runs", "smoke", "abc")
    assert path == tmp_path / "locks" / "runs" / "smoke" / "abc.lock"
    order: list[str] = []
    first_in = threading.Event()

    def second() -> None:
        first_in.wait()
        with exclusive(path, "run smoke/abc"):
            order.append("second in")

    waiting = threading.Thread(target=second)
    with caplog.at_level(logging.WARNING, logger="bench.locks"):
        waiting.start()
        with exclusive(path, "run smoke/abc"):
            order.append("first in")
            first_in.set()
            deadline = time.monotonic() + 60
            while "waiting for it to finish" not in caplog.text:  # the second one has hit the lock
                assert time.monotonic() < deadline, "the second holder never reached the lock"
                time.sleep(0.01)
            order.append("first out")
        waiting.join(timeout=60)
    assert order == ["first in", "first out", "second in"]
    assert "is computing it" in caplog.text and path.read_text().strip().isdigit()  # the holder's pid
