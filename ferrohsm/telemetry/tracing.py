"""Request spans recorded as plain tuples; exported over OTLP/HTTP by a child process.

``from_environment()`` returns None unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (and ``OTEL_SDK_DISABLED`` is not true,
``OTEL_TRACES_EXPORTER`` is not ``none``). When it is None nothing else happens: no thread, no
child process, no import of the SDK; the request path checks one attribute for None.

Per sampled request (telemetry/sampler.py, OTEL_TRACES_SAMPLER): a SERVER span named
"{method} {route}" (parent: the valid ``traceparent``, with its ``tracestate``), and INTERNAL
children ``authenticate``, the key operation (``ferrohsm <op>``) and ``audit.flush``: on the
event loop from the write of the request's audit records to their group's fsync; on a worker,
one around each record the operation writes and flushes while it waits.

Why tuples: the SDK's Span objects, its BatchSpanProcessor and the protobuf encoding cost about
45 µs a span, all on the event loop's one core (59% of encrypt throughput at 4 spans a
request). Here a span is one tuple appended to a deque (atomic in C, no lock), about 1-2 µs;
the ids of a request come from one draw of the per-process PRNG seeded from os.urandom
(tracecontext.py; ids need to be unique, not secret: the SDK draws them the same way). A writer
thread hands the tuples in batches to a child process that encodes them as OTLP protobuf and
sends them with the SDK's OTLPSpanExporter's client, off the serving core
(telemetry/spanpipe.py, telemetry/otlpexport.py, telemetry/otlpwire.py).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from . import sampler as sampling
from .spanpipe import SpanPipe
from .tracecontext import Parent, new_id_block, new_span_id

log = logging.getLogger("ferrohsm.telemetry")
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SCOPE = "ferrohsm"
INTERNAL, SERVER = 0, 1  # opentelemetry.trace.SpanKind's values
# A record (telemetry/spanpipe.py Record): trace id, span id, parent span id or None (hex),
# name, kind, start and end (ns since the epoch), attributes or None, error (status ERROR),
# tracestate or None.
Record = tuple[str, str, str | None, str, int, int, int, dict[str, Any] | None, bool,
               str | None]
WAKE_AT = 4096  # queued records that wake the writer before its interval is over
_running = threading.local()  # span: the traced request this thread is running, if any


class running:  # noqa: N801  used like a function: ``with running(span):``
    """``span``'s request runs on this thread inside the block (its key operation); a nested
    block puts the outer one back."""

    __slots__ = ("_saved", "_span")

    def __init__(self, span: RequestSpan) -> None:
        self._span = span
        self._saved: RequestSpan | None = None

    def __enter__(self) -> None:
        self._saved = getattr(_running, "span", None)
        _running.span = self._span

    def __exit__(self, *exc: object) -> None:
        _running.span = self._saved


def durable_append() -> AbstractContextManager[Any]:
    """Around a durable audit append (audit/sinkbase.py ``observe_durable``): an
    ``audit.flush`` child of the request running on this thread, else nothing. The event
    loop's requests get theirs from the group flush instead (``begin_flush``)."""
    span: RequestSpan | None = getattr(_running, "span", None)
    return nullcontext() if span is None else span.flushing()


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask for OTLP export of traces."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def from_environment(environ: Mapping[str, str] | None = None) -> Tracer | None:
    """A Tracer exporting over OTLP/HTTP when configured, else None (nothing started)."""
    if not enabled(environ):
        return None
    env = os.environ if environ is None else environ
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    if protocol.strip() != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; exporting with "
                    "http/protobuf", protocol[:40])
    if not _sdk_installed():
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed "
                    "(pip install 'ferrohsm[otel]'): spans are not exported")
        return None
    return Tracer(sampling.from_environment(env), SpanPipe())


def _sdk_installed() -> bool:
    """Whether the exporter child will find the SDK's OTLP/HTTP exporter (not imported here)."""
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:
        return False


