"""The access log: complete JSON lines with semantic-convention names, levels by status, written
in batches by its own thread, every line out by close(), nothing written when the level is off."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrohsm.telemetry import access as access_module
from ferrohsm.telemetry.access import AccessLog, level_of
from ferrohsm.telemetry.semconv import KNOWN_METHODS

DEFAULTS: dict[str, object] = dict(
    now=time.time(), status=200, method="POST", route="/v1/keys/{key}/encrypt",
    path="/v1/keys/k1/encrypt", seconds=0.0004321, client="192.0.2.7", peer="127.0.0.1", server_port=8443, user="svc",
    role="service", session=None, fingerprint=None, user_agent="curl/8.5", error_type=None,
    request_id="req-1", trace=("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "01"),
    correlation_id=None)


def record(access: AccessLog, **over: object) -> None:
    """One request's line, as the application writes it (``DEFAULTS`` changed by ``over``)."""
    values = DEFAULTS | over
    access.record(tuple(values.values()))  # type: ignore[arg-type]


def one_line(**over: object) -> str:
    out = io.StringIO()
    access = AccessLog(out)
    record(access, **over)
    access.close()
    return out.getvalue()


class Counting(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def logger() -> logging.Logger:
    log = logging.getLogger("ferrohsm.test-access")
    log.setLevel(logging.INFO)
    return log


def test_a_line_is_one_json_object_with_current_semantic_convention_names() -> None:
    text = one_line()
    assert text.endswith("\n") and text.count("\n") == 1
    line = json.loads(text)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    assert line["level"] == "info"
    assert line["logger"] == "ferrohsm.access"
    assert (line["http.request.method"], line["url.path"], line["http.response.status_code"],
            line["user.id"], line["user.roles"], line["user_agent.original"],
            line["server.port"], line["error.type"]) == (
        "POST", "/v1/keys/k1/encrypt", 200, "svc", ["service"], "curl/8.5", 8443, None)
    assert (line["trace_id"], line["span_id"], line["trace_flags"]) == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "01")
    assert line["duration_ms"] == 0.432
    assert "enduser.id" not in line


@pytest.mark.parametrize(("status", "level"), [(200, logging.INFO), (404, logging.INFO),
                                               (401, logging.WARNING), (403, logging.WARNING),
                                               (429, logging.WARNING), (503, logging.ERROR),
                                               (500, logging.ERROR), (505, logging.WARNING)])
def test_refusals_an_operator_should_see_are_warnings(status: int, level: int) -> None:
    assert level_of(status) == level


def test_the_level_decides_which_lines_are_written(logger: logging.Logger) -> None:
    logger.setLevel(logging.WARNING)
    access = AccessLog(io.StringIO(), logger=logger)
    assert not access.enabled_for(200)
    assert access.enabled_for(401) and access.enabled_for(403) and access.enabled_for(429)
    line = json.loads(one_line(status=403, error_type="forbidden"))
    assert line["level"] == "warning" and line["error.type"] == "forbidden"
    assert json.loads(one_line(status=503))["level"] == "error"
    # a 505 is the client's protocol version (HTTP/1.2, the HTTP/2 preface): its mistake
    assert access.enabled_for(505)
    assert json.loads(one_line(status=505, method="PRI", path=""))["level"] == "warning"


def test_lines_are_written_in_batches_by_the_writer_thread(logger: logging.Logger) -> None:
    out = Counting()
    access = AccessLog(out, interval=0.2, logger=logger)
    for i in range(500):
        record(access, request_id=f"r{i}")
    deadline = time.monotonic() + 5
    while access.written < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert access.written == 500 and out.writes <= 3  # one write per batch, not per line
    assert access._thread is not None and access._thread is not threading.current_thread()
    access.close()


def test_close_writes_every_queued_line_and_a_later_write_starts_again(
        logger: logging.Logger) -> None:
    out = io.StringIO()
    access = AccessLog(out, interval=60.0, logger=logger)  # the thread would wait a minute
    for i in range(1000):
        record(access, request_id=f"r{i}")
    access.close()
    lines = out.getvalue().splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == [f"r{i}" for i in range(1000)]
    record(access, request_id="after")
    access.close()
    assert json.loads(out.getvalue().splitlines()[-1])["request_id"] == "after"


