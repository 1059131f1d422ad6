"""Where a parsed request runs: on the event loop (batched, audit by ticket) or on the pool.

``Dispatcher.take`` sorts each request the loop hands it:

- inline (``inline(request)`` is True: cheap and changing no state, e.g. crypto operations): kept
  for this turn's batch. ``answers()`` gives each request of the batch an empty list,
  ``request.tickets``, and runs them one after another. The application copies that list into
  its ``RequestContext``, so each record the service makes with ``record(..., defer=True)`` is
  appended with ``durable=False`` and leaves its ticket there (service/guard.py). After the
  batch the dispatcher has the sink seal and write every queued record as one group
  (``write_queued``, on the loop: CPU work the loop would wait for anyway). An answer whose
  tickets are all durable already (a sink that cannot split the write from the flush), or that
  has none, is sent at once; one whose ticket failed becomes a 503 at once; the others are held
  and handed to the flusher (api/flusher.py: the loop's io_uring, or a committer thread), which
  makes the newest ticket durable (one fsync covers every record written before it, for the
  whole turn or for several turns that queued up meanwhile) and then gives them back: each
  answer whose tickets are durable as it was, each one with a failed ticket as a 503. Nothing
  leaves unaudited. The loop serves the next turn during the fsync.
- everything else: a job for the worker pool. Its requests carry no ticket list, so their
  records are durable before the app returns (``record`` falls back to a durable append); the
  response comes back through ``answers()`` too.
- a request the server refused while reading it (``Incoming.error``), when the server was given
  ``refuse``: answered by ``refuse(request, error)`` in this turn's batch, like an inline request,
  so the ticket of its audit record is durable before the refusal is sent.

The loop never sees the app itself; the pool never touches a socket.

``turn`` (optional; the composition root gives it only for a shared store whose caches need a
freshness check, store/pgfresh.py): a context manager entered once around a turn's inline
requests, after all of them were read, and once around each pooled request. It validates the
store's caches for everything run inside it with one database round trip, not one per lookup.
"""

from __future__ import annotations

import collections
import logging
import selectors
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from ..domain.errors import AuditUnavailable, FerroError
from ..telemetry.tracing import begin_flush
from .connection import Conn, Incoming
from .flusher import (
    DEFAULT_FLUSH,
    NOT_DURABLE,
    Batches,
    Durability,
    FlushPlan,
    RingFlusher,
    ThreadFlusher,
)
from .http import Request, Response, error_response
from .parse import render_response
from .transit import is_vault
from .transit.envelope import error as vault_error
from .uring import FsyncRing
from .workerpool import WorkerPool

App = Callable[[Request], Response]
Refuse = Callable[[Request, FerroError], Response]
Answer = tuple[Conn, Incoming, Response]
Turn = Callable[[], AbstractContextManager[object]]
INTERNAL_MESSAGE = "internal error; the server log has details under this request id"
_log = logging.getLogger("ferrohsm.http")
MAX_HOLD = 0.002  # seconds a written batch may wait for more before its flush starts
HAND_OVER_SHARE = 0.85  # of the requests in progress, waiting on held records: flush now


