"""When the dispatcher starts an audit flush (hand_over): at once for a lone request, not while
another flush runs, once most requests in progress wait, and never later than MAX_HOLD. And
which answers wait for it: those whose request holds a ticket not yet durable; an answer whose
ticket failed becomes a 503, the others are left as they were."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from ferrohsm.api.connection import Conn, Incoming
from ferrohsm.api.dispatch import MAX_HOLD, Answer, Dispatcher
from ferrohsm.api.flusher import ThreadFlusher
from ferrohsm.api.http import Headers, Request, Response, error_response, json_response
from ferrohsm.domain.errors import AuditUnavailable, BadRequest, FerroError


class FakeTicket:
    def __init__(self) -> None:
        self.seq = 0
        self.error: str | None = None


class FakeAudit:
    """The sink's ticket API: tickets get seqs as written; wait() waits for ``release`` (a flush
    in progress), then makes everything written durable, or fails every ticket not durable yet
    (``fail_flush``). With ``splits`` False what is written is durable at once (like SQLite)."""

    def __init__(self, splits: bool = True) -> None:
        self.issued: list[FakeTicket] = []
        self.queued: list[FakeTicket] = []
        self.written = self.durable = 0
        self.waited: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.splits = splits
        self.fail_write: str | None = None
        self.fail_flush: str | None = None

    def append(self) -> FakeTicket:
        ticket = FakeTicket()
        self.issued.append(ticket)
        self.queued.append(ticket)
        return ticket

    def write_queued(self) -> None:
        for ticket in self.queued:
            if self.fail_write is not None:
                ticket.error = self.fail_write
            else:
                self.written += 1
                ticket.seq = self.written
        self.queued = []
        if not self.splits:
            self.durable = self.written

    def is_durable(self, ticket: FakeTicket) -> bool:
        if ticket.error is not None:
            raise AuditUnavailable(ticket.error)
        return 0 < ticket.seq <= self.durable

    def commits_in_write(self) -> bool:
        return not self.splits

    def wait(self, ticket: FakeTicket) -> None:
        if ticket.seq == 0 and ticket.error is None:
            self.write_queued()  # as ChainedSink.wait: still queued, nobody wrote it yet
        self.release.wait(5)
        self.waited.append(ticket.seq)
        if self.fail_flush is not None:
            for held in self.issued:
                if held.seq > self.durable:
                    held.error = self.fail_flush
            raise AuditUnavailable(self.fail_flush)
        self.durable = self.written


    def append_durable(self) -> None:
        """A durable append: its group's flush covers every record written before it."""
        self.written += 1
        self.durable = self.written


def recording_app(audit: FakeAudit) -> Any:
    """Records once per request (twice for /two, never for /none), as Guard.record(ctx, ...,
    defer=True) does: the ticket goes to the request's list, or, without one (on the pool), the
    record is durable before the handler returns."""
    def app(request: Request) -> Response:
        for _ in range({"/two": 2, "/none": 0}.get(request.path, 1)):
            if request.tickets is None:
                audit.append_durable()
            else:
                request.tickets.append(audit.append())
        return json_response(200, {"ticketed": request.tickets is not None})
    return app


def make(audit: FakeAudit | None = None,
         inline: Any = lambda r: True) -> tuple[Dispatcher, FakeAudit]:
    audit = audit or FakeAudit()
    dispatcher = Dispatcher(recording_app(audit), inline=inline, audit=audit, workers=1,
                            log=logging.getLogger("test"), wake=lambda: None)
    return dispatcher, audit


def take(dispatcher: Dispatcher, paths: list[str], start: int = 0) -> None:
    for n, path in enumerate(paths, start):
        sock = socket.socket()
        request = Request("POST", path, path, {}, Headers(), b"", "127.0.0.1", n, None,
                          f"r{n}", 0.0)
        dispatcher.take(Conn(sock, ("127.0.0.1", n)), Incoming(request, None, True, False))
        sock.close()


def run(dispatcher: Dispatcher, count: int) -> None:
    take(dispatcher, ["/op"] * count)
    assert dispatcher.answers() == []  # all wait for their flush


