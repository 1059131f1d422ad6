"""The span exporter child process: span records in on stdin, OTLP/HTTP out, via the SDK.

Started once by telemetry/spanpipe.py with this interpreter and the server's sys.path. Reads
frames (4-byte big-endian length, then a ``marshal``-encoded list of tracing.RequestRecord
tuples) until end of input, encodes each record's spans, drawing the children's ids, in OTLP
``ExportTraceServiceRequest``s of the batch size (otlpwire.py; Resource: service.name,
service.version, OTEL_RESOURCE_ATTRIBUTES and the SDK's detectors; instrumentation scope
"ferrohsm") and sends each with the SDK's ``OTLPSpanExporter``'s client, which reads the
standard OTEL_EXPORTER_OTLP_* variables itself (endpoint, headers, timeout, compression,
certificate). Everything expensive about a span happens here, at a lower priority and, when
the server is pinned to a core, on the other cores.

It ignores SIGINT and SIGTERM: it stops when the server closes the pipe, after exporting what
it was handed (the server waits for that, bounded). The records come from the server that
started it, through a pipe only the two hold: ``marshal`` reads nothing else.

A collector that is down or refuses: the SDK would log every retry of every batch (three
warnings and an error a batch, for as long as the backlog lasts). Its messages are kept, not
printed; this process says once a minute how many spans it could not deliver and the latest
cause, and once when delivery works again. It tells the server its running counts of spans
not delivered and delivered on stdout (a line, "failed exported"): the server shows the first on
/metrics (``ferrohsm_trace_spans_total{outcome="failed"}``), and counts as failed whatever a
child it replaced had been handed and neither delivered nor failed.
"""

from __future__ import annotations

import logging
import marshal
import os
import signal
import struct
import sys
import time
from typing import Any, BinaryIO

from .logs import JSONFormatter
from .otlpwire import SERVER, SpanWriter
from .spanpipe import batch_settings
from .tracecontext import new_span_bytes
from .tracing import Record, spans_of