def test_a_closed_stream_loses_lines_quietly_never_raises(logger: logging.Logger) -> None:
    out = io.StringIO()
    access = AccessLog(out, logger=logger)
    out.close()
    record(access)
    access.close()  # no exception: the request path and shutdown go on


@settings(max_examples=200, deadline=None)
@given(st.text(st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)), max_size=40))
def test_any_client_text_stays_inside_its_json_string(value: str) -> None:
    line = one_line(user_agent=value, path=value, user=value, client=value, session=value,
                    method=value, peer=value, request_id=value, status=400)
    assert line.isascii() and line.count("\n") == 1
    parsed = json.loads(line)
    for name in ("user_agent.original", "url.path", "user.id", "client.address", "session.id",
                 "network.peer.address", "request_id"):
        assert parsed[name] == json.loads(json.dumps(value))
    # a method the conventions do not know is named _OTHER, the method as sent kept beside it
    if value in KNOWN_METHODS:
        assert parsed["http.request.method"] == value
    else:
        assert parsed["http.request.method"] == "_OTHER"
        assert parsed["http.request.method_original"] == json.loads(json.dumps(value[:32]))


def test_an_unknown_method_is_named_other_and_an_unmatched_route_is_null() -> None:
    known = json.loads(one_line(method="DELETE", route=None, status=404))
    assert known["http.request.method"] == "DELETE" and known["http.route"] is None
    assert "http.request.method_original" not in known
    other = json.loads(one_line(method="BREW", status=404))
    assert other["http.request.method"] == "_OTHER"
    assert other["http.request.method_original"] == "BREW"


def test_a_request_whose_spans_are_not_exported_gets_ids_of_its_own() -> None:
    from ferrohsm.telemetry.tracecontext import Parent
    fresh = json.loads(one_line(trace=None))
    assert len(fresh["trace_id"]) == 32 and len(fresh["span_id"]) == 16
    assert fresh["trace_flags"] == "00"
    parent = Parent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
    child = json.loads(one_line(trace=parent))
    assert (child["trace_id"], child["trace_flags"]) == (parent.trace_id, "01")
    assert child["span_id"] != parent.span_id and len(child["span_id"]) == 16


def test_repeated_fields_come_from_a_bounded_cache_and_each_line_keeps_its_own() -> None:
    """Lines that share every client-chosen field but one are each right (the cache is keyed by
    all of them), and the cache starts again past its bound instead of growing."""
    from ferrohsm.telemetry import access as module
    out = io.StringIO()
    log = AccessLog(out)
    for i in range(module._FRAGMENTS + 10):
        record(log, path=f"/v1/keys/k{i}/encrypt", user="svc" if i % 2 else "other",
               status=200 if i % 3 else 429)
    log.flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [ln["url.path"] for ln in lines] == [f"/v1/keys/k{i}/encrypt" for i in range(len(lines))]
    assert all(ln["user.id"] == ("svc" if i % 2 else "other") for i, ln in enumerate(lines))
    assert all(ln["http.response.status_code"] == (200 if i % 3 else 429)
               for i, ln in enumerate(lines))
    log.flush()
    record(log)
    log.close()
    assert len(log._heads) <= module._FRAGMENTS + 1 and len(log._bodies) <= module._FRAGMENTS + 1