def wait_answers(dispatcher: Dispatcher, count: int) -> list[Answer]:
    got: list[Answer] = []
    for _ in range(500):
        got += dispatcher.answers()
        if len(got) >= count:
            return got
        threading.Event().wait(0.01)
    raise AssertionError(f"{len(got)} of {count} answers")


def statuses(answers: list[Answer]) -> dict[str, int]:
    return {incoming.request.request_id: response.status for _, incoming, response in answers}


def test_a_lone_request_is_flushed_at_once() -> None:
    dispatcher, audit = make()
    run(dispatcher, 1)
    dispatcher.hand_over(in_progress=lambda: 1, now=0.0)
    assert statuses(wait_answers(dispatcher, 1)) == {"r0": 200}
    assert audit.waited == [1]
    dispatcher.close(1)


def test_held_until_most_requests_wait_or_max_hold() -> None:
    dispatcher, audit = make()
    run(dispatcher, 2)
    start = dispatcher._held_since
    dispatcher.hand_over(in_progress=lambda: 10, now=start)  # 2 of 10 waiting: hold
    assert dispatcher.hold_deadline() == start + MAX_HOLD
    dispatcher.hand_over(in_progress=lambda: 10, now=start + MAX_HOLD)  # held long enough
    wait_answers(dispatcher, 2)
    run(dispatcher, 9)
    dispatcher.hand_over(in_progress=lambda: 10, now=dispatcher._held_since)  # 9 of 10: go
    wait_answers(dispatcher, 9)
    assert audit.waited == [2, 11]  # one wait, for the newest ticket, per flush
    dispatcher.close(1)


def test_no_second_flush_while_one_runs() -> None:
    dispatcher, audit = make()
    audit.release.clear()
    run(dispatcher, 1)
    dispatcher.hand_over(in_progress=lambda: 1, now=0.0)  # the flush starts and blocks
    run(dispatcher, 1)
    dispatcher.hand_over(in_progress=lambda: 1, now=dispatcher._held_since)
    assert dispatcher.hold_deadline() is None and dispatcher._held  # held behind the flush
    audit.release.set()
    wait_answers(dispatcher, 1)
    dispatcher.hand_over(in_progress=lambda: 1, now=dispatcher._held_since)
    wait_answers(dispatcher, 1)
    assert audit.waited == [1, 2]
    dispatcher.close(1)


def test_only_answers_with_tickets_wait_and_all_of_a_requests_tickets_count() -> None:
    dispatcher, audit = make()
    take(dispatcher, ["/none", "/two", "/op"])
    assert statuses(dispatcher.answers()) == {"r0": 200}  # nothing recorded: at once
    dispatcher.hand_over(in_progress=lambda: 2, now=dispatcher._held_since)
    assert statuses(wait_answers(dispatcher, 2)) == {"r1": 200, "r2": 200}
    assert audit.waited == [3] and audit.durable == 3
    dispatcher.close(1)


def test_a_sink_whose_write_is_its_commit_is_written_off_the_loop() -> None:
    """A sink that cannot split the write from the flush (SQLite, PostgreSQL) commits in
    write_queued, which may wait on a lock another node holds or a slow disk: once it says so
    (``commits_in_write``: its last commit was slow) the loop does not write it (it waited a
    timeout per turn behind a held lock: a red team); the answers are held and the committer
    thread's wait writes and commits them."""
    dispatcher, audit = make(FakeAudit(splits=False))
    take(dispatcher, ["/op", "/two"])
    assert dispatcher.answers() == [] and audit.written == 0  # nothing written on the loop
    dispatcher.hand_over(in_progress=lambda: 2, now=dispatcher._held_since)
    assert statuses(wait_answers(dispatcher, 2)) == {"r0": 200, "r1": 200}
    assert audit.written == audit.durable == 3 and audit.waited == [3]
    assert isinstance(dispatcher._flusher, ThreadFlusher) and dispatcher._flusher._thread
    dispatcher.close(1)


def test_a_failed_write_turns_its_answers_into_503_at_once() -> None:
    dispatcher, audit = make()
    audit.fail_write = "disk full"
    take(dispatcher, ["/op", "/none"])
    answers = {incoming.request.request_id: response for _, incoming, response
               in dispatcher.answers()}
    assert answers["r0"].status == 503 and b"disk full" in answers["r0"].body
    assert answers["r1"].status == 200
    assert not dispatcher._held and audit.waited == []
    dispatcher.close(1)