log = logging.getLogger("ferrohsm.telemetry.otlpexport")
HEADER = struct.Struct(">I")
NICENESS = 10
REPORT_EVERY = 60.0  # seconds between two warnings that spans are not being delivered
LATEST_LIMIT = 160  # characters of the SDK's latest complaint quoted in that warning (a log
# field is cut at 256, and the warning's own words come first)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    problems = _setup_logging()
    _step_aside()
    try:
        exporter = Exporter(problems)
    except ImportError as exc:
        log.error("OTLP export needs the otel extra (pip install 'ferrohsm[otel]'): %s", exc)
        return 3
    _background()
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
    """Records to OTLP/HTTP: encoded by otlpwire.py, sent by the SDK's exporter's client.

    The SDK's ``OTLPSpanExporter`` still owns everything about the transport (the
    OTEL_EXPORTER_OTLP_* endpoint, headers, timeout, compression and certificates, retries and
    backoff); only the encoding is ours, because the SDK's costs about eight times as much CPU
    (otlpwire.py). Its client is reached through ``_client``, an attribute of the version pinned
    in pyproject.toml; an SDK without it gets the SDK's own path (``ReadableSpan``s and
    ``export``), slower and otherwise the same.
    """

    def __init__(self, problems: LatestProblem | None = None) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.trace import TraceState

        from .. import __version__
        resource = Resource.create({"service.version": __version__})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            # neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names the service
            resource = resource.merge(Resource({"service.name": "ferrohsm"}))
        self.resource, self.version = resource, __version__
        self.exporter = OTLPSpanExporter()
        self._state = TraceState
        self._states: dict[str, str] = {}
        self.writer = SpanWriter(resource.attributes, "ferrohsm", __version__,
                                 resource_schema_url=resource.schema_url or "",
                                 trace_state=self.trace_state)
        client = getattr(self.exporter, "_client", None)
        _lighter_transport(client)
        self._send = getattr(client, "export", None)
        self._sdk: SdkSpans | None = None if self._send else SdkSpans(self)
        self.exported = self.failed = 0
        self.batch = batch_settings(os.environ, warn=False)[1]  # spans an OTLP request
        self.problems = problems or LatestProblem()
        self.problems.clear()  # what the SDK said of its settings is no export's cause
        self._warned_at: float | None = None  # when "not delivered" was last said; None: working

    def export(self, records: list[Any]) -> None:
        """A frame's request records: their spans, in OTLP requests of the batch size."""
        size = self.batch
        if self._sdk is None:
            encoded, lost = self.writer.request_spans(records, new_span_bytes)
            self._lost(lost)
            for at in range(0, len(encoded), size):
                chunk = encoded[at:at + size]
                self._account(len(chunk), len(chunk), self._post(self.writer.wrap(chunk)))
            return
        spans: list[Record] = []
        lost = 0
        for record in records:
            try:
                spans += spans_of(record)
            except (TypeError, ValueError):  # a bug upstream: lose that record, not the frame
                lost += 1
        self._lost(lost)
        for at in range(0, len(spans), size):
            self.send(spans[at:at + size])

    def send(self, records: list[Any]) -> None:
        """Spans (tracing.Record) as one OTLP request."""
        if self._sdk is not None:
            sent, count = self._sdk.export(records)
        else:
            data, count = self.writer.request(records)
            sent = bool(count) and self._post(data)
        self._account(len(records), count, sent)

    def _post(self, data: bytes) -> bool:
        return bool(self._send(data).success)  # type: ignore[misc]

    def _lost(self, records: int) -> None:
        """Malformed records (a bug upstream), counted as spans not delivered."""
        if records:
            self.failed += records
            report_failed(self.failed, self.exported)

    def _account(self, handed: int, encoded: int, sent: bool) -> None:
        self.failed += handed - encoded
        if sent:
            self.exported += encoded
        else:  # the SDK has told the LatestProblem handler why
            self.failed += encoded
        report_failed(self.failed, self.exported)  # every request: the server's account of
        self._say(sent)                            # what a replaced child still held

    def _say(self, sent: bool) -> None:
        """At most one warning a minute while spans are not delivered; one when they are again."""
        now = time.monotonic()
        if sent:
            if self._warned_at is not None:
                log.warning("span export works again (%d spans were not delivered)", self.failed)
                self._warned_at = None
            self.problems.clear()
        elif self._warned_at is None or now - self._warned_at >= REPORT_EVERY:
            self._warned_at = now
            log.warning("span export failing: %d spans not delivered so far (latest: %s)",
                        self.failed, self.problems.latest or "no reason given")

    def trace_state(self, header: str) -> str:
        """A W3C tracestate header as the SDK re-serializes it (empty when it is invalid)."""
        state = self._states.get(header)
        if state is None:
            if len(self._states) > 1000:
                self._states.clear()
            parsed = self._state.from_header([header])
            state = self._states[header] = ",".join(f"{k}={v}" for k, v in parsed.items())
        return state

    def shutdown(self) -> None:
        self.exporter.shutdown()  # type: ignore[no-untyped-call]  # unannotated in the SDK


def _lighter_transport(client: Any) -> None:
    """Put the stdlib transport (otlphttp.py) in place of the SDK's requests one, where it
    carries exports as that one would (otlphttp.wanted: no proxy, no Basic credentials, no
    credential provider)."""
    from . import otlphttp  # it imports the SDK, which may be missing
    transport = getattr(client, "_transport", None)
    endpoint = getattr(client, "_endpoint", None)
    if transport is None or not isinstance(endpoint, str) or not otlphttp.wanted(endpoint):
        return
    lighter = otlphttp.from_sdk(transport)
    if lighter is not None:
        transport.close()
        client._transport = lighter


