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

Why plain lists and tuples: the SDK's Span objects, its BatchSpanProcessor and the protobuf
encoding cost about 45 µs a span, all on the event loop's one core (59% of encrypt throughput
at 4 spans a request). Here a request's span is one flat list (RequestSpan), made when the
request is sampled, filled in place by index as the request runs (its children's values in one
list extended as each ends) and appended to a deque (atomic in C, no lock) when it ends: the
span is its own record, so nothing is copied at the end and no object wraps it (an object with
named fields cost 2.4 µs a request against 1.0 for the list, in a loop). Its two ids come from
one draw of the per-process PRNG seeded from os.urandom (tracecontext.py; ids need to be
unique, not secret: the SDK draws them the same way). Each Python call on the request path
costs more than in a loop, so the path makes few. A writer thread hands the records in
batches to a child process that encodes their spans as OTLP protobuf (the attribute names,
the children's ids: otlpwire.py ``request_spans``, the bytes ``spans_of``'s records would
give) and sends them through the SDK's OTLPSpanExporter's client, off the serving core
(telemetry/spanpipe.py, telemetry/otlpexport.py, telemetry/otlphttp.py).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
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
# What the request path queues instead, one per request (Tracer.finish), made into its Records
# by the exporter child (spans_of): trace id, server span id, parent span id or None,
# tracestate or None, start and end (ns since the epoch), the REQUEST values (a tuple), the
# route, the user, the status, the error type, other attributes or None, and the children, five
# values each in one flat list (CHILD; their ids are drawn in the child process). Few objects:
# each one that lives until the hand-over costs the garbage collector, marshal and the child.
# On the request path it is a list filled in place (RequestSpan): the span is its own record,
# with no object around it to make, fill and copy (a third of the recording's cost measured).
RequestRecord = list[Any]
RequestSpan = list[Any]  # a RequestRecord being filled; END is 0 until it is finished
(TRACE_ID, SPAN_ID, PARENT_ID, STATE, START, END, VALUES, ROUTE, USER, STATUS, ERROR, EXTRA,
 CHILDREN) = range(13)
REQUEST = ("http.request.method", "url.path", "client.address", "ferrohsm.request_id",
           "user_agent.original", "server.port")
CHILD = 5  # name, start, end, error type or None, attributes or None
# The server span's attributes after the request id, left out when None (server_attributes).
OPTIONAL = ("user_agent.original", "server.port", "http.route", "user.id",
            "http.response.status_code", "error.type")
_CHILDREN = itemgetter(CHILDREN)  # a RequestRecord's children (CHILD values each)
_FLUSHED = [{"ferrohsm.audit.records": n} for n in range(17)]  # shared, never changed
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
    return nullcontext() if span is None else flushing(span)


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
    env = os.environ if environ is None else environ
    _say_unhonoured(env)
    if not enabled(environ):
        return None
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


SPAN_LIMITS = ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_COUNT_LIMIT",
               "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
               "OTEL_SPAN_EVENT_COUNT_LIMIT", "OTEL_SPAN_LINK_COUNT_LIMIT")


def _say_unhonoured(env: Mapping[str, str]) -> None:
    """Standard variables this exporter does not apply, said at start rather than ignored
    without a word (an outside tester set them and saw nothing change)."""
    limits = [name for name in SPAN_LIMITS if env.get(name, "").strip()]
    if limits and enabled(env):
        log.warning("%s: not applied: a request's spans carry a small fixed set of attributes, "
                    "each bounded (paths and user agents cut at 256 characters)",
                    ", ".join(limits))
    propagators = [p.strip().lower() for p in env.get("OTEL_PROPAGATORS", "").split(",")]
    others = [p for p in propagators if p not in ("", "tracecontext", "baggage", "none")]
    if others:
        log.warning("OTEL_PROPAGATORS=%s: only W3C trace context (traceparent, tracestate) "
                    "is read and written", ",".join(others)[:60])


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
        return self.begin(parent, tuple, request)

    def begin(self, parent: Parent | None, values: Callable[[Any], tuple[Any, ...]],
              source: Any) -> RequestSpan | None:
        """``start`` with the request's values from ``values(source)``, asked only for a
        request the sampler keeps: a root's ratio decision needs its trace id, so a request
        left out costs one id draw and nothing more. What the request path calls."""
        if parent is None:
            ids = new_root_ids()
            if self.all_roots or self.sampler.root(ids[:32]):
                return [ids[:32], ids[32:], None, None, time.time_ns(), 0, values(source),
                        None, None, None, None, None, []]
            return None
        if not self.sampler.remote(parent):
            return None
        return [parent.trace_id, new_id_block(1, trace=False), parent.span_id,
                parent.tracestate, time.time_ns(), 0, values(source), None, None, None, None,
                None, []]

    def finish(self, span: RequestSpan, status: int) -> None:
        """End the flush child (if one is open) and the server span with the final status,
        and queue the record; a 5xx without a refusal's code gets the status as its error
        type. Once only."""
        if span[END]:
            return
        span[END] = end = time.time_ns()
        children = span[CHILDREN]
        if children and children[-3] is None:  # the audit.flush child begin_flush opened
            children[-3] = end
        if status >= 500 and span[ERROR] is None:
            span[ERROR] = str(status)
        span[STATUS] = status
        queue = self.queue
        queue.append(span)
        if len(queue) > WAKE_AT:
            self.pipe.wake.set()

    def stats(self) -> dict[str, int]:
        """Spans handed to the exporter child, dropped, and its restarts (for /metrics)."""
        return self.pipe.stats()

    def shutdown(self) -> None:
        """Hand what is queued to the exporter child and let it export (bounded wait)."""
        self.pipe.close()


