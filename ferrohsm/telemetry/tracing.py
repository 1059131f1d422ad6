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
request). Here a request's spans are one flat tuple appended to a deque (atomic in C, no lock)
when it ends: the request's values in a tuple, its children's values in one list extended as
each ends, and two ids from one draw of the per-process PRNG seeded from os.urandom
(tracecontext.py; ids need to be unique, not secret: the SDK draws them the same way). One
record a request, with no attribute dict and no child ids, costs 2.5-2.6 µs a request against
3.8-4.4 for four span records (a loop alone) and gained 3-4 % of exported throughput,
where each Python call on the request path costs more than in a loop. A writer thread hands
the records in batches to a child process that encodes their spans as OTLP protobuf (the
attribute names, the children's ids: otlpwire.py ``request_spans``, the bytes ``spans_of``'s
records would give) and sends them with the SDK's OTLPSpanExporter's client, off the serving
core (telemetry/spanpipe.py, telemetry/otlpexport.py).
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
from operator import itemgetter
from typing import Any

from . import sampler as sampling
from .semconv import span_method
from .spanpipe import SpanPipe
from .tracecontext import Parent, new_id_block, new_root_ids, new_span_id

log = logging.getLogger("ferrohsm.telemetry")
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SCOPE = "ferrohsm"
INTERNAL, SERVER = 0, 1  # opentelemetry.trace.SpanKind's values
# A record (telemetry/spanpipe.py Record): trace id, span id, parent span id or None (hex),
# name, kind, start and end (ns since the epoch), attributes or None, error (status ERROR),
# tracestate or None.
Record = tuple[str, str, str | None, str, int, int, int, dict[str, Any] | None, bool,
               str | None]
# What the request path queues instead, one per request (RequestSpan.finish), made into its
# Records by the exporter child (spans_of): trace id, server span id, parent span id or None,
# tracestate or None, start and end (ns since the epoch), the REQUEST values (a tuple), the
# route, the user, the status, the error type, other attributes or None, and the children, five
# values each in one flat list (CHILD; their ids are drawn in the child process). Few objects:
# each one that lives until the hand-over costs the garbage collector, marshal and the child.
RequestRecord = tuple[str, str, str | None, str | None, int, int, tuple[Any, ...], str | None,
                      str | None, int | None, str | None, dict[str, Any] | None, list[Any]]
REQUEST = ("http.request.method", "url.path", "client.address", "ferrohsm.request_id",
           "user_agent.original", "server.port")
CHILD = 5  # name, start, end, error type or None, attributes or None
# The server span's attributes after the request id, left out when None (server_attributes).
OPTIONAL = ("user_agent.original", "server.port", "http.route", "user.id",
            "http.response.status_code", "error.type")
_CHILDREN = itemgetter(12)  # a RequestRecord's children (CHILD values each)
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
    exporters = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    unsupported = [e for e in exporters if e not in ("otlp", "")]
    if unsupported:
        log.warning("OTEL_TRACES_EXPORTER=%s: only otlp is supported; exporting over OTLP",
                    ",".join(unsupported)[:60])
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
        pipe.weigh = spans_in  # its counters count spans, a record holding a request's
        self.queue: deque[RequestRecord] = pipe.queue
        self.all_roots = sampler.bound > (1 << 64) - 1  # every root kept: no sampler call

    def start(self, parent: Parent | None, request: tuple[Any, ...]) -> RequestSpan | None:
        """The request's SERVER span (a child of ``parent`` when there is one), or None when
        the sampler leaves the request out (then nothing of it is recorded). ``request``: its
        values in REQUEST order."""
        return self.begin(parent, *request)

    def begin(self, parent: Parent | None, method: str, path: str, client: str,
              request_id: str, agent: str | None, port: int | None) -> RequestSpan | None:
        """``start`` with the request's values given one by one: what the request path calls
        (each call there counts, module docstring). A root's ratio decision needs its trace id,
        so a request left out costs one id draw and nothing more."""
        if parent is None:
            ids = new_root_ids()
            if self.all_roots or self.sampler.root(ids[:32]):
                return RequestSpan(self, ids[:32], ids[32:], None, None,
                                   (method, path, client, request_id, agent, port))
            return None
        if not self.sampler.remote(parent):
            return None
        return RequestSpan(self, parent.trace_id, new_id_block(1, trace=False), parent.span_id,
                           parent.tracestate, (method, path, client, request_id, agent, port))

    def stats(self) -> dict[str, int]:
        """Spans handed to the exporter child, dropped, and its restarts (for /metrics)."""
        return self.pipe.stats()

    def shutdown(self) -> None:
        """Hand what is queued to the exporter child and let it export (bounded wait)."""
        self.pipe.close()


