"""W3C Trace Context: valid traceparent headers give the parent, everything else starts a new
trace (ignored, never an error); tracestate is kept as received."""

from __future__ import annotations

import logging

import pytest

from ferrohsm.telemetry.tracecontext import (
    MAX_TRACESTATE,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    traceparent,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def test_a_valid_traceparent_names_the_parent_and_keeps_tracestate() -> None:
    parent = parse_traceparent([f"00-{TRACE}-{SPAN}-01"], ["congo=t61rcWkgMzE", "rojo=00f067"])
    assert parent is not None
    assert (parent.trace_id, parent.span_id, parent.flags) == (TRACE, SPAN, 1)
    assert parent.tracestate == "congo=t61rcWkgMzE,rojo=00f067"
    assert traceparent(parent.trace_id, parent.span_id, parent.flags) == f"00-{TRACE}-{SPAN}-01"


def test_a_later_version_is_read_as_version_00_allows() -> None:
    parent = parse_traceparent([f"cc-{TRACE}-{SPAN}-00-what-the-future-holds"])
    assert parent is not None and parent.flags == 0


@pytest.mark.parametrize("value", [
    f"00-{TRACE}-{SPAN}-01-extra",          # version 00 has exactly four fields
    f"ff-{TRACE}-{SPAN}-01",                # version ff is invalid
    f"00-{'0' * 32}-{SPAN}-01",             # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",            # all-zero span id
    f"00-{TRACE.upper()}-{SPAN}-01",        # upper case hex
    f"00-{TRACE[:-1]}-{SPAN}-01",           # short
    f"00-{TRACE}-{SPAN}-1",
    f"cc-{TRACE}-{SPAN}-01.more",
    "", "garbage",
])
def test_invalid_traceparent_is_ignored(value: str) -> None:
    assert parse_traceparent([value]) is None


def test_repeated_traceparent_is_ignored_and_one_oversized_member_dropped() -> None:
    assert parse_traceparent([f"00-{TRACE}-{SPAN}-01"] * 2) is None
    assert parse_traceparent(None) is None
    parent = parse_traceparent([f"00-{TRACE}-{SPAN}-01"], ["a=" + "x" * MAX_TRACESTATE])
    assert parent is not None and parent.tracestate is None
    parent = parse_traceparent([f"00-{TRACE}-{SPAN}-01"], ["a=b\x00"])
    assert parent is not None and parent.tracestate is None


def test_a_tracestate_over_the_limit_is_cut_by_whole_members() -> None:
    """W3C: a vendor cuts an over-long list by whole members, first any over 128 characters,
    then from the end; never the whole header for one member too many."""
    members = [f"v{n:02d}=" + "x" * 28 for n in range(16)]  # 16 x 32 characters: 527 joined
    parent = parse_traceparent([f"00-{TRACE}-{SPAN}-01"], [",".join(members)])
    assert parent is not None and parent.tracestate == ",".join(members[:15])
    long = "big=" + "y" * 200
    parent = parse_traceparent([f"00-{TRACE}-{SPAN}-01"],
                               [",".join([members[0], long, *members[1:12]])])
    assert parent is not None and parent.tracestate == ",".join(members[:12])
    within = ",".join(members[:15])
    assert parse_traceparent([f"00-{TRACE}-{SPAN}-01"], [within]).tracestate == within  # type: ignore[union-attr]


def test_new_ids_are_lowercase_hex_nonzero_and_distinct() -> None:
    traces = {new_trace_id() for _ in range(200)}
    spans = {new_span_id() for _ in range(200)}
    assert len(traces) == 200 and len(spans) == 200
    assert all(len(t) == 32 and int(t, 16) and t == t.lower() for t in traces)
    assert all(len(s) == 16 and int(s, 16) and s == s.lower() for s in spans)


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "hsm"}, False),  # naming the service alone exports nothing
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
])
def test_export_is_on_only_when_the_standard_variables_ask(env: dict[str, str],
                                                           on: bool) -> None:
    from ferrohsm.telemetry.tracing import enabled, from_environment
    assert enabled(env) is on
    if not on:
        assert from_environment(env) is None


