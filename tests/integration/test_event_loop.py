"""The event loop's own promises, over real sockets with a real audit sink:

- inline requests are answered only once the tickets of their audit records are durable (one
  write per turn, one flush for the turns queued meanwhile), and a failed flush or write turns
  exactly the answers holding a failed ticket into 503s;
- a pooled request's durable record and an inline request's ticket, side by side, both hold
  their answers until durable, and both fail closed;
- a slow request on the worker pool never stalls inline requests on other connections;
- pipelined requests mixing inline and pooled work are answered in order.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferrohsm.api.http import Request, Response, json_response
from ferrohsm.audit.chain import AuditEvent
from ferrohsm.audit.sinks import FileSink, Ticket
from ferrohsm.audit.verify import verify_paths

KEY = hashlib.sha256(b"event loop audit key").digest()


class GatedSink(FileSink):
    """A FileSink whose fsync waits for ``gate`` and can be made to fail, and whose writes can
    be made to fail like a full disk (``full``)."""

    def __init__(self, directory: Path) -> None:
        self.directory_path = directory
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        self.full = False
        self.fsyncs = 0
        super().__init__(str(directory), KEY)

    def _fsync(self, fd: int) -> None:
        self.gate.wait(10)
        if self.fail:
            raise OSError(errno.EIO, "Input/output error")
        self.fsyncs += 1
        super()._fsync(fd)

    def _write_all(self, fd: int, data: bytes) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super()._write_all(fd, data)


def audited_app(sink: FileSink, entered: threading.Event | None = None,
                proceed: threading.Event | None = None) -> Any:
    """/op records once (like a crypto operation), /plain records nothing, /slow sleeps on the
    pool, /pooled records on the pool (after ``entered``/``proceed``, when given). Like the
    service's ``record(..., defer=True)``: a request with a ticket list leaves its record's
    ticket there; one without (on the pool) gets a durable record before it answers."""

    def app(request: Request) -> Response:
        if request.path == "/slow":
            time.sleep(1.0)
        if request.path == "/pooled" and entered is not None and proceed is not None:
            entered.set()
            proceed.wait(10)
        if request.path in ("/op", "/pooled"):
            event = AuditEvent(actor="svc", role="service", action="key.encrypt",
                               outcome="success", message=request.request_id)
            if request.tickets is None:
                sink.append(event)  # raises AuditUnavailable (503) if it is not durable
            else:
                request.tickets.append(sink.append(event, durable=False))
        return json_response(200, {"path": request.path})

    return app


def inline(request: Request) -> bool:
    return request.path not in ("/slow", "/pooled")


@pytest.fixture
def sink(tmp_path: Path) -> Any:
    opened = GatedSink(tmp_path / "audit")
    yield opened
    opened.close()


def req(path: str, request_id: str = "r") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: h\r\nX-Request-ID: {request_id}\r\n\r\n".encode()


def test_inline_answer_waits_for_its_audit_record_to_be_durable(
        make_server: Any, connect: Any, sink: GatedSink) -> None:
    server = make_server(audited_app(sink), inline=inline, audit=sink)
    client = connect(server)
    head = sink.head()[0]
    sink.gate.clear()  # the commit hangs in fsync
    client.send(req("/op", "held-1"))
    assert not client.at_eof(0.5)  # ...and nothing was answered meanwhile
    assert sink.head()[0] == head
    sink.gate.set()
    response = client.read_response()
    assert response.status == 200
    assert sink.head()[0] == head + 1  # durable before the answer left
    assert sink.read(head)[0]["message"] == "held-1"


def test_one_flush_serves_a_whole_batch(make_server: Any, connect: Any,
                                        sink: GatedSink) -> None:
    server = make_server(audited_app(sink), inline=inline, audit=sink)
    clients = [connect(server) for _ in range(8)]
    sink.gate.clear()
    clients[0].send(req("/op", "first"))  # its flush blocks in fsync...
    time.sleep(0.2)
    for n, client in enumerate(clients[1:]):
        client.send(req("/op", f"r{n}"))  # ...while these queue behind it
    time.sleep(0.3)
    fsyncs = sink.fsyncs
    sink.gate.set()
    assert [c.read_response().status for c in clients] == [200] * 8
    assert sink.fsyncs - fsyncs <= 2  # the first group, then ONE for the seven queued


def test_failed_flush_answers_503_only_where_a_ticket_failed(
        make_server: Any, connect: Any, sink: GatedSink) -> None:
    server = make_server(audited_app(sink), inline=inline, audit=sink)
    op, plain = connect(server), connect(server)
    head = sink.head()
    sink.fail = True
    op.send(req("/op"))
    failed = op.read_response()
    assert failed.status == 503 and failed.json()["error"]["code"] == "unavailable"
    plain.send(req("/plain"))
    assert plain.read_response().status == 200
    assert sink.head() == head  # nothing half-written


def test_failed_write_answers_503_only_where_a_ticket_failed(
        make_server: Any, connect: Any, sink: GatedSink) -> None:
    """A full disk fails the turn's write: its answers are 503 at once (no flush to wait for),
    a request that recorded nothing is answered as usual, and once there is room again the
    next record is written where the failed ones would have gone."""
    server = make_server(audited_app(sink), inline=inline, audit=sink)
    op, plain = connect(server), connect(server)
    head = sink.head()
    sink.full = True
    op.send(req("/op", "lost"))
    failed = op.read_response()
    assert failed.status == 503 and "No space left" in failed.json()["error"]["message"]
    plain.send(req("/plain"))
    assert plain.read_response().status == 200
    assert sink.head() == head and sink.healthy()  # cleanly undone: the sink goes on
    sink.full = False
    op.send(req("/op", "kept"))
    assert op.read_response().status == 200
    assert [r["message"] for r in sink.read(head[0])] == ["kept"]


@contextlib.contextmanager
def pooled_and_inline_side_by_side(make_server: Any, connect: Any,
                                   sink: GatedSink) -> Iterator[tuple[Any, Any]]:
    """/pooled enters its handler on the pool and waits; /op runs inline, its ticket is written
    and its flush starts (and hangs in fsync: the gate is closed); then /pooled appends durably
    (and hangs in fsync too). The block runs with both answers held."""
    entered, proceed = threading.Event(), threading.Event()
    server = make_server(audited_app(sink, entered, proceed), inline=inline, audit=sink)
    pooled, op = connect(server), connect(server)
    sink.gate.clear()
    pooled.send(req("/pooled", "pooled"))
    assert entered.wait(5)
    op.send(req("/op", "inline"))
    time.sleep(0.2)  # the loop ran /op and handed its ticket to the committer
    proceed.set()
    time.sleep(0.2)  # the pool's durable append is in fsync as well
    assert not pooled.at_eof(0.2) and not op.at_eof(0.2)  # neither answered meanwhile
    yield pooled, op


def test_a_pooled_durable_record_and_an_inline_ticket_side_by_side(
        make_server: Any, connect: Any, sink: GatedSink) -> None:
    head = sink.head()
    with pooled_and_inline_side_by_side(make_server, connect, sink) as (pooled, op):
        assert sink.head() == head  # nothing durable yet, so nothing answered
        sink.gate.set()
        assert op.read_response().status == 200
        assert pooled.read_response().status == 200
    assert [r["message"] for r in sink.read(head[0])] == ["inline", "pooled"]
    sink.close()
    assert verify_paths([str(sink.directory_path)], KEY).ok


def test_a_pooled_durable_record_and_an_inline_ticket_both_fail_closed(
        make_server: Any, connect: Any, sink: GatedSink) -> None:
    head = sink.head()
    with pooled_and_inline_side_by_side(make_server, connect, sink) as (pooled, op):
        sink.fail = True
        sink.gate.set()
        assert op.read_response().status == 503
        assert pooled.read_response().status == 503
    assert sink.head() == head and not sink.healthy()
    sink.close()
    assert verify_paths([str(sink.directory_path)], KEY).ok


def test_slow_pooled_request_does_not_stall_inline_requests(
        make_server: Any, connect: Any, sink: GatedSink) -> None:
    server = make_server(audited_app(sink), inline=inline, audit=sink)
    slow, fast = connect(server), connect(server)
    slow.send(req("/slow"))
    time.sleep(0.1)
    started = time.monotonic()
    for _ in range(20):
        fast.send(req("/op"))
        assert fast.read_response().status == 200
    assert time.monotonic() - started < 0.8  # done well before the 1 s handler returns
    assert slow.read_response().json() == {"path": "/slow"}


def test_pipelined_inline_and_pooled_requests_keep_their_order(
        make_server: Any, connect: Any, sink: GatedSink) -> None:
    server = make_server(audited_app(sink), inline=inline, audit=sink)
    client = connect(server)
    paths = ["/op", "/slow", "/plain", "/op"]
    client.send(b"".join(req(path, f"p{n}") for n, path in enumerate(paths)))
    answers = [client.read_response() for _ in paths]
    assert [a.json()["path"] for a in answers] == paths
    assert [a.header("X-Request-ID") for a in answers] == ["p0", "p1", "p2", "p3"]


# ---- regressions found in review --------------------------------------------------------------

def test_pipelined_requests_before_a_half_close_are_all_answered(
        make_server: Any, connect: Any, sink: GatedSink) -> None:
    server = make_server(audited_app(sink), inline=inline, audit=sink)
    client = connect(server)
    client.send(req("/op", "a") + req("/slow", "b") + req("/plain", "c"))
    socket.socket.shutdown(client.sock, socket.SHUT_WR)  # no close_notify: a bare TCP FIN
    answers = [client.read_response() for _ in range(3)]
    assert [a.header("X-Request-ID") for a in answers] == ["a", "b", "c"]
    assert answers[-1].header("Connection") == "close" and client.at_eof()


def pump(client: Any, blob: bytes, seconds: float, watch: Any = None) -> None:
    """Send ``blob`` again and again while reading (and discarding) answers, non-blocking."""
    sock = client.sock
    sock.setblocking(False)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readable, writable, _ = select.select([sock], [sock], [], 0.01)
        try:
            if readable or sock.pending():
                sock.recv(1 << 20)
            if writable:
                sock.send(blob)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass
        if watch is not None:
            watch()


def test_a_pipelining_client_cannot_make_the_server_buffer_without_bound(
        make_server: Any, connect: Any, sink: GatedSink) -> None:
    """It sends faster than it is answered: the server reads one request's worth ahead, then
    lets TCP push back, instead of buffering everything it is sent."""
    server = make_server(lambda r: json_response(200, {}), inline=lambda r: True,
                         idle_timeout=30)
    peak = [0]

    def watch() -> None:
        peak[0] = max([peak[0]] + [len(conn.buf) for conn in list(server._conns)])

    pump(connect(server), req("/x") * 2000, 1.5, watch)
    cap = server.limits.max_body + server.limits.max_header_bytes + (1 << 17)
    assert 0 < peak[0] <= cap


def test_the_committer_survives_an_unexpected_error(make_server: Any, connect: Any,
                                                   sink: GatedSink,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    server = make_server(audited_app(sink), inline=inline, audit=sink)
    client = connect(server)
    original = sink.wait
    calls = []

    def flaky(ticket: Ticket) -> None:
        calls.append(ticket)
        if len(calls) == 1:
            raise RuntimeError("a bug below the sink")
        original(ticket)

    monkeypatch.setattr(sink, "wait", flaky)
    client.send(req("/op", "first"))
    assert client.read_response().status == 503
    client.send(req("/op", "second"))
    assert client.read_response().status == 200


def test_cheap_pipelined_requests_do_not_hold_back_audited_ones(
        make_server: Any, connect: Any, sink: GatedSink) -> None:
    """A client pipelining requests that record nothing keeps the loop busy; an audited request
    on another connection is still flushed and answered within MAX_HOLD, not after the flood."""
    server = make_server(audited_app(sink), inline=lambda r: True, audit=sink,
                         idle_timeout=60, header_timeout=60)
    connect(server)  # a third, idle connection: one waiting request is not half of them
    busy, audited = connect(server), connect(server)
    flood = threading.Thread(target=pump, args=(busy, req("/plain") * 2000, 2.5))
    flood.start()
    try:
        time.sleep(0.3)
        for _ in range(4):
            started = time.monotonic()
            audited.send(req("/op"))
            assert audited.read_response().status == 200
            assert time.monotonic() - started < 0.5
    finally:
        flood.join(10)
