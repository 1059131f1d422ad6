"""``[server].processes = N``: one supervising parent and N serving children on one port.

The parent binds nothing that serves: it binds once, without listening, to reserve the port
(with ``--listen HOST:0``, to pick the port every child then uses) and keeps that socket. Each
child is a whole FerroHSM process (its own socket with SO_REUSEPORT, event loop, audit writer
and connections to the shared store), forked before the parent has started any thread. The
kernel spreads new connections over the children's sockets, and a child holding more than a
sibling hands its new connection over (api/spread.py), so the split stays even.

Start-up checks and reconciliation run in the first child only, the one that finds no other
live process (store/nodelock.py); the others join. The parent supervises:

* a child that dies is logged and restarted, after 0.5 s doubling up to 30 s while it keeps
  dying young (a child that lived 30 s starts again at 0.5 s);
* SIGTERM or SIGINT: every child drains (``[server].shutdown_grace_seconds``) and the parent
  exits when they have; one still running 10 s after its grace is killed;
* SIGHUP is forwarded to every child (each reloads its keysets and deny-list).
* a child that exits with code 2 or 4 refused to start (a configuration error, a wrong master
  key, a store the audit log does not explain; a port it cannot listen on): starting it again
  cannot help, so the parent stops the others and exits with that code, as a single ``serve``
  would. So does any other failure (exit 1: a database it cannot reach) before a child has
  served: a group that never started exits as a single ``serve`` does, instead of looping.
* the port is the group's alone (``reserve_port``): a second group started on it is refused
  in one line (exit 4), as a second single ``serve`` is, instead of silently sharing it.

A child whose parent disappears (killed with -9) stops by itself within a second.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..config import Config, cores, parse_listen
from ..telemetry.access import ACCESS
from . import sdnotify

log = logging.getLogger("ferrohsm")
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
HEALTHY_AFTER = 30.0  # a child that lived this long is restarted without delay growth
RESCUE_AFTER = 5.0  # the last child serving, if it lived this long, is restarted at once
KILL_AFTER_GRACE = 10.0
POLL = 0.1
REFUSED = (2, 4)  # exit codes of a child that cannot start: a configuration error, no port
# Set in a restarted child: how its predecessor ended, for its system.startup audit record (an
# auditor sees the restart in the log, not only in the supervisor's stderr).
RESTARTED_AFTER = "FERROHSM_RESTARTED_AFTER"


@dataclass
class Slot:
    pid: int = 0
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float = 0.0
    restarts: int = 0
    last_exit: str = ""  # how the previous child of this slot ended (for its successor)


def reserve_port(config: Config) -> tuple[Config, list[socket.socket]]:
    """Make the port this group's before any child starts; the sockets to keep until the end.

    SO_REUSEPORT lets any process of the same user join a port, so without this a second
    group (another data directory, another CA) started on a port already served would join it
    silently and take half of its connections. Three things stop that:

    * a probe binds and listens WITHOUT SO_REUSEPORT and closes: it fails (EADDRINUSE, the
      caller says so in one line) when anything already serves the port;
    * an abstract Unix socket named after the port, held for the group's life, refuses a
      second group even while ours has no child listening (starting, or every child dead);
    * the reservation itself: bound with SO_REUSEPORT, never listening (so it is handed no
      connection); with port 0 it picks the port every child then uses.
    """
    host, port = parse_listen(config.server.listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        with socket.create_server((host, port), family=family):
            pass  # OSError: something serves it already
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        port = int(sock.getsockname()[1])
        held = [sock, _port_lock(port)]
    except BaseException:
        sock.close()
        raise
    listen = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    return replace(config, server=replace(config.server, listen=listen)), held


def _port_lock(port: int) -> socket.socket:
    """An abstract Unix socket only one group on this host (network namespace) can hold for
    ``port``; released by the kernel when the parent exits, however it exits."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0ferrohsm-port-{port}")
    except OSError as exc:
        lock.close()
        raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE)) from exc
    return lock


def auto_processes(value: str) -> int:
    """``--processes N|auto``: auto is one per core."""
    if value.strip().lower() == "auto":
        return cores()
    return int(value, 10)


