"""Spans exported over OTLP/HTTP through the official OpenTelemetry SDK, only when configured.

``from_environment()`` returns None unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (and ``OTEL_SDK_DISABLED`` is not true,
``OTEL_TRACES_EXPORTER`` is not ``none``). Then, and only then, the SDK is imported (the
``otel`` extra): the SDK itself reads every other standard variable (OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS / _TIMEOUT / _COMPRESSION / _CERTIFICATE,
OTEL_TRACES_SAMPLER and _ARG, OTEL_BSP_*). When it is off, the request path makes no span
object at all: it checks one attribute for None.

Per request: a SERVER span named "{method} {route}" (parent: the valid ``traceparent``, with its
``tracestate``), and INTERNAL children ``authenticate``, the key operation (``ferrohsm.<op>``)
and ``audit.flush`` (from the write of the request's audit records to their fsync). Spans are
batched and exported by the SDK's BatchSpanProcessor thread, never on the event loop.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from .tracecontext import Parent

log = logging.getLogger("ferrohsm.telemetry")
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SCOPE = "ferrohsm"


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask for OTLP export of traces."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def from_environment(environ: Mapping[str, str] | None = None) -> Tracer | None:
    """A Tracer exporting over OTLP/HTTP when configured, else None (nothing imported)."""
    if not enabled(environ):
        return None
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    if protocol.strip() != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; exporting with "
                    "http/protobuf", protocol[:40])
    return Tracer()


class Tracer:
    """The SDK's tracer provider, batch processor and OTLP/HTTP exporter (imported here)."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
        from opentelemetry.trace.span import TraceState
        from opentelemetry.trace.status import Status, StatusCode

        from .. import __version__
        attributes: dict[str, Any] = {"service.version": __version__}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = "ferrohsm"
        self.provider = TracerProvider(resource=Resource.create(attributes))
        # The SDK's default queue (2048 spans) overflows within a second at a few thousand
        # requests a second (4 spans each); OTEL_BSP_MAX_QUEUE_SIZE still decides when set.
        queue = None if os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE") else 32768
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(),
                                                            max_queue_size=queue))
        self.tracer = self.provider.get_tracer(SCOPE, __version__)
        self._t = trace
        self._remote = (NonRecordingSpan, SpanContext, TraceFlags, TraceState)
        self.SERVER, self.INTERNAL = SpanKind.SERVER, SpanKind.INTERNAL
        self.error_status = Status(StatusCode.ERROR)

    def start(self, name: str, parent: Parent | None, attributes: dict[str, Any],
              start_ns: int | None = None) -> RequestSpan:
        """The request's SERVER span (a child of ``parent`` when there is one)."""
        context = None
        if parent is not None:
            non_recording, span_context, flags, state = self._remote
            remote = span_context(int(parent.trace_id, 16), int(parent.span_id, 16),
                                  is_remote=True, trace_flags=flags(parent.flags),
                                  trace_state=state.from_header([parent.tracestate])
                                  if parent.tracestate else None)
            context = self._t.set_span_in_context(non_recording(remote))
        span = self.tracer.start_span(name, context=context, kind=self.SERVER,
                                      attributes=attributes, start_time=start_ns)
        return RequestSpan(self, span)

    def shutdown(self) -> None:
        """Export what is queued, then stop the processor (at server shutdown)."""
        try:
            self.provider.shutdown()
        except Exception:  # an unreachable collector must not fail the shutdown
            log.warning("exporting the last spans failed", exc_info=True)


class RequestSpan:
    """One request's server span and its children."""

    __slots__ = ("_context", "_flush", "_tracer", "ended", "error_type", "recording", "span")

    def __init__(self, tracer: Tracer, span: Any) -> None:
        self._tracer = tracer
        self.span = span
        self._context: Any = None
        self._flush: Any = None
        self.ended = False
        self.recording: bool = span.is_recording()  # False: sampled out (OTEL_TRACES_SAMPLER)
        self.error_type: str | None = None  # the refusal's code, once the app knows it

    def ids(self) -> tuple[str, str, str]:
        """trace id, span id and flags (hex) for the log line and the audit record."""
        ctx = self.span.get_span_context()
        return (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"),
                "01" if ctx.trace_flags & 1 else "00")

    def child(self, name: str, attributes: dict[str, Any] | None = None) -> Any:
        """Start an INTERNAL child span; the caller ends it (``span.end()``)."""
        if self._context is None:
            self._context = self._tracer._t.set_span_in_context(self.span)
        return self._tracer.tracer.start_span(name, context=self._context,
                                              kind=self._tracer.INTERNAL, attributes=attributes)

    def begin_flush(self, records: int) -> None:
        """The request's audit records are written; their flush (fsync) begins."""
        if self._flush is None:
            self._flush = self.child("audit.flush", {"ferrohsm.audit.records": records})

    def finish(self, status: int, error_type: str | None = None) -> None:
        """End the flush span (if any) and the server span with the final status."""
        if self.ended:
            return
        self.ended = True
        end = time.time_ns()
        if self._flush is not None:
            self._flush.end(end)
        span = self.span
        span.set_attribute("http.response.status_code", status)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
        if status >= 500:
            span.set_status(self._tracer.error_status)
        span.end(end)

    def set(self, name: str, value: Any) -> None:
        self.span.set_attribute(name, value)
