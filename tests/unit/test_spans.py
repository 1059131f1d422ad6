"""Spans without the SDK in the serving process: the sampler (OTEL_TRACES_SAMPLER), the records
a request leaves, and the pipe to the exporter child (framing, a stuck child's dropped spans,
a dead child's restart), each with a real child process reading the pipe."""

from __future__ import annotations

import io
import marshal
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ferrohsm.telemetry import sampler as sampling
from ferrohsm.telemetry import tracing
from ferrohsm.telemetry.otlpexport import read_frame
from ferrohsm.telemetry.spanpipe import HEADER, SpanPipe, batch_settings, child_environment
from ferrohsm.telemetry.tracecontext import Parent
from ferrohsm.telemetry.tracing import INTERNAL, SERVER, Tracer, spans_of

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
LOW_ZERO = "f" * 16 + "0" * 16  # lower 64 bits 0: under every ratio above 0
LOW_MAX = "0" * 16 + "f" * 16  # lower 64 bits 2^64 - 1: under no ratio below 1


def sampler(name: str, arg: str | None = None) -> sampling.Sampler:
    env = {"OTEL_TRACES_SAMPLER": name} | ({"OTEL_TRACES_SAMPLER_ARG": arg} if arg else {})
    return sampling.from_environment(env)


# ---- the sampler -------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "arg", "root", "sampled_parent", "unsampled_parent"), [
    ("always_on", None, True, True, True),
    ("always_off", None, False, False, False),
    ("parentbased_always_on", None, True, True, False),
    ("parentbased_always_off", None, False, True, False),
    ("traceidratio", "1", True, True, True),
    ("traceidratio", "0", False, False, False),
    ("parentbased_traceidratio", "0", False, True, False),
    ("parentbased_traceidratio", "1", True, True, False),
])
def test_each_sampler_decides_as_the_specification_says(
        name: str, arg: str | None, root: bool, sampled_parent: bool,
        unsampled_parent: bool) -> None:
    chosen = sampler(name, arg)
    assert chosen.name == name
    assert chosen.root(TRACE) is root
    assert chosen.remote(Parent(TRACE, SPAN, 1)) is sampled_parent
    assert chosen.remote(Parent(TRACE, SPAN, 0)) is unsampled_parent


def test_traceidratio_compares_the_lower_64_bits_with_ratio_times_2_64() -> None:
    half = sampler("traceidratio", "0.5")
    assert half.bound == 1 << 63
    assert half.root(LOW_ZERO) and not half.root(LOW_MAX)
    assert half.root("0" * 16 + "7" + "f" * 15) and not half.root("0" * 16 + "8" + "0" * 15)
    # the upper half of the trace id plays no part; a parent's trace id is judged the same way
    assert half.remote(Parent(LOW_MAX, SPAN, 1)) is False
    tiny = sampler("traceidratio", "0.0001")
    sampled = sum(tiny.root(os.urandom(16).hex()) for _ in range(20000))
    assert sampled < 20  # about 2 expected


@pytest.mark.parametrize(("env", "name", "bound"), [
    ({}, "parentbased_always_on", 1 << 64),
    ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "parentbased_always_on", 1 << 64),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "traceidratio",
     1 << 64),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"}, "traceidratio",
     1 << 64),
    ({"OTEL_TRACES_SAMPLER": " TraceIdRatio ", "OTEL_TRACES_SAMPLER_ARG": "0.25"},
     "traceidratio", 1 << 62),
])
def test_unknown_samplers_and_bad_ratios_fall_back_as_the_sdk_does(
        env: dict[str, str], name: str, bound: int) -> None:
    chosen = sampling.from_environment(env)
    assert (chosen.name, chosen.bound) == (name, bound)


# ---- records through a real pipe ---------------------------------------------------------------

def copier(path: Path) -> list[str]:
    """A child that copies the pipe to ``path`` (what the exporter child would read)."""
    return [sys.executable, "-c", "import shutil, sys; shutil.copyfileobj(sys.stdin.buffer, "
            f"open({str(path)!r}, 'wb'))"]


def frames(path: Path) -> list[list[Any]]:
    stream, out = io.BytesIO(path.read_bytes()), []
    while (payload := read_frame(stream)) is not None:
        out.append(marshal.loads(payload))  # noqa: S302  written by this test's pipe
    return out