def test_standard_variables_not_applied_are_said_at_start(
        caplog: pytest.LogCaptureFixture) -> None:
    """Span limits and other propagators were ignored without a word (an outside tester)."""
    from ferrohsm.telemetry.tracing import from_environment
    with caplog.at_level(logging.WARNING, logger="ferrohsm.telemetry"):
        from_environment({"OTEL_PROPAGATORS": "tracecontext,b3",
                          "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "8"})  # export off: no limits
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "OTEL_PROPAGATORS=b3: only W3C trace context" in said[0], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ferrohsm.telemetry"):
        tracer = from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                                   "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "3",
                                   "OTEL_PROPAGATORS": "tracecontext,baggage"})
    if tracer is not None:
        tracer.shutdown()
    said = [r.getMessage() for r in caplog.records if "not applied" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT: not"), said


def test_sampling_follows_otel_traces_sampler_and_a_sampled_caller(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With a ratio of 0 a request of its own is sampled out (no span recorded, so no children
    and no ids are made for it), while a caller's sampled traceparent is still honoured."""
    from ferrohsm.telemetry import tracing
    from ferrohsm.telemetry.tracecontext import Parent
    from ferrohsm.telemetry.tracing import from_environment
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    tracer = from_environment()
    assert tracer is not None
    try:
        request = ("GET", "/x", "::1", "req-1", None, None)
        assert tracer.start(None, request) is None
        span = tracer.start(Parent(TRACE, SPAN, 1, "k=v"), request)
        assert span is not None
        assert tracing.span_ids(span) == (TRACE, span[tracing.SPAN_ID], "01")
        assert span[tracing.SPAN_ID] != SPAN
        assert tracer.start(Parent(TRACE, SPAN, 0), request) is None
        # the application's call, the request's values one by one
        asked: list[object] = []

        def values(source: object) -> tuple[object, ...]:
            asked.append(source)
            return request

        assert tracer.begin(None, values, "req") is None
        assert tracer.begin(Parent(TRACE, SPAN, 0), values, "req") is None
        assert asked == []  # a request left out: nothing of it gathered
        opened = tracer.begin(Parent(TRACE, SPAN, 1, "k=v"), values, "req")
        assert asked == ["req"]
        assert opened is not None and opened[tracing.VALUES] == request
        trace_id, span_id, parent_id, state = opened[:4]
        assert (trace_id, parent_id, state) == (TRACE, SPAN, "k=v")
        assert len(span_id) == 16 and span_id != SPAN
    finally:
        tracer.shutdown()
    assert tracer.stats()["sent"] == 0  # nothing ended, nothing recorded


def test_id_blocks_are_hex_of_the_right_width_and_never_zero(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ferrohsm.telemetry import tracecontext
    block = tracecontext.new_id_block(4)
    assert len(block) == 96 and int(block, 16) >= 0
    assert len(tracecontext.new_id_block(4, trace=False)) == 64
    draws = iter([0, 1 << 64, (1 << 128) | 1, (5 << 64) | 7])  # zero trace, zero span, then fine

    class Stub:
        def getrandbits(self, bits: int) -> int:
            return next(draws)

    monkeypatch.setattr(tracecontext, "_ids", Stub())
    assert tracecontext.new_id_block(1) == f"{(1 << 128) | 1:048x}"
    assert tracecontext.new_id_block(2, trace=False) == f"{(5 << 64) | 7:032x}"


@pytest.mark.parametrize("value, warned", [("console", True), ("otlp,zipkin", True),
                                           ("otlp", False), (" OTLP ", False)])
def test_an_unsupported_traces_exporter_is_said_not_ignored(
        value: str, warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    from ferrohsm.telemetry.tracing import from_environment
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_EXPORTER": value}
    with caplog.at_level(logging.WARNING, logger="ferrohsm.telemetry"):
        tracer = from_environment(env)
    assert tracer is not None
    tracer.shutdown()
    said = [r.getMessage() for r in caplog.records if "OTEL_TRACES_EXPORTER" in r.getMessage()]
    assert bool(said) is warned
    if warned:
        assert "only otlp is supported" in said[0]


def test_root_ids_come_from_a_pool_distinct_nonzero_and_new_after_a_fork(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Root requests' ids are drawn 256 at a time; a forked child (processes = N) must not
    hand out the ids its parent drew before the fork."""
    import os

    from ferrohsm.telemetry import tracecontext
    ids = [tracecontext.new_root_ids() for _ in range(600)]  # across refills
    assert len(set(ids)) == 600
    assert all(len(i) == 48 and i == i.lower() and int(i[:32], 16) and int(i[32:], 16)
               for i in ids)
    pending = list(tracecontext._roots)  # what the parent would hand out next
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.write(write, tracecontext.new_root_ids().encode())
        os._exit(0)
    os.close(write)
    child_id = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert len(child_id) == 48 and child_id not in pending and child_id not in ids
    draws = iter([bytes(24) + bytes(range(1, 25))])  # an all-zero block, then a good one

    class Stub:
        def randbytes(self, n: int) -> bytes:
            return next(draws)

    monkeypatch.setattr(tracecontext, "_ids", Stub())
    monkeypatch.setattr(tracecontext, "ROOT_DRAW", 2)
    monkeypatch.setattr(tracecontext, "_roots", [])
    assert tracecontext.new_root_ids() == bytes(range(1, 25)).hex()