class Tracer:
    """Samples requests and queues their spans for ``pipe`` (which owns the exporter child)."""

    def __init__(self, sampler: sampling.Sampler, pipe: SpanPipe) -> None:
        self.sampler = sampler
        self.pipe = pipe
        self.queue: deque[Record] = pipe.queue

    def start(self, name: str, parent: Parent | None, attributes: dict[str, Any],
              start_ns: int | None = None) -> RequestSpan | None:
        """The request's SERVER span (a child of ``parent`` when there is one), or None when
        the sampler leaves the request out (then nothing of it is recorded)."""
        if parent is None:
            ids = new_id_block(4)  # the trace id, then four span ids: server + 3 children
            if not self.sampler.root(ids[:32]):
                return None
            return RequestSpan(self, name, ids[:32], ids[32:], None, None, attributes,
                               start_ns)
        if not self.sampler.remote(parent):
            return None
        return RequestSpan(self, name, parent.trace_id, new_id_block(4, trace=False),
                           parent.span_id, parent.tracestate, attributes, start_ns)

    def stats(self) -> dict[str, int]:
        """Spans handed to the exporter child, dropped, and its restarts (for /metrics)."""
        return self.pipe.stats()

    def shutdown(self) -> None:
        """Hand what is queued to the exporter child and let it export (bounded wait)."""
        self.pipe.close()


class RequestSpan:
    """One request's server span and its children, recorded when they end."""

    __slots__ = ("_flush", "_ids", "_next", "attributes", "ended", "error_type", "name",
                 "parent_id", "queue", "span_id", "start_ns", "state", "trace_id", "wake")
    recording = True  # a sampled-out request gets no RequestSpan at all (Tracer.start)

    def __init__(self, tracer: Tracer, name: str, trace_id: str, ids: str,
                 parent_id: str | None, state: str | None, attributes: dict[str, Any],
                 start_ns: int | None = None) -> None:
        self.queue = tracer.queue
        self.wake = tracer.pipe.wake
        self.name = name
        self.trace_id = trace_id
        self._ids = ids  # 16 hex digits a span id: the server's, then its children's
        self._next = 16
        self.span_id = ids[:16]
        self.parent_id = parent_id
        self.state = state
        self.attributes = attributes
        self.start_ns = time.time_ns() if start_ns is None else start_ns
        self._flush: tuple[int, int] | None = None  # the group flush's start and records
        self.ended = False
        self.error_type: str | None = None  # the refusal's code, once the app knows it

    def ids(self) -> tuple[str, str, str]:
        """trace id, span id and flags (hex) for the log line and the audit record."""
        return self.trace_id, self.span_id, "01"

    def update_name(self, name: str) -> None:
        self.name = name

    def _child_id(self) -> str:
        at = self._next
        span_id = self._ids[at:at + 16]
        if span_id:
            self._next = at + 16
            return span_id
        return new_span_id()  # more children than ids drawn up front

    def ended_child(self, name: str, start_ns: int, error_type: str | None = None,
                    attributes: dict[str, Any] | None = None, end_ns: int = 0) -> None:
        """Record an INTERNAL child that ran from ``start_ns`` until now (or ``end_ns``), when
        it ends: no object per child (they were about 1.5 µs a request on the loop)."""
        if error_type is not None:
            attributes = {**(attributes or {}), "error.type": error_type}
        self.queue.append((self.trace_id, self._child_id(), self.span_id, name, INTERNAL,
                           start_ns, end_ns or time.time_ns(), attributes, False, self.state))

    @contextmanager
    def flushing(self) -> Iterator[None]:
        """An ``audit.flush`` child around one record written and flushed while the request
        waits (a worker's request: each of its durable records)."""
        start = time.time_ns()
        try:
            yield
        finally:
            self.ended_child("audit.flush", start, None, {"ferrohsm.audit.records": 1})

    def begin_flush(self, records: int) -> None:
        """The request's audit records are written; their flush (fsync) begins."""
        if self._flush is None:
            self._flush = (time.time_ns(), records)

    def finish(self, status: int, error_type: str | None = None) -> None:
        """End the flush span (if any) and the server span with the final status."""
        if self.ended:
            return
        self.ended = True
        end = time.time_ns()
        if self._flush is not None:
            start, records = self._flush
            self.ended_child("audit.flush", start, None, {"ferrohsm.audit.records": records},
                             end)
        attributes = self.attributes
        attributes["http.response.status_code"] = status
        if error_type is not None:
            attributes["error.type"] = error_type
        queue = self.queue
        queue.append((self.trace_id, self.span_id, self.parent_id, self.name, SERVER,
                      self.start_ns, end, attributes, status >= 500, self.state))
        if len(queue) > WAKE_AT:
            self.wake.set()

    def set(self, name: str, value: Any) -> None:
        self.attributes[name] = value