def test_a_request_leaves_its_spans_as_one_record(tmp_path: Path) -> None:
    out = tmp_path / "frames"
    tracer = Tracer(sampler("parentbased_always_on"), SpanPipe(copier(out), interval=0.05))
    request = ("POST", "/v1/x", "10.0.0.9", "req-1", None, 8443)
    try:
        span = tracer.start(Parent(TRACE, SPAN, 1, "k=v"), request)
        assert span is not None
        trace_id, span_id, flags = tracing.span_ids(span)
        assert (trace_id, flags) == (TRACE, "01") and len(span_id) == 16 and span_id != SPAN
        tracing.ended_child(span, "authenticate", time.time_ns(), "unauthenticated")
        tracing.begin_flush(span, 2)
        tracing.begin_flush(span, 5)  # once: the first one holds
        tracing.routed(span, "/v1/x", None, None)
        tracing.set_attribute(span, "ferrohsm.extra", True)
        tracer.finish(span, 503)
        tracer.finish(span, 200)  # once only
        assert tracer.start(Parent(TRACE, SPAN, 0), request) is None  # sampled out
        root = tracer.start(None, ("GET", "/", "::1", "req-2", "curl", None))
        assert root is not None and root[tracing.PARENT_ID] is None
        assert tracing.span_ids(root)[0] != TRACE
        tracer.finish(root, 200)
    finally:
        tracer.shutdown()
    records = [r for frame in frames(out) for r in frame]
    assert len(records) == 2  # one a request, however many spans it holds
    assert tracer.stats() == {"sent": 4, "dropped": 0, "failed": 0, "restarts": 0, "queued": 0}
    spans = [s for record in records for s in spans_of(record)]
    by_name = {s[3]: s for s in spans}
    server = by_name["POST /v1/x"]
    assert server[:3] == (TRACE, span_id, SPAN) and server[4] == SERVER
    assert server[7] == {
        "http.request.method": "POST", "url.path": "/v1/x", "url.scheme": "https",
        "client.address": "10.0.0.9", "network.peer.address": "10.0.0.9",
        "ferrohsm.request_id": "req-1", "server.port": 8443, "http.route": "/v1/x",
        "http.response.status_code": 503, "error.type": "503", "ferrohsm.extra": True}
    assert server[8] is True and server[9] == "k=v"  # status ERROR; tracestate kept
    for name in ("authenticate", "audit.flush"):
        child = by_name[name]
        assert child[0] == TRACE and child[2] == span_id and child[4] == INTERNAL
        assert server[5] <= child[5] <= child[6] <= server[6]
    assert by_name["authenticate"][7] == {"error.type": "unauthenticated"}
    assert by_name["authenticate"][8] is True  # a child that failed: status ERROR
    assert by_name["audit.flush"][7] == {"ferrohsm.audit.records": 2}
    assert by_name["audit.flush"][8] is False
    assert len({s[1] for s in spans}) == 4  # distinct span ids
    get = by_name["GET"]
    assert get[2] is None and get[7] is not None and get[7]["user_agent.original"] == "curl"
    assert "server.port" not in get[7]  # None: left out, as the SDK leaves it



def test_a_stuck_child_costs_dropped_spans_never_a_wait(tmp_path: Path) -> None:
    """A child that never reads (SIGSTOPped, or a collector that hangs it): the pipe fills, the
    writer drops whole batches and counts them, and each hand-over returns at once."""
    pipe = SpanPipe([sys.executable, "-c", "import time; time.sleep(60)"], interval=3600,
                    grace=1.0, pipe_bytes=65536)
    try:
        slowest = 0.0
        for batch in range(20):
            pipe.queue.extend((TRACE, f"{batch:08x}{i:08x}", None, "GET /x", SERVER, 1, 2,
                               {"url.path": f"/x/{i}"}, False, None) for i in range(100))
            started = time.monotonic()
            pipe.wake.set()
            while pipe.queue:  # the writer thread takes the batch
                time.sleep(0.005)
            with pipe._lock:  # and has handed it over (or dropped it)
                slowest = max(slowest, time.monotonic() - started)
        stats = pipe.stats()
        assert stats["dropped"] > 0 and stats["sent"] + stats["dropped"] == 2000
        assert slowest < 1.0
    finally:
        started = time.monotonic()
        pipe.close()  # the child never reads to the end: killed after ``grace``
        assert time.monotonic() - started < 5