class Writes(io.StringIO):
    """A stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_a_shared_stream_gets_whole_lines_a_pipe_takes_whole(logger: logging.Logger) -> None:
    """processes = N share stderr: each write is whole lines of at most PIPE_BUF bytes (a pipe
    or journald's socket then never cuts a line with another process's write)."""
    from ferrohsm.telemetry.access import PIPE_BUF
    out = Writes()
    access = AccessLog(out)
    access.shared = True
    for n in range(60):
        record(access, path=f"/v1/keys/k{n}/encrypt")
    record(access, path="/v1/keys/" + "x" * (PIPE_BUF + 100) + "/encrypt")  # a line alone
    access.close()
    assert len(out.writes) > 2
    for text in out.writes:
        assert text.endswith("\n")
        assert len(text.encode()) <= PIPE_BUF or text.count("\n") == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 61 and all(json.loads(line) for line in lines)
    unshared = Writes()
    access = AccessLog(unshared)
    for _ in range(60):
        record(access)
    access.close()
    assert len(unshared.writes) == 1  # one process alone: one write a batch


def test_two_processes_on_one_pipe_never_cut_a_line(tmp_path: object) -> None:
    """The real thing: two processes write their batches to one pipe at once."""
    import multiprocessing
    import os
    ctx = multiprocessing.get_context("fork")
    read_end, write_end = os.pipe()

    def writer(tag: str) -> None:
        stream = os.fdopen(write_end, "w", closefd=False)
        access = AccessLog(stream)
        access.shared = True
        for round_ in range(20):
            for n in range(200):
                record(access, path=f"/v1/keys/{tag}{round_}-{n}/encrypt")
            access.flush()
        access.close()

    procs = [ctx.Process(target=writer, args=(tag,)) for tag in ("a", "b")]
    for proc in procs:
        proc.start()
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 1 << 16):
        chunks.append(chunk)
    os.close(read_end)
    for proc in procs:
        proc.join(30)
    lines = b"".join(chunks).splitlines()
    assert len(lines) == 2 * 20 * 200
    assert all(json.loads(line)["url.path"].startswith("/v1/keys/") for line in lines)


def test_the_writer_keeps_up_every_few_milliseconds_and_backs_off_when_idle(
        logger: logging.Logger) -> None:
    class Turns(AccessLog):
        turns = 0

        def flush(self) -> int:
            self.turns += 1
            return super().flush()

    out = Counting()
    access = Turns(out, logger=logger)
    assert access.interval <= 0.005 and access.idle_interval >= 0.05
    record(access, request_id="first")  # starts the writer
    deadline = time.monotonic() + 5
    while access.written < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    busy = access.turns
    for i in range(20):  # lines that keep coming: the writer turns every few milliseconds
        record(access, request_id=f"r{i}")
        time.sleep(0.002)
    while access.written < 21 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert access.written == 21 and access.turns - busy >= 3
    time.sleep(0.15)  # idle from here on
    turns = access.turns
    time.sleep(0.5)
    assert access.turns - turns <= 10  # about every 0.1 s, not every 5 ms (100 turns)
    access.close()


def test_lines_formatted_by_the_loop_are_written_in_order_with_the_rest(
        logger: logging.Logger) -> None:
    """``format_queued`` (the event loop, at the end of a turn) formats; ``flush`` (the writer
    thread) writes what was formatted, then what queued since, in the order recorded."""
    out = io.StringIO()
    access = AccessLog(out, interval=3600, logger=logger)
    record(access, request_id="first")
    record(access, request_id="second")
    access.format_queued()
    assert out.getvalue() == ""  # formatted, not written: the writer writes
    record(access, request_id="third")
    assert access.flush() == 3
    assert [json.loads(line)["request_id"] for line in out.getvalue().splitlines()] == [
        "first", "second", "third"]
    assert access.flush() == 0
    access.close()


def test_the_loop_never_waits_for_a_write_to_stderr(logger: logging.Logger) -> None:
    """A writer blocked on a full stderr holds the lock: ``format_queued`` returns at once,
    formatting nothing, and the writer formats those lines itself, in order."""
    release, writing = threading.Event(), threading.Event()

    class Blocking(io.StringIO):
        def write(self, text: str) -> int:
            writing.set()
            release.wait(10)
            return super().write(text)

    out = Blocking()
    access = AccessLog(out, interval=3600, logger=logger)
    record(access, request_id="before")
    writer = threading.Thread(target=access.flush)
    writer.start()
    assert writing.wait(5)
    record(access, request_id="during")
    started = time.monotonic()
    access.format_queued()
    assert time.monotonic() - started < 0.5
    assert access._text == [] and len(access._lines) == 1  # left to the writer, untouched
    release.set()
    writer.join(5)
    access.flush()
    assert [json.loads(line)["request_id"] for line in out.getvalue().splitlines()] == [
        "before", "during"]
    access.close()


def test_close_gives_up_on_a_stream_that_takes_nothing(
        logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stderr nobody reads blocks the writer for good: close() waits a bounded time, counts
    the lines it could not write as dropped, and a later close does not wait again."""
    monkeypatch.setattr(access_module, "CLOSE_SECONDS", 0.5)
    release, writing = threading.Event(), threading.Event()

    class Stuck(io.StringIO):
        def write(self, text: str) -> int:
            writing.set()
            release.wait(30)
            return super().write(text)

    access = AccessLog(Stuck(), interval=0.001, logger=logger)
    record(access, request_id="stuck")
    assert writing.wait(5)  # the writer thread is in the write, holding the lock
    record(access, request_id="never")
    access.add_line('{"message":"shutting down"}\n')
    started = time.monotonic()
    access.close()
    assert time.monotonic() - started < 2
    assert access.dropped == 2
    started = time.monotonic()
    access.close()  # atexit's: at once
    assert time.monotonic() - started < 0.2
    release.set()


