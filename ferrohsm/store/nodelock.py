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

import contextlib
import fcntl
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..domain.errors import StoreError

_NODE_RE = re.compile(r"[0-9a-f]{32}")
log = logging.getLogger("ferrohsm")


def node_waits(where: str) -> Callable[[], None]:
    """What a starting node says when another start (or a backup, restore or rekey) holds the
    turn: a cold start checks every key record, which takes minutes on a large store."""
    return lambda: log.info("waiting for another node's start-up, or a backup, restore or rekey, "
                            "on %s to finish", where)


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open lock file {path}: {exc.strerror}") from None


@contextmanager
def alone(directory: str | os.PathLike[str], waiting: Callable[[], None] | None = None
          ) -> Iterator[bool]:
    """For what must not run beside a server (an offline backup): True when no node is alive on
    ``directory``; then, until the block ends, this process counts as the one node starting,
    so a server started meanwhile waits on ``startup.lock`` instead of running its start-up
    checks beside it. False (nothing held) when a node is running. ``waiting`` is called
    once, before waiting, when another process holds the turn (FileMembership)."""
    membership = FileMembership(directory, waiting)
    try:
        yield membership.enter()
    finally:
        membership.close()


class FileMembership:
    def __init__(self, directory: str | os.PathLike[str],
                 waiting: Callable[[], None] | None = None) -> None:
        self._dir = Path(directory)
        self._waiting = waiting  # told when the turn is taken (a node starting, a restore...)
        self._nodes: int | None = None
        self._startup: int | None = None
        self.cold = False

    def enter(self) -> bool:
        """Wait for our turn to start; True for a cold start (no other node alive)."""
        self._startup = _open_lock(self._dir / "startup.lock")
        try:
            fcntl.flock(self._startup, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a long cold start may hold it for minutes: say why we wait
            if self._waiting is not None:
                self._waiting()
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
        # nodes.lock first: a node let through startup.lock while we still held nodes.lock
        # would take us for a live node and skip its cold start's checks.
        for fd in (self._nodes, self._startup):
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


class FileNodeLeases:
    """One lock file per live process, ``nodes/<node>.lock``, held (``flock``) for its life: the
    kernel drops it when the process dies, however it dies, so a lock another process can take
    is a dead node's, exactly (a node that is only slow still holds it). Its intents can then be
    settled by a live node (integrity/livesettle.py); nothing of it can still be in flight.

    The file is locked under a temporary name and renamed into place, so no one ever finds a
    live node's file unlocked between its creation and its lock."""

    def __init__(self, directory: str | os.PathLike[str], node: str | None = None) -> None:
        self._dir = Path(directory) / "nodes"
        self._dir.mkdir(mode=0o700, exist_ok=True)
        self.node = node or uuid.uuid4().hex
        temp = self._dir / f".{self.node}.tmp"
        fd = _open_lock(temp)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temp, self._dir / f"{self.node}.lock")
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot hold the node lock in {self._dir}: {exc.strerror}") from None
        self._fd: int | None = fd
        self._held: dict[str, int] = {}  # dead nodes' locks taken, until buried or released
        self._looking = threading.Lock()  # one look at the other nodes' locks at a time

    def dead(self) -> list[str]:
        """The nodes whose lock could be taken (they died); held until ``bury``/``release``."""
        with self._looking:
            return self._dead()

    def _dead(self) -> list[str]:
        found = []
        for node, fd in self._others():
            if fd is not None:
                self._held[node] = fd
                found.append(node)
        self._sweep()
        return found

    def _others(self) -> Iterator[tuple[str, int | None]]:
        """Each other node not held here: (node, an fd holding its lock: it died) or (node,
        None: alive). With the lock ``_looking``."""
        for path in sorted(self._dir.glob("*.lock")):
            node = path.name[:-len(".lock")]
            if node == self.node or node in self._held or not _NODE_RE.fullmatch(node):
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue  # buried meanwhile by another process
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                yield node, None
                continue
            yield node, fd

    def _sweep(self) -> None:
        """A process that died between creating its lock file and naming it left ``.<node>.tmp``
        with no intent of its own: removed once its lock is free and it is a minute old (a
        process starting now has opened it and not locked it yet)."""
        for path in self._dir.glob(".*.tmp"):
            try:
                if path.name == f".{self.node}.tmp" or time.time() - path.stat().st_mtime < 60:
                    continue
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(path)
            except OSError:
                pass  # still being named by a live process, or gone
            finally:
                os.close(fd)

    def others_alive(self) -> list[str]:
        """The other nodes alive now (their lock is held by them); holds nothing after."""
        with self._looking:  # not while dead() holds a dead node's lock it has not noted yet
            return self._others_alive()

    def _others_alive(self) -> list[str]:
        alive = []
        for node, fd in self._others():
            if fd is None:
                alive.append(node)
            else:
                os.close(fd)  # dead: its lock goes back
        return alive

    @contextmanager
    def sole(self) -> Iterator[int | None]:
        """For what must run on this node alone (an online master-key rekey): while held, no
        node starts on the directory (a start waits on ``startup.lock``, FileMembership).
        Yields how many other nodes are alive, or None when the lock is taken (a node
        starting, a backup, restore or rekey running)."""
        fd = _open_lock(self._dir.parent / "startup.lock")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            yield len(self.others_alive())
        finally:
            os.close(fd)

    def bury(self, node: str) -> None:
        """The dead node's intents are settled: its lock file goes."""
        with self._looking:  # a look meanwhile would take the lock still held for alive
            fd = self._held.pop(node, None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._dir / f"{node}.lock")
                os.close(fd)

    def release(self, node: str) -> None:
        """Not settled this time (the audit log refused, a store error): tried again later."""
        with self._looking:
            fd = self._held.pop(node, None)
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        """A clean stop: the lock file goes with us (shutdown lets a change in progress settle
        first; one whose settling record could not be written waits for a cold start)."""
        for node in list(self._held):
            self.release(node)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._dir / f"{self.node}.lock")
            os.close(self._fd)
            self._fd = None
