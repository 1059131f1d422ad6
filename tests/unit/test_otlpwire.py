"""otlpwire.py writes what the SDK's encoder would: decoded with opentelemetry-proto, our bytes
equal the SDK's encoding of the same records, and the exporter child sends them over real HTTP."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from ferrohsm.telemetry import otlpexport, tracecontext, tracing
from ferrohsm.telemetry.otlpwire import varint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/otlpreceiver.py
from otlpreceiver import Receiver

TRACE, SPAN, PARENT = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "00f067aa0ba902b7"
STATE = "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[otlpexport.Exporter]:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,team=sec")
    exp = otlpexport.Exporter()
    yield exp
    exp.shutdown()


def decoded(data: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(data)
    return message


def sdk_bytes(exp: otlpexport.Exporter, records: list[tuple[Any, ...]]) -> bytes:
    sdk = otlpexport.SdkSpans(exp)
    return bytes(encode_spans([sdk.span(r) for r in records]).SerializeToString())


def request_records() -> list[tuple[Any, ...]]:
    attributes = {"http.request.method": "POST", "url.path": "/v1/keys/k/encrypt",
                  "server.port": 8443, "http.response.status_code": 200,
                  "user_agent.original": "naïve/1.0 ✓"}
    return [
        (TRACE, SPAN, PARENT, "POST", 1, 1_700_000_000_000_000_000, 1_700_000_000_000_100_000,
         attributes, False, STATE),
        (TRACE, "1111111111111111", SPAN, "authenticate", 0, 1_700_000_000_000_001_000,
         1_700_000_000_000_002_000, None, False, STATE),
        (TRACE, "2222222222222222", SPAN, "ferrohsm encrypt", 0, 1, 2,
         {"error.type": "key_disabled"}, True, None),
        (TRACE, "3333333333333333", None, "GET", 1, 5, 9,
         {"ratio": 0.25, "flag": True, "count": -3, "tags": ["a", "b"], "sizes": (1, 2),
          "gone": None, "map": {"a": 1}, "huge": 1 << 70}, False, None),
    ]


def test_varint_matches_protobuf() -> None:
    assert varint(0) == b"\x00" and varint(127) == b"\x7f" and varint(300) == b"\xac\x02"
    assert varint(-1) == b"\xff" * 9 + b"\x01"  # int64 -1: ten bytes


def test_request_spans_equal_the_sdk_encoding(exporter: otlpexport.Exporter) -> None:
    records = request_records()
    data, count = exporter.writer.request(records)
    assert count == 4
    ours, theirs = decoded(data), decoded(sdk_bytes(exporter, records))
    assert ours == theirs
    spans = ours.resource_spans[0].scope_spans[0].spans
    assert spans[0].flags == 0x300 and spans[1].flags == 0x100  # remote parent, local parent
    assert spans[0].trace_state == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert spans[2].status.code == 2 and spans[3].status.code == 0
    assert [a.key for a in spans[3].attributes] == ["ratio", "flag", "count", "tags", "sizes",
                                                    "gone", "map"]
    assert exporter.writer.skipped == 1  # an int beyond int64
    resource = {a.key: a.value.string_value for a in ours.resource_spans[0].resource.attributes}
    assert resource["team"] == "sec" and resource["service.name"] == "ferrohsm"


def test_cached_attributes_keep_their_types(exporter: otlpexport.Exporter) -> None:
    """True == 1 == 1.0 in Python: the cache must not hand one type's encoding to another."""
    records = [(TRACE, SPAN, None, "x", 0, 1, 2, {"v": value}, False, None)
               for value in (1, True, 1.0, 1, True)]
    spans = decoded(exporter.writer.request(records)[0]).resource_spans[0].scope_spans[0].spans
    kinds = [s.attributes[0].value.WhichOneof("value") for s in spans]
    assert kinds == ["int_value", "bool_value", "double_value", "int_value", "bool_value"]


def test_text_that_is_not_unicode_is_skipped_not_sent(exporter: otlpexport.Exporter) -> None:
    """A lone surrogate cannot be UTF-8: that attribute is dropped (as the SDK drops it), and a
    span named with one is left out, where the SDK would fail the whole batch."""
    attributes = {"ok": "fine", "bad": "x\ud800", "\udcff": 1}
    good = (TRACE, SPAN, None, "GET", 1, 1, 2, attributes, False, None)
    data, count = exporter.writer.request([good, (TRACE, SPAN, None, "\ud800", 0, 1, 2, None,
                                                  False, None)])
    assert count == 1
    assert decoded(data) == decoded(sdk_bytes(exporter, [good]))
    [span] = decoded(data).resource_spans[0].scope_spans[0].spans
    assert [a.key for a in span.attributes] == ["ok"]


def test_a_malformed_record_is_left_out_not_the_batch(exporter: otlpexport.Exporter) -> None:
    good = request_records()[1]
    bad_id = (TRACE[:-2], *good[1:])
    not_hex = (TRACE, "zz" * 8, *good[2:])
    short = good[:5]
    negative_time = (*good[:5], -1, *good[6:])
    data, count = exporter.writer.request([bad_id, good, not_hex, short, negative_time])
    assert count == 1
    assert decoded(data).resource_spans[0].scope_spans[0].spans[0].name == "authenticate"


hex_id = st.binary(min_size=8, max_size=8).map(bytes.hex)
scalars = st.one_of(st.none(), st.text(max_size=30), st.booleans(), st.integers(-(1 << 65), 1 << 65),
                    st.floats(allow_nan=False), st.binary(max_size=8))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
