"""The sink's checkpoint thread: signed checkpoints on a time interval, and copies to a witness.

Every-N-records checkpoints leave the tail uncovered for as long as N records take to arrive: at a
few requests a minute that is hours, so cutting the last records after a crash went unnoticed. A
time interval bounds that window (default 5 s, ``[audit].checkpoint_interval_seconds``).

Why a thread: the request path already pays for one checkpoint every N records (taken by the
group-commit leader after its flush). Time checkpoints and witness copies (a file on another disk,
syslog, an HTTPS endpoint that may be slow or down) run here instead, so no request ever waits for
them. The thread only takes a checkpoint when durable records arrived since the last one, so an
idle server writes nothing, and after a burst the tail is covered within one interval even if no
further record comes.

A witness failure is logged and counted; the newest checkpoint is tried again when the next one
is taken (and once more at close).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .witness import Witness

log = logging.getLogger("ferrohsm.audit")

MAX_TICK = 1.0  # how often the thread looks at the clock, at most


class Checkpointer:
    """Owned by a ChainedSink; ``take`` signs the head when it moved (see sinkbase.py)."""

    def __init__(self, take: Callable[[], None], interval: float,
                 probe: Callable[[], None] | None = None) -> None:
        if interval < 0:
            raise ValueError("checkpoint interval must be >= 0 (0: no time checkpoints)")
        self.interval = interval
        self._take = take
        self._probe = probe  # each tick: the sink's check that a failed log takes records again
        self._witness: Witness | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_at = time.monotonic()
        self._pending: dict[str, Any] | None = None  # newest checkpoint not yet witnessed
        self._failed: dict[str, Any] | None = None  # the one whose copy failed last
        self.witnessed_seq = 0
        self.witness_failures = 0

    # ---- called by the sink ----------------------------------------------------------------

    def taken(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint was written (any origin): restart the interval, queue it for the
        witness. Cheap: called under the sink's anchor lock."""
        self._last_at = time.monotonic()
        if self._witness is not None:
            with self._lock:
                self._pending = checkpoint
            self._wake.set()

    def attach(self, witness: Witness, latest: dict[str, Any] | None) -> None:
        """Start copying checkpoints to ``witness``, beginning with ``latest``."""
        self._witness = witness
        if latest is not None:
            with self._lock:
                self._pending = latest
        self.start()
        self._wake.set()

    def start(self) -> None:
        """Start the thread if there is anything for it to do (idempotent)."""
        if self._thread is not None or self._stopping:
            return
        if not self.interval and self._witness is None and self._probe is None:
            return
        self._thread = threading.Thread(target=self._run, name="ferrohsm-checkpoints",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (a copy in progress is given ``timeout`` to finish)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def publish_now(self) -> None:
        """Copy the pending checkpoint to the witness in the caller's thread (at close)."""
        self._failed = None  # one more try, even for a checkpoint that failed before
        self._publish()

    def describe(self) -> dict[str, Any]:
        return {"checkpoint_interval_seconds": self.interval,
                "witness": self._witness.description if self._witness else None,
                "witnessed_seq": self.witnessed_seq, "witness_failures": self.witness_failures}

    # ---- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        tick = min(self.interval, MAX_TICK) if self.interval else MAX_TICK
        while True:
            self._wake.wait(tick)
            self._wake.clear()
            if self._stopping:
                return
            if self.interval and time.monotonic() - self._last_at >= self.interval:
                self._last_at = time.monotonic()  # tried: a failing log is retried an
                self._take()  # interval later, not every tick (taken() restarts it too)
            if self._probe is not None:
                self._probe()
            self._publish()

    def _publish(self) -> None:
        witness = self._witness
        with self._lock:
            checkpoint = self._pending
        if witness is None or checkpoint is None or checkpoint is self._failed:
            return
        try:
            witness.publish(checkpoint)
        except Exception as exc:  # any failure of the copy: log it, never stop the server
            self.witness_failures += 1
            self._failed = checkpoint
            log.warning("audit: could not copy checkpoint seq %s to witness %s: %s: %s; trying "
                        "again at the next checkpoint", checkpoint.get("seq"),
                        witness.description, type(exc).__name__, exc)
            return
        with self._lock:
            if self._pending is checkpoint:
                self._pending = None
        self.witnessed_seq = int(checkpoint.get("seq") or 0)