def test_a_failed_flush_turns_exactly_the_answers_with_failed_tickets_into_503() -> None:
    """One flush serves two turns; before it, a ticket of the first turn became durable (as a
    durable append's group commit would make it): that answer stands, the others are 503."""
    dispatcher, audit = make()
    run(dispatcher, 2)
    take(dispatcher, ["/op"], start=2)
    assert dispatcher.answers() == []
    audit.durable = 1  # r0's record is durable already
    audit.fail_flush = "fsync failed"
    dispatcher.hand_over(in_progress=lambda: 3, now=dispatcher._held_since + MAX_HOLD)
    assert statuses(wait_answers(dispatcher, 3)) == {"r0": 200, "r1": 503, "r2": 503}
    assert audit.waited == [3]  # the newest ticket: one flush for both turns
    dispatcher.close(1)


def test_a_pooled_request_carries_no_tickets() -> None:
    """On the pool nobody holds the answer: the request has no ticket list, so the service
    makes its records durable before it returns."""
    dispatcher, _ = make(inline=lambda r: False)
    take(dispatcher, ["/op"])
    answers = wait_answers(dispatcher, 1)
    assert answers[0][2].body == b'{"ticketed":false}'
    dispatcher.close(1)


def test_a_pooled_durable_record_and_an_inline_ticket_in_one_turn() -> None:
    """The pool's answer (its record durable when the handler returned) and an inline answer
    (its ticket written this turn) come out of the same answers() call: the first is sent, the
    second waits for its flush."""
    dispatcher, audit = make(inline=lambda r: r.path != "/pooled")
    take(dispatcher, ["/pooled"])
    for _ in range(500):
        if dispatcher._done:
            break
        threading.Event().wait(0.01)
    assert audit.durable == 1  # the pooled record, durable before its answer was queued
    take(dispatcher, ["/op"], start=1)
    assert statuses(dispatcher.answers()) == {"r0": 200}  # the inline one is held
    assert dispatcher._held_requests == 1 and audit.written == 2 and audit.durable == 1
    dispatcher.hand_over(in_progress=lambda: 1, now=dispatcher._held_since)
    assert statuses(wait_answers(dispatcher, 1)) == {"r1": 200}
    assert audit.waited == [2] and audit.durable == 2
    dispatcher.close(1)


def test_a_refusal_is_answered_by_refuse_after_its_record_is_flushed() -> None:
    """A request the server refused while reading it goes to ``refuse`` in the batch: its
    record leaves a ticket like an inline request's, so its answer waits for the flush."""
    audit = FakeAudit()
    seen: list[str] = []

    def refuse(request: Request, error: FerroError) -> Response:
        assert request.tickets is not None
        request.tickets.append(audit.append())  # as the application's request.refused would
        seen.append(error.code)
        return error_response(error, request.request_id)

    dispatcher = Dispatcher(lambda r: json_response(200, {}), inline=None, audit=audit,
                            workers=1, log=logging.getLogger("test"), wake=lambda: None,
                            refuse=refuse)
    sock = socket.socket()
    request = Request("GET", "/", "/", {}, Headers(), b"", "127.0.0.1", 1, None, "r1", 0.0)
    dispatcher.take(Conn(sock, ("127.0.0.1", 1)), Incoming(request, BadRequest("bad"), False,
                                                           False))
    sock.close()
    assert dispatcher.answers() == [] and seen == ["bad_request"]
    dispatcher.hand_over(in_progress=lambda: 1, now=0.0)
    assert statuses(wait_answers(dispatcher, 1)) == {"r1": 400}
    assert audit.waited == [1]
    dispatcher.close(1)


def test_a_failing_refuse_still_answers_the_refusal() -> None:
    def refuse(request: Request, error: FerroError) -> Response:
        raise RuntimeError("bug")

    dispatcher = Dispatcher(lambda r: json_response(200, {}), inline=None, audit=None,
                            workers=1, log=logging.getLogger("test"), wake=lambda: None,
                            refuse=refuse)
    request = Request("GET", "/", "/", {}, Headers(), b"", "127.0.0.1", 1, None, "r1", 0.0)
    assert dispatcher.call_refuse(request, BadRequest("bad")).status == 400
    dispatcher.close(1)
