"""The serve command's SIGTERM handler never deadlocks the process it should stop."""

from __future__ import annotations

import signal
import threading

from ferrohsm.cli.serve import setter


def test_the_handler_does_not_take_the_event_lock_itself() -> None:
    """Python runs a handler in the main thread, between two bytecodes of whatever it was
    doing: inside ``done.wait()``, perhaps holding the event's lock. A handler calling
    ``done.set()`` there waited for that lock forever (a quickstart that ignored SIGTERM)."""
    done = threading.Event()
    handler = setter(done)
    lock: threading.Condition = getattr(done, "_cond")  # noqa: B009  the event's own lock
    with lock:  # as the interrupted wait() may hold it
        handler(signal.SIGTERM, None)  # returns at once, whoever holds the lock
    assert done.wait(5)