def test_a_dead_child_is_restarted_after_a_backoff(tmp_path: Path) -> None:
    out = tmp_path / "frames"
    pipe = SpanPipe(copier(out), interval=0.05)
    try:
        assert pipe.proc is not None
        first = pipe.proc.pid
        os.kill(first, signal.SIGKILL)
        pipe.proc.wait()
        record = (TRACE, SPAN, None, "GET /x", SERVER, 1, 2, None, False, None)
        pipe.queue.append(record)
        deadline = time.monotonic() + 10
        while pipe.stats()["dropped"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pipe.stats()["dropped"] == 1  # no child meanwhile: dropped, counted
        while pipe.stats()["restarts"] == 0 and time.monotonic() < deadline:
            pipe.queue.append(record)
            time.sleep(0.05)
        assert pipe.stats()["restarts"] == 1 and pipe.proc is not None
        assert pipe.proc.pid != first
        sent = pipe.stats()["sent"]
    finally:
        pipe.close()
    assert sent >= 1 and sum(len(f) for f in frames(out)) == pipe.stats()["sent"]


HALF_DELIVERED = r"""
import marshal, os, struct, sys
n = 0
while len(head := sys.stdin.buffer.read(4)) == 4:
    n += len(marshal.loads(sys.stdin.buffer.read(struct.unpack(">I", head)[0])))
    os.write(1, f"0 {n // 2}\n".encode())
"""


def test_spans_a_lost_child_held_are_counted_failed(tmp_path: Path) -> None:
    """An outside tester, during a collector outage: the child was replaced, and the spans it
    held (handed to it, neither delivered nor reported failed) vanished from every count. The
    child reports "failed exported"; what it was handed beyond both counts as failed."""
    pipe = SpanPipe([sys.executable, "-c", HALF_DELIVERED], interval=0.05)
    try:
        record = (TRACE, SPAN, None, "GET /x", SERVER, 1, 2, None, False, None)
        pipe.queue.extend([record] * 100)
        deadline = time.monotonic() + 10
        while pipe._exported_now < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
            with pipe._lock:
                pipe._collect()
        assert pipe.stats()["sent"] == 100 and pipe._exported_now == 50
        assert pipe.proc is not None
        os.kill(pipe.proc.pid, signal.SIGKILL)
        pipe.proc.wait()
        while pipe.stats()["failed"] == 0 and time.monotonic() < deadline:
            pipe.wake.set()
            time.sleep(0.02)
        assert pipe.stats()["failed"] == 50  # the half it held: neither delivered nor failed
    finally:
        pipe.close()


def test_frames_are_length_prefixed_marshal() -> None:
    payload = marshal.dumps([("a", 1)])
    stream = io.BytesIO(HEADER.pack(len(payload)) + payload + HEADER.pack(10) + b"short")
    assert read_frame(stream) == payload
    assert read_frame(stream) is None  # a truncated frame ends the input


def test_the_exporter_child_gets_no_secret_of_the_servers_environment() -> None:
    env = child_environment({"FERROHSM_MASTER_KEY": "k", "APP_DSN": "postgres://u:p@h/d",
                             "OTEL_EXPORTER_OTLP_HEADERS": "authorization=x", "PATH": "/bin",
                             "HTTPS_PROXY": "http://proxy:3128", "SSL_CERT_FILE": "/ca.pem"})
    assert env == {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=x", "PATH": "/bin",
                   "HTTPS_PROXY": "http://proxy:3128", "SSL_CERT_FILE": "/ca.pem"}


def test_the_batch_processor_variables_shape_the_frames(tmp_path: Path) -> None:
    """OTEL_BSP_MAX_EXPORT_BATCH_SIZE caps the records of a frame (one OTLP request each),
    OTEL_BSP_SCHEDULE_DELAY is the writer's interval; malformed values fall back."""
    assert batch_settings({}) == (0.15, 512, 200_000)
    assert batch_settings({"OTEL_BSP_SCHEDULE_DELAY": "40", "OTEL_BSP_MAX_QUEUE_SIZE": "100",
                           "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "300"}) == (0.04, 100, 100)
    assert batch_settings({"OTEL_BSP_SCHEDULE_DELAY": "-1",
                           "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "many"}) == (0.15, 512, 200_000)
    out = tmp_path / "frames"
    pipe = SpanPipe(copier(out), environ={"OTEL_BSP_SCHEDULE_DELAY": "50",
                                          "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "3"})
    try:
        assert pipe.interval == 0.05
        pipe.queue.extend([(TRACE, f"{i + 1:016x}", None, "GET /x", SERVER, 1, 2, None,
                            False, None) for i in range(7)])  # one C call: all or none seen
        deadline = time.monotonic() + 10
        while pipe.stats()["sent"] < 7 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        pipe.close()
    assert sorted(len(f) for f in frames(out)) == [1, 3, 3]


def test_records_go_out_a_frame_at_a_time_and_beyond_the_queue_bound_are_dropped(
        tmp_path: Path) -> None:
    out = tmp_path / "frames"
    pipe = SpanPipe(copier(out), interval=3600, environ={
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10", "OTEL_BSP_MAX_QUEUE_SIZE": "100"})
    try:
        pipe.queue.extend((TRACE, f"{i:016x}", None, "GET /x", SERVER, 1, 2, None, False, None)
                          for i in range(250))
        with pipe._lock:
            pipe._drain()
        assert not pipe.queue and pipe.stats()["dropped"] == 150
    finally:
        pipe.close()
    sent = frames(out)
    assert [len(frame) for frame in sent] == [10] * 10  # the oldest 100, in order
    assert [record[1] for frame in sent for record in frame] == [f"{i:016x}" for i in range(100)]


def test_the_queue_bound_counts_spans_not_requests(tmp_path: Path) -> None:
    """OTEL_BSP_MAX_QUEUE_SIZE bounds the spans queued: a request's record holds its server
    span and its children, and the oldest records within the bound go out."""
    out = tmp_path / "frames"
    tracer = Tracer(sampler("always_on"), SpanPipe(copier(out), interval=3600, environ={
        "OTEL_BSP_MAX_QUEUE_SIZE": "10"}))
    pipe = tracer.pipe
    try:
        for i in range(4):  # 3 spans a request: 12 spans, the bound is 10
            span = tracer.start(None, ("GET", f"/{i}", "::1", f"r{i}", None, None))
            assert span is not None
            tracing.ended_child(span, "authenticate", time.time_ns())
            tracing.ended_child(span, "ferrohsm get", time.time_ns())
            tracer.finish(span, 200)
        with pipe._lock:
            pipe._drain()
        assert pipe.stats()["sent"] == 9 and pipe.stats()["dropped"] == 3
    finally:
        tracer.shutdown()
    assert [r[6][1] for frame in frames(out) for r in frame] == ["/0", "/1", "/2"]


def test_the_collectors_latest_complaint_is_quoted_in_whole_words() -> None:
    import logging

    from ferrohsm.telemetry.otlpexport import LATEST_LIMIT, LatestProblem
    problems = LatestProblem()
    words = "Exception while exporting Span batch: connection refused by the collector " * 6
    problems.emit(logging.LogRecord("opentelemetry", logging.WARNING, __file__, 1, words,
                                    None, None))
    assert problems.latest.endswith(" …") and len(problems.latest) <= LATEST_LIMIT + 2
    assert words.startswith(problems.latest[:-2]) and words[len(problems.latest) - 2] == " "


def test_the_exporter_child_runs_only_on_idle_cores_once_loaded() -> None:
    """The real child: nice 10 while it loads the SDK (a start-up beside busy serving
    processes must not take minutes), then SCHED_IDLE, so that a task waking on its core (the
    server's audit fsync worker) takes the core at once."""
    import subprocess

    from ferrohsm.telemetry.spanpipe import exporter_command
    probe = subprocess.run([sys.executable, "-c", "import os; os.sched_setscheduler(0, "
                            "os.SCHED_IDLE, os.sched_param(0))"], capture_output=True)
    if probe.returncode:
        pytest.skip("this system refuses SCHED_IDLE (the child then stays at nice 10)")
    env = child_environment(dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9"))
    child = subprocess.Popen(exporter_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=env)
    try:
        deadline, policy = time.monotonic() + 30, -1
        while time.monotonic() < deadline and policy != os.SCHED_IDLE:
            policy = os.sched_getscheduler(child.pid)
            time.sleep(0.05)
        assert policy == os.SCHED_IDLE
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == min(
            19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    finally:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()  # end of input: the child exports nothing and stops
        assert child.wait(30) == 0
        child.stdout.close()
