"""The span exporter child process: span records in on stdin, OTLP/HTTP out, via the SDK.

Started once by telemetry/spanpipe.py with this interpreter and the server's sys.path. Reads
frames (4-byte big-endian length, then a ``marshal``-encoded list of tracing.Record tuples)
until end of input, turns each record into the SDK's ``ReadableSpan`` (Resource: service.name,
service.version, OTEL_RESOURCE_ATTRIBUTES; instrumentation scope "ferrohsm") and exports each
frame with the SDK's ``OTLPSpanExporter``, which reads the standard OTEL_EXPORTER_OTLP_*
variables itself (endpoint, headers, timeout, compression, certificate). Everything expensive
about a span happens here, at a lower priority and, when the server is pinned to a core, on
the other cores.

It ignores SIGINT and SIGTERM: it stops when the server closes the pipe, after exporting what
it was handed (the server waits for that, bounded). The records come from the server that
started it, through a pipe only the two hold: ``marshal`` reads nothing else.
"""

from __future__ import annotations

import logging
import marshal
import os
import signal
import struct
import sys
from typing import Any, BinaryIO

from .logs import JSONFormatter

log = logging.getLogger("ferrohsm.telemetry.otlpexport")
HEADER = struct.Struct(">I")
SERVER = 1
NICENESS = 10


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _setup_logging()
    _step_aside()
    try:
        exporter = Exporter()
    except ImportError as exc:
        log.error("OTLP export needs the otel extra (pip install 'ferrohsm[otel]'): %s", exc)
        return 3
    stream = sys.stdin.buffer
    try:
        while (payload := read_frame(stream)) is not None:
            records = marshal.loads(payload)  # noqa: S302  from our own server's pipe only
            exporter.export(records)
    finally:
        exporter.shutdown()
    return 0


def read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame's payload, or None at end of input (or a truncated frame)."""
    header = _read_exactly(stream, HEADER.size)
    if header is None:
        return None
    return _read_exactly(stream, HEADER.unpack(header)[0])


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    while data and len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            return None
        data += more
    return data if len(data) == size else None


class Exporter:
    """ReadableSpans from records, exported by the SDK's OTLP/HTTP exporter."""

    def __init__(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState
        from opentelemetry.trace.status import Status, StatusCode

        from .. import __version__
        resource = Resource.create({"service.version": __version__})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            # neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names the service
            resource = resource.merge(Resource({"service.name": "ferrohsm"}))
        self.resource = _hashed(resource)
        self.scope = InstrumentationScope("ferrohsm", __version__)
        self.exporter = OTLPSpanExporter()
        self._span, self._context, self._state = ReadableSpan, SpanContext, TraceState
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._kinds = {k.value: k for k in SpanKind}
        self._error, self._unset = Status(StatusCode.ERROR), Status(StatusCode.UNSET)
        self._states: dict[str, Any] = {}
        self.exported = self.failed = 0

    def export(self, records: list[Any]) -> None:
        spans = []
        for record in records:
            try:
                spans.append(self.span(record))
            except (TypeError, ValueError):  # a malformed record (a bug): lose it, not the rest
                self.failed += 1
        if not spans:
            return
        result = self.exporter.export(spans)
        if result.name == "SUCCESS":
            self.exported += len(spans)
        else:  # the SDK has logged why (unreachable collector, refusal)
            self.failed += len(spans)

    def span(self, record: tuple[Any, ...]) -> Any:
        """One tracing.Record as the SDK's ReadableSpan."""
        trace_hex, span_hex, parent_hex, name, kind, start, end, attributes, error, state = record
        trace_id = int(trace_hex, 16)
        trace_state = self._trace_state(state)
        context = self._context(trace_id, int(span_hex, 16), False, self._sampled, trace_state)
        parent = None
        if parent_hex is not None:  # a SERVER span's parent is the caller's (remote) span
            parent = self._context(trace_id, int(parent_hex, 16), kind == SERVER,
                                   self._sampled, trace_state)
        return self._span(name=name, context=context, parent=parent, resource=self.resource,
                          attributes=attributes or {}, kind=self._kinds[kind],
                          status=self._error if error else self._unset, start_time=start,
                          end_time=end, instrumentation_scope=self.scope)

    def _trace_state(self, header: str | None) -> Any:
        if header is None:
            return None
        state = self._states.get(header)
        if state is None:
            if len(self._states) > 1000:
                self._states.clear()
            state = self._states[header] = self._state.from_header([header])
        return state

    def shutdown(self) -> None:
        self.exporter.shutdown()  # type: ignore[no-untyped-call]  # unannotated in the SDK


def _hashed(resource: Any) -> Any:
    """``resource`` with its hash computed once: the SDK's encoder groups spans by resource,
    hashing it per span, and Resource.__hash__ JSON-encodes every attribute each time."""
    from opentelemetry.sdk.resources import Resource

    class HashedResource(Resource):
        def __init__(self, attributes: Any, schema_url: str | None = None) -> None:
            super().__init__(attributes, schema_url)
            self._hash = super().__hash__()

        def __hash__(self) -> int:
            return self._hash

        def __eq__(self, other: object) -> bool:
            return super().__eq__(other)

    return HashedResource(resource.attributes, resource.schema_url)


def _setup_logging() -> None:
    """The SDK's warnings (an unreachable collector) and ours, as the server's JSON lines on
    the stderr the two share."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    for name in ("opentelemetry", "ferrohsm"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def _step_aside() -> None:
    """A lower priority, and off the server's core when the server is pinned to one
    ([server] pin_cpu, processes): the child inherited that affinity."""
    try:
        os.nice(NICENESS)
    except OSError:
        pass
    try:
        pinned = os.sched_getaffinity(0)
        others = set(range(os.cpu_count() or 1)) - pinned
        if others:
            os.sched_setaffinity(0, others)
    except OSError:  # a cpuset that allows only the server's cores: share them
        pass


if __name__ == "__main__":
    sys.exit(main())
