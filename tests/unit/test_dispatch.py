"""When the dispatcher starts an audit flush (hand_over): at once for a lone request, not while
another flush runs, once most requests in progress wait, and never later than MAX_HOLD."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from ferrohsm.api.connection import Conn, Incoming
from ferrohsm.api.dispatch import MAX_HOLD, Dispatcher
from ferrohsm.api.http import Headers, Request, Response, error_response, json_response
from ferrohsm.domain.errors import BadRequest, FerroError


class FakeDeferral:
    """Counts deferred records; sync() waits for ``release`` (a flush in progress)."""

    def __init__(self) -> None:
        self.scope: list[int] | None = None
        self.synced: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.seq = 0

    def begin_deferral(self) -> None:
        self.scope = []

    def end_deferral(self) -> list[Any]:
        scope, self.scope = self.scope or [], None
        return scope

    def deferred_count(self) -> int:
        return len(self.scope or [])

    def write_deferred(self, events: list[Any]) -> int:
        self.seq += len(events)
        return self.seq

    def sync(self, ticket: int) -> None:
        self.release.wait(5)
        self.synced.append(ticket)


def make() -> tuple[Dispatcher, FakeDeferral]:
    deferral = FakeDeferral()

    def app(request: Request) -> Response:
        assert deferral.scope is not None
        deferral.scope.append(1)  # as KeyService.record(defer=True) would
        return json_response(200, {})

    woken = threading.Event()
    dispatcher = Dispatcher(app, inline=lambda r: True, deferral=deferral, workers=1,
                            log=logging.getLogger("test"), wake=woken.set)
    return dispatcher, deferral


def run(dispatcher: Dispatcher, count: int) -> None:
    for n in range(count):
        sock = socket.socket()
        request = Request("POST", "/op", "/op", {}, Headers(), b"", "127.0.0.1", n, None,
                          f"r{n}", 0.0)
        dispatcher.take(Conn(sock, ("127.0.0.1", n)), Incoming(request, None, True, False))
        sock.close()
    assert dispatcher.answers() == []  # all wait for their flush


def wait_answers(dispatcher: Dispatcher, count: int) -> None:
    got: list[Any] = []
    for _ in range(500):
        got += dispatcher.answers()
        if len(got) >= count:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{len(got)} of {count} answers")


def test_a_lone_request_is_flushed_at_once() -> None:
    dispatcher, deferral = make()
    run(dispatcher, 1)
    dispatcher.hand_over(in_progress=lambda: 1, now=0.0)
    wait_answers(dispatcher, 1)
    assert deferral.synced == [1]
    dispatcher.close(1)


def test_held_until_most_requests_wait_or_max_hold() -> None:
    dispatcher, deferral = make()
    run(dispatcher, 2)
    start = dispatcher._held_since
    dispatcher.hand_over(in_progress=lambda: 10, now=start)  # 2 of 10 waiting: hold
    assert dispatcher.hold_deadline() == start + MAX_HOLD
    dispatcher.hand_over(in_progress=lambda: 10, now=start + MAX_HOLD)  # held long enough
    wait_answers(dispatcher, 2)
    run(dispatcher, 9)
    dispatcher.hand_over(in_progress=lambda: 10, now=dispatcher._held_since)  # 9 of 10: go
    wait_answers(dispatcher, 9)
    assert deferral.synced == [2, 11]
    dispatcher.close(1)


def test_no_second_flush_while_one_runs() -> None:
    dispatcher, deferral = make()
    deferral.release.clear()
    run(dispatcher, 1)
    dispatcher.hand_over(in_progress=lambda: 1, now=0.0)  # the flush starts and blocks
    run(dispatcher, 1)
    dispatcher.hand_over(in_progress=lambda: 1, now=dispatcher._held_since)
    assert dispatcher.hold_deadline() is None and dispatcher._held  # held behind the flush
    deferral.release.set()
    wait_answers(dispatcher, 1)
    dispatcher.hand_over(in_progress=lambda: 1, now=dispatcher._held_since)
    wait_answers(dispatcher, 1)
    assert deferral.synced == [1, 2]
    dispatcher.close(1)


def test_a_refusal_is_answered_by_refuse_after_its_record_is_flushed() -> None:
    """A request the server refused while reading it goes to ``refuse`` in the batch: its
    record is deferred like an inline request's, so its answer waits for the flush."""
    deferral = FakeDeferral()
    seen: list[str] = []

    def refuse(request: Request, error: FerroError) -> Response:
        assert deferral.scope is not None
        deferral.scope.append(1)  # as the application's request.refused record would
        seen.append(error.code)
        return error_response(error, request.request_id)

    dispatcher = Dispatcher(lambda r: json_response(200, {}), inline=None, deferral=deferral,
                            workers=1, log=logging.getLogger("test"), wake=lambda: None,
                            refuse=refuse)
    sock = socket.socket()
    request = Request("GET", "/", "/", {}, Headers(), b"", "127.0.0.1", 1, None, "r1", 0.0)
    dispatcher.take(Conn(sock, ("127.0.0.1", 1)), Incoming(request, BadRequest("bad"), False,
                                                           False))
    sock.close()
    assert dispatcher.answers() == [] and seen == ["bad_request"]
    dispatcher.hand_over(in_progress=lambda: 1, now=0.0)
    wait_answers(dispatcher, 1)
    assert deferral.synced == [1]
    dispatcher.close(1)


def test_a_failing_refuse_still_answers_the_refusal() -> None:
    def refuse(request: Request, error: FerroError) -> Response:
        raise RuntimeError("bug")

    dispatcher = Dispatcher(lambda r: json_response(200, {}), inline=None, deferral=None,
                            workers=1, log=logging.getLogger("test"), wake=lambda: None,
                            refuse=refuse)
    request = Request("GET", "/", "/", {}, Headers(), b"", "127.0.0.1", 1, None, "r1", 0.0)
    assert dispatcher.call_refuse(request, BadRequest("bad")).status == 400
    dispatcher.close(1)
