"""api/spread.py: a process holding more connections than a sibling hands its new one over,
over a real Unix socket, with real TCP connections; a sibling that is down is handed nothing."""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from ferrohsm.api.listener import Listener
from ferrohsm.api.spread import DOWN, MAX_IN_FLIGHT, STUCK_AFTER, Member, Spread


@pytest.fixture
def make() -> Iterator[Callable[[int], Spread]]:
    """Spreads closed after the test."""
    made: list[Spread] = []

    def spread(count: int) -> Spread:
        made.append(Spread(count))
        return made[-1]
    yield spread
    for one in made:
        one.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


def group(make: Callable[[int], Spread], *held: int) -> tuple[Spread, list[Member]]:
    """A spread of ``len(held)`` processes, process i holding ``held[i]`` connections."""
    spread = make(len(held))
    members = [spread.member(i) for i in range(len(held))]
    for member, count in zip(members, held, strict=True):
        member.publish(count)
    return spread, members


def connect(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(client, the server's accepted end)."""
    client = socket.create_connection(listener.getsockname())
    server_end, _ = listener.accept()
    return client, server_end


def test_the_busier_process_hands_a_new_connection_to_the_idler_one(
        listener: socket.socket, make: Callable[[int], Spread]) -> None:
    _, (busy, idle) = group(make, 3, 0)
    client, accepted = connect(listener)
    assert busy.hand_off(accepted, held=3)
    assert accepted.fileno() == -1  # closed here: the sibling has it now
    handed = idle.receive()
    assert handed is not None
    sock, peer = handed
    assert peer == client.getsockname()
    client.sendall(b"first bytes")
    assert sock.recv(100) == b"first bytes"  # the same connection, nothing read before
    assert (busy.handed, idle.adopted) == (1, 1)
    assert idle.receive() is None
    client.close()
    sock.close()


def test_an_even_split_keeps_the_connection(
        listener: socket.socket, make: Callable[[int], Spread]) -> None:
    _, (first, second) = group(make, 4, 4)
    client, accepted = connect(listener)
    assert not first.hand_off(accepted, held=4)  # 5/4 is as even as 4/5
    assert accepted.fileno() != -1
    assert second.receive() is None
    client.close()
    accepted.close()


def test_hand_overs_in_flight_count_until_the_sibling_adopts_them(
        listener: socket.socket, make: Callable[[int], Spread]) -> None:
    """A burst: the sibling has not read its queue yet, so its published count is stale."""
    _, (busy, idle) = group(make, 8, 4)
    pairs = [connect(listener) for _ in range(4)]
    handed = [busy.hand_off(accepted, held=8) for _, accepted in pairs]
    assert handed == [True] * 4
    client, accepted = connect(listener)
    assert not busy.hand_off(accepted, held=8)  # 4 + 4 in flight: 8 is not fewer than 8
    adopted = [idle.receive() for _ in range(4)]
    assert all(adopted) and idle.receive() is None
    for (client_end, _), got in zip(pairs, adopted, strict=True):
        assert got is not None and got[1] == client_end.getsockname()
        got[0].close()
        client_end.close()
    client.close()
    accepted.close()


def test_a_process_that_is_down_or_draining_is_handed_nothing(
        listener: socket.socket, make: Callable[[int], Spread]) -> None:
    assert make(2).cells[1] == DOWN  # not started yet: nobody hands it anything
    spread, (busy, gone, draining) = group(make, 10, 0, 0)
    spread.down(1)  # the parent reaped it
    draining.stop()
    client, accepted = connect(listener)
    assert not busy.hand_off(accepted, held=10)
    assert gone.receive() is None and draining.receive() is None
    client.close()
    accepted.close()


def test_the_least_loaded_of_several_siblings_gets_it(
        listener: socket.socket, make: Callable[[int], Spread]) -> None:
    _, members = group(make, 9, 5, 2, 7)
    client, accepted = connect(listener)
    assert members[0].hand_off(accepted, held=9)
    assert members[1].receive() is None and members[3].receive() is None
    got = members[2].receive()
    assert got is not None
    got[0].close()
    client.close()


def test_a_client_gone_before_adoption_is_skipped(
        listener: socket.socket, make: Callable[[int], Spread]) -> None:
    spread, (busy, idle) = group(make, 2, 0)
    client, accepted = connect(listener)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    client.close()  # a reset: getpeername fails on the adopted end
    assert busy.hand_off(accepted, held=2)
    assert idle.receive() is None  # skipped, not raised
    assert idle.adopted == 0
    # it was taken off the queue all the same: the busy process no longer counts it in flight
    assert spread.cells[2 + 0 * 2 + 1] == 1 and spread.cells[2 + 4 + 1 * 2 + 0] == 1


def test_connections_handed_to_a_process_that_died_go_to_a_live_one(
        listener: socket.socket, make: Callable[[int], Spread]) -> None:
    spread, (busy, _, other) = group(make, 5, 0, 1)
    client, accepted = connect(listener)
    assert busy.hand_off(accepted, held=5)  # to the one holding none, which then dies
    spread.down(1)  # the parent reaps it before it took the connection
    assert spread.cells[1] == DOWN
    got = other.receive()
    assert got is not None and got[1] == client.getsockname()
    client.sendall(b"still here")
    assert got[0].recv(100) == b"still here"
    # the dead process's hand-over is settled, and the live one counts nothing it did not get
    # from a sibling: nobody's estimate of anybody's load drifts
    assert spread.cells[3 + 0 * 3 + 1] == 1 and spread.cells[3 + 9 + 1 * 3 + 0] == 1
    assert all(spread.cells[3 + 9 + 2 * 3 + j] == 0 for j in range(3))
    got[0].close()
    client.close()


def test_with_no_live_process_left_the_connection_is_closed(
        listener: socket.socket, make: Callable[[int], Spread]) -> None:
    spread, (first, _) = group(make, 3, 0)
    client, accepted = connect(listener)
    assert first.hand_off(accepted, held=3)
    first.stop()  # draining
    spread.down(1)
    client.settimeout(5)
    assert client.recv(100) == b""  # closed, not left hanging
    client.close()


def test_a_connection_admission_turns_away_is_not_counted(
        make: Callable[[int], Spread]) -> None:
    """The listener counts a connection in when ``accept`` returns it; one the server then
    refuses (a per-address cap) is counted out again, or siblings would see one too many."""
    spread, (me, _) = group(make, 0, 0)
    selector = selectors.DefaultSelector()
    listener = Listener("127.0.0.1", 0, 16, False, selector, "listener", me)
    client = socket.create_connection(listener.address)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                sock, _ = listener.accept(held=0)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        assert spread.cells[0] == 1
        listener.refuse(sock, held=0)
        assert spread.cells[0] == 0 and sock.fileno() == -1
        listener.close()
        assert spread.cells[0] == DOWN  # closed: siblings hand it nothing more
    finally:
        client.close()
        listener.close()
        selector.close()


def test_a_spread_needs_two_processes_and_at_most_256() -> None:
    with pytest.raises(ValueError):
        Spread(1)
    with pytest.raises(ValueError):
        Spread(257)


def test_a_sibling_that_leaves_its_queue_untaken_is_passed_over(
        listener: socket.socket, make: Callable[[int], Spread]) -> None:
    """A stopped sibling (SIGSTOP, a stalled loop) holding few connections drew the new ones
    of a healthy process, and each of them hung: once a hand-over has waited STUCK_AFTER, or
    MAX_IN_FLIGHT wait, the sibling is handed nothing more until it takes its queue."""
    _, (busy, stopped) = group(make, 8, 0)
    first = connect(listener)
    assert busy.hand_off(first[1], held=8)
    time.sleep(STUCK_AFTER + 0.05)  # the sibling never read its queue meanwhile
    client, accepted = connect(listener)
    assert not busy.hand_off(accepted, held=8)  # kept: 8 + 1 here beats a hung client
    got = stopped.receive()  # it resumes and takes its queue: it is handed to again
    assert got is not None
    second = connect(listener)
    assert busy.hand_off(second[1], held=9)
    burst = [connect(listener) for _ in range(MAX_IN_FLIGHT)]
    handed = [busy.hand_off(accepted_end, held=30) for _, accepted_end in burst]
    assert handed == [True] * (MAX_IN_FLIGHT - 1) + [False]  # one in flight already
    for end in (first[0], client, accepted, got[0], second[0], *(c for c, _ in burst),
                *(a for _, a in burst if a.fileno() != -1)):
        end.close()
    while (more := stopped.receive()) is not None:
        more[0].close()