records = st.tuples(
    st.binary(min_size=16, max_size=16).map(bytes.hex), hex_id, st.none() | hex_id,
    st.text(min_size=1, max_size=40), st.sampled_from([0, 1]),
    st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1),
    st.none() | st.dictionaries(st.text(min_size=1, max_size=20), values, max_size=6),
    st.booleans(), st.none() | st.sampled_from(["a=1", "a=1,b=2", "bad state", STATE]))


@settings(max_examples=150, deadline=None)
@given(st.lists(records, min_size=1, max_size=8))
def test_any_records_equal_the_sdk_encoding(batch: list[tuple[Any, ...]]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        exp = otlpexport.Exporter()
    try:
        data, count = exp.writer.request(batch)
        assert count == len(batch)
        assert decoded(data) == decoded(sdk_bytes(exp, batch))
    finally:
        exp.shutdown()


text_or_none = st.none() | st.text(max_size=12)
children = st.lists(st.tuples(
    st.sampled_from(["authenticate", "ferrohsm encrypt", "audit.flush", "n\udcff"]),
    st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1), text_or_none,
    st.none() | st.dictionaries(st.text(min_size=1, max_size=8), values, max_size=2)),
    max_size=4)
request_record_values = st.tuples(
    st.binary(min_size=16, max_size=16).map(bytes.hex), hex_id, st.none() | hex_id,
    st.none() | st.sampled_from(["a=1", "a=1,b=2", "bad state", STATE]),
    st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1),
    st.tuples(st.sampled_from(["GET", "POST"]), st.text(max_size=20), text_or_none,
              st.text(max_size=12), text_or_none, st.none() | st.integers(1, 65535)),
    text_or_none, text_or_none, st.none() | st.sampled_from([200, 404, 503]), text_or_none,
    st.none() | st.dictionaries(st.text(min_size=1, max_size=8), values, max_size=2),
    children.map(lambda kids: [value for kid in kids for value in kid]))


@settings(max_examples=150, deadline=None)
@given(st.lists(request_record_values, min_size=1, max_size=4))
def test_request_records_encode_as_their_spans_do(batch: list[tuple[Any, ...]]) -> None:
    """The exporter's direct path (request_spans) writes the bytes that spans_of's span
    records would, child ids included when both draw the same ones; a record that cannot be
    encoded (a name that is not Unicode) is lost whole on both paths."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        exp = otlpexport.Exporter()
    try:
        for record in batch:  # each from the same ids, on both paths
            hex_ids, raw_ids = same_ids()
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(tracing, "new_span_id", hex_ids)
                try:
                    expected = [exp.writer.span(span) for span in tracing.spans_of(record)]
                except ValueError:
                    expected = []
            direct, lost = exp.writer.request_spans([record], raw_ids)
            assert (direct, lost) == (expected, 0 if expected else 1)
        direct, lost = exp.writer.request_spans(batch, tracecontext.new_span_bytes)
        decoded(exp.writer.wrap(direct))  # a message a collector can parse
    finally:
        exp.shutdown()


def same_ids() -> tuple[Callable[[], str], Callable[[int], bytes]]:
    """Two draws of the ids 1, 2, 3...: in hex (spans_of), and as bytes (request_spans, n
    at a time)."""
    hex_ids, raw_ids = iter(range(1, 100)), iter(range(1, 100))
    return (lambda: f"{next(hex_ids):016x}"), (
        lambda n: b"".join(next(raw_ids).to_bytes(8, "big") for _ in range(n)))


def test_both_paths_send_the_same_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our encoding through the SDK's client, and the SDK's path for an SDK without one."""
    collector = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    try:
        exp = otlpexport.Exporter()
        assert exp._sdk is None  # the pinned SDK has the client we send with
        exp.send(request_records())
        exp._sdk = otlpexport.SdkSpans(exp)
        exp.send(request_records())
        exp.shutdown()
    finally:
        collector.close()
    assert exp.exported == 8 and exp.failed == 0
    ours, sdk = collector.received
    assert ours == sdk


def test_an_unreachable_collector_counts_failed_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    exp = otlpexport.Exporter()
    try:
        exp.send(request_records())
    finally:
        exp.shutdown()
    assert exp.exported == 0 and exp.failed == 4


def test_a_frame_of_request_records_goes_out_in_requests_of_the_batch_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The child makes each request record into its spans and sends them in OTLP requests of
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE spans; a malformed record is lost and counted, not the
    frame."""
    collector = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "5")
    child = ["authenticate", 10, 20, None, None]
    record = (TRACE, SPAN, None, None, 5, 50, ("POST", "/v1/x", "::1", "r", None, None),
              "/v1/x", None, 200, None, None, child * 2)
    try:
        exp = otlpexport.Exporter()
        nameless = (*record[:12], [None, 10, 20, None, None])
        exp.export([record, ("malformed",), record, nameless, record])
        exp.shutdown()
    finally:
        collector.close()
    assert [sum(len(s.spans) for r in m.resource_spans for s in r.scope_spans)
            for m in collector.received] == [5, 4]
    assert exp.exported == 9 and exp.failed == 2
    spans = collector.spans()
    assert len({s["span_id"] for s in spans}) == 7  # each child an id of its own, drawn there
    assert sorted(s["name"] for s in spans) == ["POST /v1/x"] * 3 + ["authenticate"] * 6