class Dispatcher:
    def __init__(self, app: App, *, inline: Callable[[Request], bool] | None,
                 audit: Durability | None, workers: int, log: logging.Logger,
                 wake: Callable[[], None], refuse: Refuse | None = None,
                 turn: Turn | None = None, flush: FlushPlan = DEFAULT_FLUSH) -> None:
        self.app = app
        self.turn: Turn = turn or nullcontext
        self.inline = inline
        self.refuse = refuse
        self.audit = audit
        self.log = log
        self._wake = wake
        self._pool = WorkerPool(workers)
        self._batch: list[tuple[Conn, Incoming]] = []
        self._done: collections.deque[Answer] = collections.deque()  # filled by other threads
        # Answers whose tickets are written, not yet durable, wait in _held (one list per turn)
        # until handed to the flusher (see hand_over; api/flusher.py).
        self._held: list[list[Answer]] = []
        self._held_requests = 0
        self._held_since = 0.0
        self._handed = self._finished = 0  # batches; each counter has one writer thread
        self._flush = flush
        self._flusher: ThreadFlusher | RingFlusher | None = (
            ThreadFlusher(audit, self._settle, wake, log) if audit is not None else None)

    def attach(self, selector: selectors.BaseSelector, tag: object) -> None:
        """On the loop's thread, before it runs: flush through io_uring when the sink lets the
        loop flush it (``[audit] flush = "auto"``), its completions being ``tag`` events."""
        audit = self.audit
        if (self._flush.mode != "auto" or audit is None
                or not getattr(audit, "flushes_by_caller", lambda: False)()):
            return
        try:
            ring = FsyncRing()
        except OSError as exc:
            self.log.info("audit flushes run on a thread (io_uring: %s)", exc.strerror or exc)
            return
        self._flusher = RingFlusher(ring, audit, self._settle, self.log, self._flush.spin,
                                    self._flush.cores)
        selector.register(ring.fileno(), selectors.EVENT_READ, tag)

    def flushed(self) -> None:
        """The flusher's fd is readable (only a RingFlusher has one)."""
        if isinstance(self._flusher, RingFlusher):
            self._flusher.ready()

    def spinning(self) -> bool:
        """Whether the loop should poll instead of sleeping (api/flusher.py)."""
        return self._flusher is not None and self._flusher.spinning()

    def take(self, conn: Conn, incoming: Incoming) -> None:
        if incoming.error is not None or (self.inline is not None
                                          and self._runs_inline(incoming.request)):
            self._batch.append((conn, incoming))
        else:
            self._pool.submit(lambda: self._pooled(conn, incoming))

    def hold_deadline(self) -> float | None:
        """When held batches must be handed over at the latest (None: nothing to watch)."""
        if not self._held or self._handed != self._finished:
            return None  # nothing held, or the running flush wakes the loop when it ends
        return self._held_since + MAX_HOLD

    def has_work(self) -> bool:
        """Something the loop can do right now (so it must not sleep in select)."""
        return bool(self._batch or self._done)

    def busy(self) -> bool:
        """Requests still in the dispatcher's hands (a drain must wait for them)."""
        return bool(self._batch or self._done or self._held or self._handed != self._finished)

    def hand_over(self, in_progress: Callable[[], int], now: float) -> None:
        """Start the next flush with the batches held so far, at the right moment.

        Each fsync costs ~60 µs of kernel CPU plus cold caches, so groups should be large; but
        a quiet server must not add latency. So: while a flush runs, hold (it wakes the loop
        when done; one fsync at a time anyway). Otherwise hand over once nearly every request
        in progress (``in_progress()`` counts connections answered a moment ago too: their next
        request is on its way) waits on the held records, or after MAX_HOLD. A lone client
        is flushed at once: its one request is all there is.
        """
        if not self._held:
            return
        flushing = self._handed != self._finished
        waited = now >= self._held_since + MAX_HOLD  # the very sum hold_deadline() returns
        if flushing and not waited:
            return
        if waited or self._held_requests >= HAND_OVER_SHARE * in_progress():
            held, self._held, self._held_requests = self._held, [], 0
            self._handed += len(held)
            assert self._flusher is not None  # noqa: S101  held answers imply an audit sink
            self._flusher.start(held)

    def answers(self) -> list[Answer]:
        """This turn's inline responses (audit committed), then whatever the pool finished."""
        out = self._run_batch()
        while self._done:
            out.append(self._done.popleft())
        return out

    def close(self, timeout: float) -> list[Any]:
        stuck = self._pool.close(timeout)
        if self._flusher is not None:
            stuck.extend(self._flusher.close(timeout))
        return stuck

    def _runs_inline(self, request: Request) -> bool:
        assert self.inline is not None  # noqa: S101  narrows a type for mypy, not a runtime check
        try:
            return self.inline(request)
        except Exception:
            self.log.exception("inline predicate failed (request_id=%s)", request.request_id)
            return False

    def _run_batch(self) -> list[Answer]:
        """Run this turn's inline requests; the answers that need no flush, at once."""
        batch, self._batch = self._batch, []
        if not batch:
            return []
        audit = self.audit
        ready: list[Answer] = []
        ticketed: list[Answer] = []
        with self.turn():  # every request of the turn is read: one freshness check serves all
            for conn, incoming in batch:
                request, error = incoming.request, incoming.error
                if audit is not None:
                    request.tickets = []  # filled through RequestContext.tickets
                response = (self.call_app(request) if error is None
                            else self.call_refuse(request, error))
                (ticketed if request.tickets else ready).append((conn, incoming, response))
        if ticketed:
            written = time.time_ns()  # an exported span's audit.flush child starts here
            self._write()
            waiting: list[Answer] = []
            failed: list[tuple[Answer, str]] = []
            for answer in ticketed:
                durable = self._durable(answer)
                if durable is True:  # a sink whose write is its flush (SQLite, PostgreSQL)
                    if answer[1].request.trace is not None:
                        _flush_span(answer, written)
                    ready.append(answer)
                elif durable is False:
                    waiting.append(answer)
                else:
                    failed.append((answer, durable))
            ready.extend(_refused(failed))
            if waiting:
                self._hold(waiting, written)
        return ready

    def _hold(self, waiting: list[Answer], written: int) -> None:
        """Keep answers whose records are written, not yet durable, for the next flush."""
        if not self._held:
            self._held_since = time.monotonic()
        self._held.append(waiting)
        self._held_requests += len(waiting)
        for answer in waiting:
            if answer[1].request.trace is not None:  # spans exported (no call otherwise)
                _flush_span(answer, written)

    def _write(self) -> None:
        """Seal and write the turn's queued records, one group, here on the loop; nothing
        for a sink whose write is its commit (the flusher's thread writes those)."""
        assert self.audit is not None  # noqa: S101  narrows a type for mypy, not a runtime check
        if self.audit.commits_in_write():  # asked each turn: a sealed server's sink changes
            return  # the flusher's ``wait`` writes it: a commit may wait on a lock or a disk
        try:
            self.audit.write_queued()  # a failed write fails its tickets; it does not raise
        except Exception:  # a bug below: the tickets stay queued, and wait() tries again
            self.log.exception("audit write of the turn's records failed")

    def _durable(self, answer: Answer) -> bool | str:
        """True once every ticket of ``answer``'s request is durable, False while one is not
        yet, or why one never will be."""
        assert self.audit is not None  # noqa: S101  narrows a type for mypy, not a runtime check
        is_durable = self.audit.is_durable
        try:
            for ticket in answer[1].request.tickets or ():
                if not is_durable(ticket):
                    return False
            return True
        except FerroError as exc:
            return exc.message
        except Exception:  # a bug below the sink: not durable, as far as anyone can tell
            self.log.exception("audit ticket check failed (request_id=%s)",
                               answer[1].request.request_id)
            return NOT_DURABLE

    def _settle(self, queued: Batches, failure: str) -> None:
        """After a flush (on the flusher's thread): each answer whose tickets are durable goes
        out as it was, each other one as a 503 with ``failure``."""
        failed: list[tuple[Answer, str]] = []
        for answers in queued:
            for answer in answers:
                durable = self._durable(answer)
                if durable is True:
                    self._done.append(answer)
                else:  # not durable after its flush either: as good as failed
                    failed.append((answer, failure if durable is False else durable))
        self._done.extend(_refused(failed))
        self._finished += len(queued)

    def _pooled(self, conn: Conn, incoming: Incoming) -> None:
        """On a worker thread: run the app (a turn of its own), hand the response to the loop."""
        with self.turn():
            response = self.call_app(incoming.request)
        self._done.append((conn, incoming, response))
        self._wake()

    def call_app(self, request: Request) -> Response:
        """The application's response; exceptions become error responses, never tracebacks."""
        try:
            response = self.app(request)
            if not isinstance(response, Response):
                raise TypeError(f"application returned {type(response).__name__}")
            return response
        except FerroError as exc:
            return error_response(exc, request.request_id)
        except Exception:
            self.log.exception("unhandled error (request_id=%s %s %s)",
                               request.request_id, request.method, request.path)
            return error_response(FerroError(INTERNAL_MESSAGE), request.request_id)

    def call_refuse(self, request: Request, error: FerroError) -> Response:
        """``refuse``'s answer to a request refused while it was read; the plain error response
        when there is no ``refuse`` or it fails (the refusal stands either way)."""
        if self.refuse is not None:
            try:
                return self.refuse(request, error)
            except Exception:
                self.log.exception("refusal handler failed (request_id=%s)", request.request_id)
        return error_response(error, request.request_id)