def test_other_log_lines_are_written_in_order_with_the_access_lines(
        logger: logging.Logger) -> None:
    out = io.StringIO()
    access = AccessLog(out, interval=3600, logger=logger)
    record(access, request_id="first")
    access.add_line('{"message":"between"}\n')
    record(access, request_id="last")
    access.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line.get("request_id", line.get("message")) for line in lines] == [
        "first", "between", "last"]


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_writes_its_own_lines_not_its_parents(tmp_path: Path) -> None:
    """processes = N forks children: a child neither inherits the parent's writer (no thread
    survives a fork) nor writes the lines the parent had queued (the parent writes those)."""
    path = tmp_path / "out.log"
    with open(path, "w") as out:
        access = AccessLog(out, interval=3600)
        access.add_line("parent's\n")  # queued, its writer started
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                access.add_line("child's\n")
                access.close()
                code = 0
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
        access.close()
    assert sorted(path.read_text().splitlines()) == ["child's", "parent's"]


def test_a_line_logged_while_the_interpreter_exits_is_written_at_once(tmp_path: Path) -> None:
    """A line logged once the interpreter is exiting, after the writer was closed (a daemon
    thread, a later atexit handler), is written by the thread that logs it: a new writer
    thread then would be killed before it writes (or, from 3.12, cannot start at all)."""
    import subprocess
    import sys
    program = (  # registered before the access log's own close: it runs after that
        "import atexit, logging\n"
        "atexit.register(lambda: logging.getLogger('ferrohsm').warning('late line'))\n"
        "from ferrohsm.telemetry.logs import setup_logging\n"
        "setup_logging('INFO')\n"
        "logging.getLogger('ferrohsm').info('early line')\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0
    assert "Logging error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert [json.loads(x)["message"] for x in done.stderr.splitlines()] == [
        "early line", "late line"]


def test_a_line_logged_at_exit_into_a_full_stderr_is_dropped_in_bounded_time() -> None:
    """Written by the logging thread itself once the interpreter exits, a line waits at most
    a second for a stderr that takes nothing (a pipe nobody reads), then is dropped."""
    import subprocess
    import sys
    program = (
        "import atexit, errno, logging, os\n"
        "atexit.register(lambda: logging.getLogger('ferrohsm').warning('late line'))\n"
        "from ferrohsm.telemetry.logs import setup_logging\n"
        "setup_logging('INFO')\n"
        "os.set_blocking(2, False)\n"
        "try:\n"
        "    while True:\n"
        "        os.write(2, b'x' * 4096)\n"
        "except BlockingIOError:\n"
        "    pass\n"
        "os.set_blocking(2, True)\n")
    read_end, write_end = os.pipe()
    try:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", program], stderr=write_end, timeout=30,
                              check=False, env={k: v for k, v in os.environ.items()
                                                if k != "PYTHONUNBUFFERED"})
        assert done.returncode == 0
        assert time.monotonic() - started < 10
    finally:
        os.close(read_end)
        os.close(write_end)
