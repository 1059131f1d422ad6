"""An inter-process lock on one file (``flock``), re-entrant within the process.

Why this shape: several processes on one host append to one audit log, each batch under this
lock (see sinkbase.py, "One log, many writers"). Inside a process the sink already serialises
writers with its own lock, but a batch may nest: opening the log holds the lock across the
genesis record it appends. ``flock`` locks belong to the open file description, so a nested
``flock`` would succeed and its ``LOCK_UN`` would release the outer one too; a depth count
prevents that. A ``threading.RLock`` keeps the other threads of this process out meanwhile.

The kernel drops the lock when its holder dies (kill -9 included), so a crashed writer never
blocks the others: the next holder finds what it left (a complete batch, or a torn one it cuts
off) and goes on from there.
"""

from __future__ import annotations

import fcntl
import os
import threading
from types import TracebackType


class ProcessLock:
    """``with lock:`` holds ``flock(LOCK_EX)`` on ``path`` (created 0600) for this thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._mutex = threading.RLock()
        self._depth = 0

    def __enter__(self) -> ProcessLock:
        self._mutex.acquire()
        if self._depth == 0:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except BaseException:
                self._mutex.release()
                raise
        self._depth += 1
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        try:
            if self._depth == 0:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def read_hint(self) -> int:
        """The number stored in the lock file (see ``write_hint``), 0 when there is none."""
        raw = os.pread(self.fd, 32, 0)
        try:
            return int(raw.split(b"\n", 1)[0] or b"0")
        except ValueError:
            return 0

    def write_hint(self, number: int) -> None:
        """Store a small number in the lock file, for the next holder: a fixed-width line, so
        one ``pwrite`` replaces it whole. Not fsynced: it is a hint, never the truth."""
        os.pwrite(self.fd, b"%020d\n" % number, 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
