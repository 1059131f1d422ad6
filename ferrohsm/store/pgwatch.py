"""A deadline on every wait for PostgreSQL, kept from outside the waiting thread.

Why: libpq and psycopg wait for an answer without a limit of their own, and
``statement_timeout`` is kept by the server. A server that stops answering altogether (a frozen
host, a backend stopped under a debugger, a network path that drops packets without a reset, a
synchronous standby that is gone) held the waiting thread for ever: on a node that is the event
loop's freshness check first, then every request and ``/healthz`` behind it. TCP keepalives do
not help while the peer's kernel still acknowledges.

How: each wait registers its connection's socket with a deadline; one watchdog thread per
process looks four times a second and shuts down (``shutdown(2)``, both ways) the socket of a
wait that is overdue. The waiting call then fails at once, as on a broken connection, and the
pool drops that connection. The socket is shut down while the lock is held and a wait
unregisters under that lock before anything may close its connection, so the descriptor cannot
have been reused for another file meanwhile.

Silence: a cut marks the database silent. While it is, every call fails at once (StoreError,
503) without sending anything, so the event loop does not wait out a deadline per turn; the
health report says so; and a probe (a new session, ``SELECT 1``, the same deadline) asks the
database every second until it answers. The first answer ends the silence.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..domain.errors import StoreError

log = logging.getLogger("ferrohsm.store")

DEFAULT_SECONDS = 10.0
GRACE = 1.0  # past statement_timeout: a merely slow statement gets the server's own clean cancel
TICK = 0.25
IDLE_EXIT = 2.0  # seconds without a wait after which the watchdog thread ends (_run)
PROBE_EVERY = 1.0


class Watch:
    """One wait: ``with watchdog.watch(conn):`` around the calls that send and wait.
    ``cut`` says afterwards whether the watchdog ended it."""

    __slots__ = ("_conn", "_dog", "cut", "deadline", "fd", "probe", "seconds")

    def __init__(self, dog: Watchdog, conn: Any, seconds: float, probe: bool) -> None:
        self._dog, self._conn, self.seconds, self.probe = dog, conn, seconds, probe
        self.fd, self.deadline, self.cut = -1, 0.0, False

    def __enter__(self) -> Watch:
        self._dog.arm(self, self._conn)
        return self

    def __exit__(self, *exc: object) -> None:
        self._dog.disarm(self)


class Watchdog:
    """The deadlines of one process's waits for one database (its store and audit sink)."""

    def __init__(self, seconds: float = DEFAULT_SECONDS) -> None:
        self.seconds = seconds  # the server's statement_timeout; waits are cut GRACE later
        self.cuts = 0
        self._lock = threading.Lock()
        self._waits: set[Watch] = set()
        self._silent_since: float | None = None
        self._probe: Callable[[], None] | None = None
        self._probing = False
        self._pid = -1  # the process whose thread runs (a forked child starts its own)
        self._running = False  # a watchdog thread runs (_run); it ends once idle
        self._armed = 0.0  # when the last wait began
        self._said_no_check = False  # session_settings: the server refused the client check

    def configure(self, seconds: float) -> None:
        self.seconds = seconds

    def connect_timeout(self) -> int:
        """libpq's ``connect_timeout`` for a new session: whole seconds, at least its minimum
        of 2, as long as a watched wait."""
        return max(2, math.ceil(self.seconds + GRACE))

    def session_settings(self, conn: Any) -> None:
        """Set on each session the server keeps the same deadline on (``statement_timeout``:
        it covers a lock wait, which then ends with a clean error on a live database instead of
        a cut taken for a silent one) and, from PostgreSQL 14 on, looks for a client gone (a cut
        session) every second while a statement runs, so a backend a cut left waiting for a
        lock leaves the lock's queue instead of waiting there: where the server's platform
        cannot (it refuses the setting, as on Windows), without it. ``conn`` is in autocommit
        mode: a refused setting leaves no transaction to roll back."""
        conn.execute("SELECT set_config('statement_timeout', %s, false)",
                     (str(int(self.seconds * 1000)),))
        if int(conn.info.server_version) >= 140000:
            try:
                conn.execute("SELECT set_config('client_connection_check_interval', '1000', "
                             "false)")
            except Exception as exc:  # psycopg's error (not imported here): optional, said once
                if not self._said_no_check:
                    self._said_no_check = True
                    log.info("PostgreSQL: client_connection_check_interval refused (%s): cut "
                             "sessions are noticed by the server only when it next writes",
                             str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)

    def offer_probe(self, probe: Callable[[], None]) -> None:
        """``probe()`` opens a new session and runs one statement under ``watch(..., probe=
        True)``; the first offered is kept (the store and the audit sink share the database)."""
        if self._probe is None:
            self._probe = probe

    def watch(self, conn: Any, *, seconds: float | None = None, probe: bool = False) -> Watch:
        """A wait on ``conn`` cut ``seconds`` (default: ``self.seconds``) plus GRACE from now.
        Entering it raises StoreError while the database is silent, unless ``probe``."""
        return Watch(self, conn, (self.seconds if seconds is None else seconds) + GRACE, probe)

    # ---- the waits ----------------------------------------------------------------------

    def arm(self, w: Watch, conn: Any) -> None:
        if self._pid != os.getpid():  # a forked child: its own thread, and no silence inherited
            with self._lock:
                if self._pid != os.getpid():
                    self._forked()
        if self._silent_since is not None and not w.probe:
            raise StoreError(self.silence() or "the PostgreSQL database does not answer")
        try:
            w.fd = int(conn.pgconn.socket)
        except Exception:  # a closed connection: the call itself says so
            w.fd = -1
        self._armed = time.monotonic()
        w.deadline = self._armed + w.seconds
        with self._lock:
            self._waits.add(w)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, args=(self._pid,),
                                 name="ferrohsm-pg-watchdog", daemon=True).start()

    def disarm(self, w: Watch) -> None:
        with self._lock:
            self._waits.discard(w)
            if not w.cut and self._silent_since is not None:
                self._silent_since = None
                log.warning("the PostgreSQL database answers again")

    def silence(self) -> str | None:
        """Why calls fail at once (for errors and the health report), or None."""
        since = self._silent_since
        if since is None:
            return None
        return (f"the PostgreSQL database has not answered for {time.monotonic() - since:.0f} s "
                f"(a wait was cut after {self.seconds + GRACE:g} s; "
                "[storage].postgres_timeout_seconds)")

    def slowest(self) -> float:
        """How long the oldest wait in flight has waited (0 when none)."""
        now = time.monotonic()
        with self._lock:
            return max((now - (w.deadline - w.seconds) for w in self._waits), default=0.0)

    # ---- the thread ---------------------------------------------------------------------

    def _forked(self) -> None:
        """Under the lock: this process's own state (again after a fork, whose child has
        none of its parent's threads)."""
        self._pid = os.getpid()
        self._waits = set()
        self._probing = self._running = False
        self._silent_since = None  # a forked child finds out for itself

    def _run(self, pid: int) -> None:
        """Every TICK: cut the overdue waits, start the probe while silent. Ends once idle
        for IDLE_EXIT (no wait, no silence): started again by the next wait, so a process
        whose database is idle (a test, a CLI command) keeps no thread for it."""
        while True:
            time.sleep(TICK)
            now = time.monotonic()
            with self._lock:
                if self._pid != pid:
                    return
                if (not self._waits and self._silent_since is None
                        and now - self._armed > IDLE_EXIT):
                    self._running = False
                    return
                for w in self._waits:
                    if not w.cut and now >= w.deadline:
                        self._cut(w, now)
                start = (self._silent_since is not None and not self._probing
                         and self._probe is not None)
                self._probing = self._probing or start
            if start:
                threading.Thread(target=self._probe_until_answered, name="ferrohsm-pg-probe",
                                 daemon=True).start()

    def _cut(self, w: Watch, now: float) -> None:
        """Under the lock: end an overdue wait by shutting its socket down."""
        w.cut = True
        self.cuts += 1
        if w.fd >= 0:
            with contextlib.suppress(OSError):
                sock = socket.socket(fileno=os.dup(w.fd))
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                finally:
                    sock.close()  # the duplicate only: the waiting call owns the original
        if self._silent_since is None:
            self._silent_since = now - w.seconds
            log.error("the PostgreSQL database did not answer within %g s: requests that need "
                      "it are refused until it answers again", w.seconds)

    def _probe_until_answered(self) -> None:
        probe = self._probe
        while probe is not None and self._silent_since is not None:
            with contextlib.suppress(Exception):
                probe()
            if self._silent_since is None:
                break
            time.sleep(PROBE_EVERY)
        with self._lock:
            self._probing = False


WATCHDOG = Watchdog()  # the process's: its store, audit sink and cluster sessions share one database
