"""The deadline on waits for PostgreSQL (store/pgwatch.py), on real sockets: a thread blocked
reading a socket whose peer never answers is woken when the deadline passes, the database is
then silent (calls refused at once) until an answer, and a probe ends the silence."""

from __future__ import annotations

import os
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from ferrohsm.domain.errors import StoreError
from ferrohsm.store import pgwatch
from ferrohsm.store.pgwatch import Watchdog


def conn_of(sock: socket.socket) -> Any:
    """What the watchdog reads of a psycopg connection: ``pgconn.socket``."""
    return SimpleNamespace(pgconn=SimpleNamespace(socket=sock.fileno()))


def answered(dog: Watchdog) -> None:
    """An answer (a probe's): ends the silence, so the test leaves no watchdog thread."""
    a, b = socket.socketpair()
    with a, b:
        b.send(b"!")
        with dog.watch(conn_of(a), probe=True):
            a.recv(1)
    assert dog.silence() is None


def test_a_wait_past_its_deadline_is_cut_and_the_database_is_then_silent() -> None:
    dog = Watchdog(seconds=0.2)
    mine, peer = socket.socketpair()
    with mine, peer:
        began = time.monotonic()
        with dog.watch(conn_of(mine)) as watch:
            assert mine.recv(1) == b""  # woken: the socket was shut down, the peer said nothing
        took = time.monotonic() - began
        assert watch.cut and dog.cuts == 1
        assert 0.2 + pgwatch.GRACE <= took < 0.2 + pgwatch.GRACE + 1.0, took
        silence = dog.silence()
        assert silence is not None and "has not answered" in silence
        with pytest.raises(StoreError, match="has not answered"), dog.watch(conn_of(peer)):
            pytest.fail("entered a watch while the database is silent")
    answered(dog)


def test_an_answer_in_time_is_not_cut_and_ends_a_silence() -> None:
    dog = Watchdog(seconds=0.1)
    mine, peer = socket.socketpair()
    with mine, peer:
        with dog.watch(conn_of(mine)) as watch:
            mine.recv(1)
        assert watch.cut and dog.silence() is not None
        a, b = socket.socketpair()
        with a, b:
            b.send(b"!")
            with dog.watch(conn_of(a), probe=True) as answered:  # a probe may ask meanwhile
                assert a.recv(1) == b"!"
            assert not answered.cut
        assert dog.silence() is None and dog.slowest() == 0.0


def test_a_probe_is_started_while_silent_and_its_answer_ends_the_silence() -> None:
    dog = Watchdog(seconds=0.1)
    asked = threading.Event()

    def probe() -> None:
        a, b = socket.socketpair()
        with a, b:
            b.send(b"!")
            with dog.watch(conn_of(a), probe=True):
                a.recv(1)
        asked.set()
    dog.offer_probe(probe)
    dog.offer_probe(lambda: None)  # the first offered is kept
    mine, peer = socket.socketpair()
    with mine, peer, dog.watch(conn_of(mine)):
        mine.recv(1)
    assert asked.wait(5) and dog.silence() is None


def test_a_closed_connection_is_watched_without_a_socket() -> None:
    """psycopg raises for the socket of a closed connection: the call itself then fails."""
    class Closed:
        @property
        def pgconn(self) -> Any:
            raise RuntimeError("the connection is closed")
    dog = Watchdog(seconds=5)
    with dog.watch(Closed()) as watch:
        assert watch.fd == -1
    assert not watch.cut


def test_a_forked_child_inherits_no_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child forked while its parent found the database silent starts afresh: it asks."""
    dog = Watchdog(seconds=5)
    mine, peer = socket.socketpair()
    with mine, peer:
        with dog.watch(conn_of(mine)):
            pass  # the parent's thread runs
        dog._silent_since = time.monotonic()  # the parent's state at the fork
        monkeypatch.setattr(os, "getpid", lambda: -7)  # the child's pid
        with dog.watch(conn_of(mine)) as watch:
            pass
        assert not watch.cut and dog.silence() is None


def test_a_server_refusing_the_client_check_keeps_its_statement_timeout() -> None:
    """PostgreSQL refuses client_connection_check_interval where its platform cannot check
    (Windows): the session goes on with statement_timeout alone, not refused (a red team)."""
    ran: list[str] = []

    class Conn:
        info = SimpleNamespace(server_version=150004)

        def execute(self, sql: str, args: object = None) -> None:
            if "client_connection_check_interval" in sql:
                raise RuntimeError("client_connection_check_interval must be set to 0 on "
                                   "this platform")
            ran.append(f"{sql} {args}")
    Watchdog(seconds=3).session_settings(Conn())
    assert ran == ["SELECT set_config('statement_timeout', %s, false) ('3000',)"]


def test_a_session_that_cannot_connect_says_why_without_the_password() -> None:
    pytest.importorskip("psycopg")
    from ferrohsm.store.pg_shared import connect
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(StoreError) as caught:
        connect(f"postgresql://ferrohsm:s3cret-pw@127.0.0.1:{port}/db")
    message = caught.value.message
    assert "refused" in message and f"127.0.0.1:{port}/db" in message, message
    assert "s3cret-pw" not in message


def test_the_watchdog_thread_ends_when_idle_and_starts_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No thread is kept for a database nobody waits on (a server's shutdown checks that its
    threads are gone): it ends after IDLE_EXIT, and the next wait starts one again."""
    monkeypatch.setattr(pgwatch, "IDLE_EXIT", 0.1)
    dog = Watchdog(seconds=0.2)

    def watchdogs() -> int:
        return sum(t.name == "ferrohsm-pg-watchdog" and t.is_alive()
                   for t in threading.enumerate())
    before = watchdogs()
    mine, peer = socket.socketpair()
    with mine, peer:
        with dog.watch(conn_of(mine)):
            assert watchdogs() == before + 1
        deadline = time.monotonic() + 5
        while watchdogs() > before:
            assert time.monotonic() < deadline, "the idle watchdog thread did not end"
            time.sleep(0.05)
        with dog.watch(conn_of(mine)) as watch:  # and a wait is still cut after that
            assert mine.recv(1) == b""
        assert watch.cut
    answered(dog)
