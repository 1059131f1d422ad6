"""Where a parsed request runs: on the event loop (batched, audit deferred) or on the pool.

``Dispatcher.take`` sorts each request the loop hands it:

- inline (``inline(request)`` is True: cheap and changing no state, e.g. crypto operations): kept
  for this turn's batch. ``answers()`` runs the batch one request after another inside an audit
  deferral scope, then seals and writes every record they deferred as one group
  (``write_deferred``, on the loop: CPU work the loop would wait for anyway) and hands the
  responses to the committer thread, which only flushes (``sync``: one fsync for the whole turn,
  or for several turns that queued up meanwhile) and then gives them back. The loop serves the
  next turn during the fsync, and the committer needs the GIL only for a few bytecodes around it.
  If the write or the flush fails, each response that depended on it becomes a 503 instead:
  nothing leaves unaudited.
- everything else: a job for the worker pool, whose audit records are durable before the app
  returns (no scope on pool threads); the response comes back through ``answers()`` too.
- a request the server refused while reading it (``Incoming.error``), when the server was given
  ``refuse``: answered by ``refuse(request, error)`` in this turn's batch, like an inline request,
  so its audit record is durable before the refusal is sent.

The loop never sees the app itself; the pool never touches a socket.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..domain.errors import AuditUnavailable, FerroError
from .connection import Conn, Incoming
from .http import Request, Response, error_response
from .workerpool import WorkerPool

App = Callable[[Request], Response]
Refuse = Callable[[Request, FerroError], Response]
Answer = tuple[Conn, Incoming, Response]
INTERNAL_MESSAGE = "internal error; the server log has details under this request id"
_log = logging.getLogger("ferrohsm.http")
MAX_HOLD = 0.002  # seconds a written batch may wait for more before its flush starts
HAND_OVER_SHARE = 0.85  # of the requests in progress, waiting on held records: flush now


class Deferral(Protocol):
    """The audit sink's deferral API (audit/sinkbase.py), as the loop uses it."""

    def begin_deferral(self) -> None: ...
    def end_deferral(self) -> list[Any]: ...
    def deferred_count(self) -> int: ...
    def write_deferred(self, events: list[Any]) -> int: ...
    def sync(self, ticket: int) -> None: ...


class Dispatcher:
    def __init__(self, app: App, *, inline: Callable[[Request], bool] | None,
                 deferral: Deferral | None, workers: int, log: logging.Logger,
                 wake: Callable[[], None], refuse: Refuse | None = None) -> None:
        self.app = app
        self.inline = inline
        self.refuse = refuse
        self.deferral = deferral
        self.log = log
        self._wake = wake
        self._pool = WorkerPool(workers)
        self._batch: list[tuple[Conn, Incoming]] = []
        self._done: collections.deque[Answer] = collections.deque()  # filled by other threads
        # Written batches wait in _held until handed to the committer (see hand_over); a C-level
        # SimpleQueue carries them, so neither side runs Python locking code per batch.
        self._held: list[tuple[int, list[Answer]]] = []
        self._held_requests = 0
        self._held_since = 0.0
        self._commits: queue.SimpleQueue[list[tuple[int, list[Answer]]] | None] = (
            queue.SimpleQueue())
        self._handed = self._finished = 0  # batches; each counter has one writer thread
        self._committer: threading.Thread | None = None

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
            if self._committer is None:
                self._committer = threading.Thread(target=self._commit_loop, daemon=True,
                                                   name="ferrohsm-audit-commit")
                self._committer.start()
            self._commits.put(held)

    def answers(self) -> list[Answer]:
        """This turn's inline responses (audit committed), then whatever the pool finished."""
        out = self._run_batch()
        while self._done:
            out.append(self._done.popleft())
        return out

    def close(self, timeout: float) -> list[Any]:
        self._commits.put(None)
        stuck = self._pool.close(timeout)
        if self._committer is not None:
            self._committer.join(timeout)
            if self._committer.is_alive():
                stuck.append(self._committer)
        return stuck

    def _runs_inline(self, request: Request) -> bool:
        assert self.inline is not None  # noqa: S101  narrows a type for mypy, not a runtime check
        try:
            return self.inline(request)
        except Exception:
            self.log.exception("inline predicate failed (request_id=%s)", request.request_id)
            return False

    def _run_batch(self) -> list[Answer]:
        """Run this turn's inline requests; answers that need no commit, at once."""
        batch, self._batch = self._batch, []
        if not batch:
            return []
        deferral = self.deferral
        ready: list[Answer] = []
        waiting: list[Answer] = []
        if deferral is not None:
            deferral.begin_deferral()
        try:
            for conn, incoming in batch:
                before = deferral.deferred_count() if deferral is not None else 0
                request, error = incoming.request, incoming.error
                response = (self.call_app(request) if error is None
                            else self.call_refuse(request, error))
                answer = (conn, incoming, response)
                deferred = deferral is not None and deferral.deferred_count() > before
                (waiting if deferred else ready).append(answer)
        finally:
            pending = deferral.end_deferral() if deferral is not None else []
        if waiting:
            ticket, failure = self._write(pending)
            if failure is None:
                if not self._held:
                    self._held_since = time.monotonic()
                self._held.append((ticket, waiting))
                self._held_requests += len(waiting)
            else:
                ready.extend(_refused(waiting, failure))
        return ready

    def _write(self, pending: list[Any]) -> tuple[int, str | None]:
        """Seal and write the batch's deferred records: (ticket for sync, failure message)."""
        assert self.deferral is not None  # noqa: S101  narrows a type for mypy, not a runtime check
        try:
            return self.deferral.write_deferred(pending), None
        except FerroError as exc:
            self.log.error("audit write of %d deferred record(s) failed: their requests are "
                           "answered 503", len(pending))
            return 0, exc.message

    def _commit_loop(self) -> None:
        """Committer thread: one flush covers every batch handed over meanwhile."""
        assert self.deferral is not None  # noqa: S101  narrows a type for mypy, not a runtime check
        while True:
            queued = self._commits.get()
            closing = queued is None
            queued = queued or []
            while True:
                try:
                    more = self._commits.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                else:
                    queued.extend(more)
            if queued:
                self._flush(queued)
            if closing:
                return

    def _flush(self, queued: list[tuple[int, list[Answer]]]) -> None:
        assert self.deferral is not None  # noqa: S101  narrows a type for mypy, not a runtime check
        failure = None
        try:
            self.deferral.sync(max(ticket for ticket, _ in queued))
        except FerroError as exc:
            failure = exc.message
            self.log.error("audit flush failed: %d batch(es) answered 503", len(queued))
        except Exception:  # the committer must survive anything, or its batches wait forever
            failure = "audit record could not be made durable"
            self.log.exception("audit flush failed: %d batch(es) answered 503", len(queued))
        for _, answers in queued:
            self._done.extend(answers if failure is None else _refused(answers, failure))
        self._finished += len(queued)
        self._wake()

    def _pooled(self, conn: Conn, incoming: Incoming) -> None:
        """On a worker thread: run the app, hand the response to the loop."""
        self._done.append((conn, incoming, self.call_app(incoming.request)))
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


def _refused(answers: list[Answer], reason: str) -> list[Answer]:
    """The same requests answered 503: their audit records did not become durable. The access
    log already has a line for each (written when the handler returned), so name them here."""
    ids = [incoming.request.request_id for _, incoming, _ in answers]
    _log.error("audit not durable: answering 503 instead to request_id=%s", ",".join(ids[:100]))
    return [(conn, incoming, error_response(AuditUnavailable(reason), incoming.request.request_id))
            for conn, incoming, _ in answers]