class SdkSpans:
    """The SDK's own path: each record as a ``ReadableSpan``, exported with ``export``."""

    def __init__(self, owner: Exporter) -> None:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
        from opentelemetry.trace.status import Status, StatusCode

        self.owner = owner
        self.resource = _hashed(owner.resource)
        self.scope = InstrumentationScope("ferrohsm", owner.version)
        self._span, self._context = ReadableSpan, SpanContext
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._kinds = {k.value: k for k in SpanKind}
        self._error, self._unset = Status(StatusCode.ERROR), Status(StatusCode.UNSET)

    def export(self, records: list[Any]) -> tuple[bool, int]:
        """(exported, spans made); a malformed record (a bug) is lost, not the rest."""
        spans = []
        for record in records:
            try:
                spans.append(self.span(record))
            except (TypeError, ValueError):
                pass
        if not spans:
            return False, 0
        return self.owner.exporter.export(spans).name == "SUCCESS", len(spans)

    def span(self, record: tuple[Any, ...]) -> Any:
        """One tracing.Record as the SDK's ReadableSpan."""
        trace_hex, span_hex, parent_hex, name, kind, start, end, attributes, error, state = record
        trace_id = int(trace_hex, 16)
        trace_state = None
        if state is not None:
            trace_state = self.owner._state.from_header([state])
        context = self._context(trace_id, int(span_hex, 16), False, self._sampled, trace_state)
        parent = None
        if parent_hex is not None:  # a SERVER span's parent is the caller's (remote) span
            parent = self._context(trace_id, int(parent_hex, 16), kind == SERVER,
                                   self._sampled, trace_state)
        return self._span(name=name, context=context, parent=parent, resource=self.resource,
                          attributes=attributes or {}, kind=self._kinds[kind],
                          status=self._error if error else self._unset, start_time=start,
                          end_time=end, instrumentation_scope=self.scope)


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


class LatestProblem(logging.Handler):
    """Keeps the SDK's latest warning or error instead of printing each (module docstring).
    Its closing "Failed to export spans batch" names no cause: a retry's warning before it
    ("connection refused", "HTTP 403") is kept over it."""

    GENERIC = "Failed to export"

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.latest = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().replace("\n", " ")
        if len(message) > LATEST_LIMIT:  # whole words: the warning line must not cut it
            message = message[:LATEST_LIMIT].rsplit(" ", 1)[0] + " …"
        if not (message.startswith(self.GENERIC) and self.latest):
            self.latest = message

    def clear(self) -> None:
        self.latest = ""


def report_failed(count: int, exported: int) -> None:
    """Tell the server the running counts of spans not delivered and delivered (a line on
    stdout: "failed exported"). Never waits: a server that has not read the last lines yet
    gets later, larger counts."""
    try:
        os.write(sys.stdout.fileno(), f"{count} {exported}\n".encode("ascii"))
    except (BlockingIOError, OSError, ValueError):
        pass


def _setup_logging() -> LatestProblem:
    """Ours as the server's JSON lines on the stderr the two share; the SDK's kept."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    problems = LatestProblem()
    for name, target in (("opentelemetry", problems), ("ferrohsm", handler)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [target]
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    try:
        os.set_blocking(sys.stdout.fileno(), False)
    except (OSError, ValueError):
        pass
    return problems


def _background() -> None:
    """From now on (the SDK loaded) run only when the core has nothing else to run
    (SCHED_IDLE): a task waking there, the server's audit fsync worker above all, takes the
    core at once. At nice 10 it waited behind this process's slice, the server's fsyncs took
    longer, and exported spans cost it about 16 µs of CPU a request instead of about 9
    (bench/RESULTS.md, 2026-12-06, eighth session). Where every core is busy serving, spans
    then wait, and are dropped once the pipe is full (counted on /metrics), rather than take
    CPU from requests. Not before the SDK is loaded: a start-up on busy cores would take
    minutes. Stays at nice 10 where the policy cannot be set."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        pass


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