def _refused(failed: list[tuple[Answer, str]]) -> list[Answer]:
    """The same requests answered 503: their audit records did not become durable. The access
    log already has a line for each (written when the handler returned), so name them here."""
    if not failed:
        return []
    ids = [incoming.request.request_id for (_, incoming, _), _ in failed]
    _log.error("audit not durable: answering 503 instead to request_id=%s", ",".join(ids[:100]))
    return [(conn, incoming, _unavailable(incoming.request, reason))
            for (conn, incoming, _), reason in failed]


def _unavailable(request: Request, reason: str) -> Response:
    """The 503 in the shape of the request's API (Vault's on the Vault surface)."""
    if is_vault(request.path):
        return vault_error(AuditUnavailable(reason))
    return error_response(AuditUnavailable(reason), request.request_id)


def _flush_span(answer: Answer, written: int) -> None:
    """Spans exported: the request's audit.flush child, from the write of its records (at
    ``written``, ns) until its answer leaves."""
    request = answer[1].request
    begin_flush(request.trace, len(request.tickets or ()), written)


def rendered(log: logging.Logger, request: Request, response: Response, keep_alive: bool,
             http10_keep_alive: bool) -> tuple[bytes, Response]:
    """The bytes to send and the response they carry (a 500 if the app's was unsendable)."""
    head_only = request.method == "HEAD"
    try:
        return render_response(response, request.request_id, keep_alive,
                               http10_keep_alive, head_only), response
    except (ValueError, UnicodeEncodeError):
        log.exception("application produced an invalid response (request_id=%s)",
                      request.request_id)
        fallback = error_response(FerroError(INTERNAL_MESSAGE), request.request_id)
        return render_response(fallback, request.request_id, keep_alive,
                               http10_keep_alive, head_only), fallback
