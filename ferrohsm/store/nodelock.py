"""Process coordination through ``flock`` in a data directory shared by the processes of a host
(``[server].processes = N``, or several ``ferrohsm serve`` on one SQLite data directory).

``FileMembership`` tells a cold start from a node joining a live cluster. Every live node holds
a SHARED lock on ``nodes.lock``; a starting node first takes ``startup.lock`` (so starts happen
one at a time) and then tries an EXCLUSIVE lock on ``nodes.lock``: it gets it only when no other
node is alive, and only then runs the start-up checks and reconciliation (integrity/), which
settle or roll back unsettled intents. A node that joins skips them: an unsettled intent then
may be a live node's change in flight, and must not be rolled back under it. Intents left by a
node that died are settled at the next cold start. The kernel drops a dead process's locks, so
a crashed node never blocks anything.

``FileLeader`` elects the scheduler's leader: the process holding ``scheduler.lock`` runs the
retention scheduler's ticks, the others skip them; when the leader dies its lock goes with it and
the next tick of another process takes over.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..domain.errors import StoreError


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open lock file {path}: {exc.strerror}") from None


@contextmanager
def alone(directory: str | os.PathLike[str]) -> Iterator[bool]:
    """For what must not run beside a server (an offline backup): True when no node is alive on
    ``directory``; then, until the block ends, this process counts as the one node starting,
    so a server started meanwhile waits on ``startup.lock`` instead of running its start-up
    checks beside it. False (nothing held) when a node is running."""
    membership = FileMembership(directory)
    try:
        yield membership.enter()
    finally:
        membership.close()


class FileMembership:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = Path(directory)
        self._nodes: int | None = None
        self._startup: int | None = None
        self.cold = False

    def enter(self) -> bool:
        """Wait for our turn to start; True for a cold start (no other node alive)."""
        self._startup = _open_lock(self._dir / "startup.lock")
        fcntl.flock(self._startup, fcntl.LOCK_EX)
        self._nodes = _open_lock(self._dir / "nodes.lock")
        try:
            fcntl.flock(self._nodes, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.cold = True
        except BlockingIOError:
            fcntl.flock(self._nodes, fcntl.LOCK_SH)  # the others hold it shared: no wait
            self.cold = False
        return self.cold

    def keep(self) -> bool:
        """The flock lives as long as this process holds the file open: nothing to renew."""
        return True

    def started(self) -> None:
        """This node is up: count it among the live ones and let the next one start."""
        if self._nodes is not None and self.cold:
            fcntl.flock(self._nodes, fcntl.LOCK_SH)  # still holding startup.lock: no race
        if self._startup is not None:
            os.close(self._startup)
            self._startup = None

    def close(self) -> None:
        for fd in (self._startup, self._nodes):
            if fd is not None:
                os.close(fd)
        self._startup = self._nodes = None


class FileLeader:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._path = Path(directory) / "scheduler.lock"
        self._fd: int | None = None

    def is_leader(self) -> bool:
        """True while this process holds the lock; tries to take it when it does not."""
        if self._fd is not None:
            return True
        fd = _open_lock(self._path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def holds(self) -> bool:
        """Whether this process leads now (takes nothing)."""
        return self._fd is not None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