class RequestSpan:
    """One request's server span and its children, queued as one record when it ends.

    Callers on the request path add a child as ``span.children += (name, start, end, error
    type or None, attributes or None)``: a list extended in place, not a method call, because
    every call on the loop's path counts (module docstring)."""

    __slots__ = ("children", "ended", "error", "extra", "flush_from", "parent_id", "queue",
                 "request", "route", "span_id", "start_ns", "state", "trace_id", "user",
                 "wake")
    recording = True  # a sampled-out request gets no RequestSpan at all (Tracer.start)

    def __init__(self, tracer: Tracer, trace_id: str, span_id: str, parent_id: str | None,
                 state: str | None, request: tuple[Any, ...]) -> None:
        self.queue = tracer.queue
        self.wake = tracer.pipe.wake
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.state = state
        self.request = request
        self.route: str | None = None
        self.user: str | None = None
        self.error: str | None = None
        self.extra: dict[str, Any] | None = None
        self.children: list[Any] = []  # CHILD values a child
        self.start_ns = time.time_ns()
        self.flush_from: tuple[int, int] | None = None  # the group flush's start and records
        self.ended = False

    def ids(self) -> tuple[str, str, str]:
        """trace id, span id and flags (hex) for the log line and the audit record."""
        return self.trace_id, self.span_id, "01"

    def routed(self, route: str | None, user: str | None, error_type: str | None) -> None:
        """What the application learnt: the route, the authenticated subject, the refusal."""
        self.route, self.user, self.error = route, user, error_type

    def ended_child(self, name: str, start_ns: int, error_type: str | None = None,
                    attributes: dict[str, Any] | None = None, end_ns: int = 0) -> None:
        """Record an INTERNAL child that ran from ``start_ns`` until now (or ``end_ns``)."""
        self.children += (name, start_ns, end_ns or time.time_ns(), error_type, attributes)

    @contextmanager
    def flushing(self) -> Iterator[None]:
        """An ``audit.flush`` child around one record written and flushed while the request
        waits (a worker's request: each of its durable records)."""
        start = time.time_ns()
        try:
            yield
        finally:
            self.children += ("audit.flush", start, time.time_ns(), None,
                              {"ferrohsm.audit.records": 1})

    def begin_flush(self, records: int, start_ns: int = 0) -> None:
        """The request's audit records are being written and flushed, since ``start_ns`` (or
        now); the audit.flush child ends with the request."""
        if self.flush_from is None:
            self.flush_from = (start_ns or time.time_ns(), records)

    def finish(self, status: int) -> None:
        """End the flush child (if any) and the server span with the final status; a 5xx
        without a refusal's code gets the status as its error type. Once only."""
        if self.ended:
            return
        self.ended = True
        end = time.time_ns()
        if self.flush_from is not None:
            start, records = self.flush_from
            self.children += ("audit.flush", start, end, None, {"ferrohsm.audit.records": records})
        error = self.error
        if status >= 500 and error is None:
            error = str(status)
        queue = self.queue
        queue.append((self.trace_id, self.span_id, self.parent_id, self.state, self.start_ns,
                      end, self.request, self.route, self.user, status, error, self.extra,
                      self.children))
        if len(queue) > WAKE_AT:
            self.wake.set()

    def set(self, name: str, value: Any) -> None:
        """Another attribute of the server span (beyond REQUEST and the route, user, status
        and error type)."""
        if self.extra is None:
            self.extra = {}
        self.extra[name] = value


def spans_in(records: list[RequestRecord]) -> int:
    """The spans request records hold (the pipe counts spans, not records): one each and its
    children, counted in C (the writer thread weighs every record it hands over)."""
    return len(records) + sum(map(len, map(_CHILDREN, records))) // CHILD


def server_attributes(record: RequestRecord) -> dict[str, Any]:
    """The server span's attributes: the REQUEST values, always, then the route, user, status
    and error type unless None (as the SDK leaves None out), then the other attributes."""
    method, path, client, request_id, agent, port = record[6]
    attributes: dict[str, Any] = dict(leading(method, path, client))
    attributes["ferrohsm.request_id"] = request_id
    for name, value in zip(OPTIONAL, (agent, port, *record[7:11])):
        if value is not None:
            attributes[name] = value
    if record[11]:
        attributes.update(record[11])
    return attributes


def leading(method: Any, path: Any, client: Any) -> tuple[tuple[str, Any], ...]:
    """The server span's first attributes, always there, in order (the request id follows)."""
    return (("http.request.method", method), ("url.path", path), ("url.scheme", "https"),
            ("client.address", client), ("network.peer.address", client))


def server_name(record: RequestRecord) -> str:
    """"{method} {route}", or the method alone when no route matched (``HTTP`` for a method
    the conventions do not know, semconv.py)."""
    method, route = span_method(str(record[6][0])), record[7]
    return f"{method} {route}" if route else method


def spans_of(record: RequestRecord) -> list[Record]:
    """A request record as its spans (in the exporter child): the server span with its
    attributes, then the children, each with a span id drawn here."""
    (trace_id, span_id, parent_id, state, start, end, request, _, _, status, _, _,
     children) = record  # another shape: ValueError (the exporter loses the record)
    if len(request) != len(REQUEST) or len(children) % CHILD:
        raise ValueError("not a request record")
    spans: list[Record] = [(trace_id, span_id, parent_id, server_name(record), SERVER, start,
                            end, server_attributes(record),
                            status is not None and status >= 500, state)]
    for at in range(0, len(children), CHILD):
        child, child_start, child_end, child_error, child_attributes = children[at:at + CHILD]
        if child_error is not None:
            child_attributes = {**(child_attributes or {}), "error.type": child_error}
        spans.append((trace_id, new_span_id(), span_id, child, INTERNAL, child_start, child_end,
                      child_attributes, child_error is not None, state))
    return spans