def cores_for(count: int, pin: bool) -> list[int]:
    """The core each child runs on (child i: the i-th), or [] to leave them unpinned.

    Pinned, each child's threads share one core: the GIL never hands over between cores (a
    cross-core hand-off costs about 40% of a process's throughput here, bench/RESULTS.md) and
    the kernel still spreads the load, one process per core. With more children than allowed
    cores (or ``pin_processes = false``) nothing is pinned."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[:count] if pin and count <= len(allowed) else []


class Supervisor:
    def __init__(self, count: int, child: Callable[[int], int], grace: float,
                 cores: list[int] | None = None,
                 on_exit: Callable[[int], None] = lambda index: None) -> None:
        self.slots = [Slot() for _ in range(count)]
        self._on_exit = on_exit  # child i is gone (api/spread.py: hand it no connection)
        self._cores = cores or []
        self._child = child
        self._grace = grace
        self._stopping = False
        self._kill_at = float("inf")
        self._pending_signals: list[int] = []
        self.code = 0
        self.served = False  # a child has served (ready() was true once)

    # ---- signals (handlers only note them; the loop acts) ----

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self._pending_signals.append(signum)

    def _handle_signals(self, now: float) -> None:
        while self._pending_signals:
            signum = self._pending_signals.pop(0)
            if signum == signal.SIGHUP:
                log.info("SIGHUP: reloading every process")
                sdnotify.reloading()  # the parent is systemd's main PID: it speaks for the group
                self._send(signal.SIGHUP)
                sdnotify.ready()
            elif not self._stopping:
                log.info("stopping %d processes (grace %.1f s)", len(self.slots), self._grace)
                sdnotify.stopping()
                self._stopping = True
                self._kill_at = now + self._grace + KILL_AFTER_GRACE
                self._send(signal.SIGTERM)

    def _send(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid:
                try:
                    os.kill(slot.pid, signum)
                except ProcessLookupError:
                    pass

    # ---- children ----

    def _spawn(self, index: int, now: float) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = self._fork_on(self._cores[index % len(self._cores)] if self._cores else None)
        if pid == 0:  # the child: never returns into the parent's loop
            code = 1
            if self.slots[index].last_exit:  # its start-up record says what it replaces
                os.environ[RESTARTED_AFTER] = self.slots[index].last_exit
            try:
                code = self._child(index)
            except BaseException:  # a bug: say so once, and let the parent restart us
                log.exception("process %d failed", index)
            finally:
                ACCESS.close()  # its queued log lines: os._exit runs no atexit
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        slot = self.slots[index]
        slot.pid, slot.started = pid, now
        log.info("process %d started (pid %d)", index, pid)

    @staticmethod
    def _fork_on(core: int | None) -> int:
        """fork, the child on ``core`` from its first instruction: the parent takes the core
        for the moment of the fork, so the child inherits it, and every thread the child starts
        does too. (The parent's one other thread, the log writer, does not come along:
        telemetry/access.py gives the child a writer of its own.)"""
        if core is None:
            return os.fork()
        saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {core})
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:  # the parent (or a failed fork): its own cores back
                os.sched_setaffinity(0, saved)
        return pid

    def start(self) -> None:
        now = time.monotonic()
        for index in range(len(self.slots)):
            self._spawn(index, now)

    def _reap(self, now: float) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for index, slot in enumerate(self.slots):
                if slot.pid == pid:
                    self._on_exit(index)
                    self._exited(index, slot, os.waitstatus_to_exitcode(status), now)
                    slot.pid = 0

    def _exited(self, index: int, slot: Slot, code: int, now: float) -> None:
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        if self._stopping:
            log.info("process %d (pid %d) stopped: %s", index, slot.pid, how)
            return
        if code in REFUSED or (code > 0 and not self.served):  # see the module docstring
            log.error("process %d (pid %d) %s: stopping every process", index, slot.pid,
                      "refused to start" if code in REFUSED
                      else f"exited with code {code} before any process served")
            self.code = code
            self._pending_signals.append(signal.SIGTERM)
            return
        lived = now - slot.started
        slot.backoff = FIRST_BACKOFF if lived >= HEALTHY_AFTER or not slot.backoff \
            else min(MAX_BACKOFF, slot.backoff * 2)
        delay = self._delay(slot, lived)
        slot.restart_at = now + delay
        slot.restarts += 1
        slot.last_exit = f"process {index} (pid {slot.pid}) {how} after {lived:.1f} s"
        log.warning("process %d %s after %.1f s; restarting it in %.1f s%s", index, how, lived,
                    delay, " (no other process is serving)" if delay < slot.backoff else "")

    def _delay(self, slot: Slot, lived: float) -> float:
        """The slot's back-off, but the first back-off for the last child serving when it
        had served a while: two children killed in turn both waited out a grown back-off and
        nothing listened on the port for seconds (an acceptance tester). A child that dies
        young keeps its back-off, alone or not, so a start-up that keeps failing never spins."""
        alone = not any(other.pid for other in self.slots if other is not slot)
        return FIRST_BACKOFF if alone and lived >= RESCUE_AFTER else slot.backoff

    def _restart_due(self, now: float) -> None:
        for index, slot in enumerate(self.slots):
            if not slot.pid and slot.restart_at and now >= slot.restart_at:
                slot.restart_at = 0.0
                self._spawn(index, now)

    def run(self, ready: Callable[[], bool] = lambda: True,
            on_ready: Callable[[], None] = lambda: None) -> int:
        """Supervise until every child stopped after SIGTERM/SIGINT (0), or after one refused
        to start (2). ``on_ready`` runs once, the first time ``ready()`` says a child serves."""
        announced = False
        while True:
            now = time.monotonic()
            self._handle_signals(now)
            if not announced and not self._stopping and any(s.pid for s in self.slots) \
                    and ready():  # before reaping: a sibling serving makes an exit a crash
                announced = self.served = True
                on_ready()
            self._reap(now)
            if self._stopping:
                if not any(slot.pid for slot in self.slots):
                    return self.code
                if now >= self._kill_at:
                    log.error("processes still running %.0f s after the grace: killing them",
                              KILL_AFTER_GRACE)
                    self._send(signal.SIGKILL)
                    self._kill_at = float("inf")
            else:
                self._restart_due(now)
            time.sleep(POLL)


def watch_parent(parent: int, done: threading.Event) -> None:
    """In a child: stop when the supervising parent is gone (it was killed with -9)."""
    def loop() -> None:
        while not done.wait(1.0):
            if os.getppid() != parent:
                log.error("the supervising process is gone: stopping")
                done.set()
    threading.Thread(target=loop, name="ferrohsm-parent-watch", daemon=True).start()


def listening(host: str, port: int) -> bool:
    """Whether some child accepts TCP connections on the port now."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)  # noqa: S104  compares, binds nothing
    try:
        socket.create_connection((target, port), timeout=0.2).close()
    except OSError:
        return False
    return True