# A request's span (a RequestSpan list) is read and written in place by its indices on the
# request path: ``span[CHILDREN] += (name, start, end, error type or None, attributes or
# None)`` adds a child, ``span[ROUTE] = ...`` what the application learnt. These helpers are
# for the places where a call costs nothing that counts.

def span_ids(span: RequestSpan) -> tuple[str, str, str]:
    """trace id, span id and flags (hex) for the log line and the audit record."""
    return span[TRACE_ID], span[SPAN_ID], "01"


def routed(span: RequestSpan, route: str | None, user: str | None,
           error_type: str | None) -> None:
    """What the application learnt: the route, the authenticated subject, the refusal."""
    span[ROUTE], span[USER], span[ERROR] = route, user, error_type


def ended_child(span: RequestSpan, name: str, start_ns: int, error_type: str | None = None,
                attributes: dict[str, Any] | None = None, end_ns: int = 0) -> None:
    """Record an INTERNAL child that ran from ``start_ns`` until now (or ``end_ns``)."""
    span[CHILDREN] += (name, start_ns, end_ns or time.time_ns(), error_type, attributes)


@contextmanager
def flushing(span: RequestSpan) -> Iterator[None]:
    """An ``audit.flush`` child around one record written and flushed while the request
    waits (a worker's request: each of its durable records)."""
    start = time.time_ns()
    try:
        yield
    finally:
        span[CHILDREN] += ("audit.flush", start, time.time_ns(), None, _FLUSHED[1])


def begin_flush(span: RequestSpan, records: int, start_ns: int = 0) -> None:
    """The request's audit records are being written and flushed, since ``start_ns`` (or
    now); the audit.flush child ends with the request (its end None until then). Once."""
    children = span[CHILDREN]
    if children and children[-5] == "audit.flush" and children[-3] is None:
        return
    attributes = (_FLUSHED[records] if records < len(_FLUSHED)
                  else {"ferrohsm.audit.records": records})
    children += ("audit.flush", start_ns or time.time_ns(), None, None, attributes)


def set_attribute(span: RequestSpan, name: str, value: Any) -> None:
    """Another attribute of the server span (beyond REQUEST and the route, user, status and
    error type)."""
    if span[EXTRA] is None:
        span[EXTRA] = {}
    span[EXTRA][name] = value


def spans_in(records: list[RequestRecord]) -> int:
    """The spans request records hold (the pipe counts spans, not records): one each and its
    children, counted in C (the writer thread weighs every record it hands over)."""
    return len(records) + sum(map(len, map(_CHILDREN, records))) // CHILD


def server_attributes(record: Sequence[Any]) -> dict[str, Any]:
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


def server_name(record: Sequence[Any]) -> str:
    """The server span's name of a request record (``name_of``)."""
    return name_of(record[VALUES][0], record[ROUTE])


def name_of(method: Any, route: str | None) -> str:
    """"{method} {route}", or the method alone when no route matched (``HTTP`` for a method
    the conventions do not know, semconv.py)."""
    name = span_method(str(method))
    return f"{name} {route}" if route else name


def spans_of(record: Sequence[Any]) -> list[Record]:
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
