"""New connections spread evenly over the processes of ``[server] processes = N``.

SO_REUSEPORT gives each new connection to one process's socket by a hash of its addresses, so 16
clients land 8/8 only about one time in five, and 12/4 or worse about one time in twelve. A
process holding twice its sibling's connections is saturated while the other idles (measured in
bench/RESULTS.md: with 16 clients on two processes, 12/4 costs about 9 % of the throughput of
8/8). So a process that accepts a connection while it holds more than the least-loaded sibling
hands the connection to that sibling before reading a byte of it (before the TLS handshake):
the socket goes over a Unix datagram socket (SCM_RIGHTS) and the sibling adopts it as if it had
accepted it itself (its admission rules included). A connection moves at most once.

What the processes share, made by the supervising parent before it forks (``Spread``): one
anonymous shared memory map of counters, and a datagram socket pair per process (the process
reads one end, its siblings write to the other). Every counter has ONE writer, so nothing needs
a lock; a reader sees a slightly old value at worst, which costs a slightly uneven split, never
a lost connection:

* ``open[i]``: the connections process i holds (written by i), or DOWN when it takes none (not
  started yet, draining, dead: the parent writes DOWN when it reaps a child);
* ``sent[i][j]``: connections i handed to j (written by i);
* ``taken[j][i]``: connections j adopted from i (written by j).

Process i counts j's load as ``open[j] + sent[i][j] - taken[j][i]``: its own hand-overs still in
flight count, other processes' in flight to j do not (a burst can leave the split one or two
off). A hand-over that fails (the sibling's queue full) keeps the connection here.

A sibling that does not take what it was handed (stopped with SIGSTOP, its loop stalled) is
passed over: a process hands it nothing more while MAX_IN_FLIGHT of its own hand-overs wait in
that sibling's queue, or while one has waited there longer than STUCK_AFTER (a serving loop
takes its queue within a turn). Without this, a stopped sibling that holds few connections drew
the new connections of a healthy one until the counts evened out, and each of them hung.
"""

from __future__ import annotations

import collections
import mmap
import os
import socket
import struct
import time
from typing import Any

DOWN = 1 << 62  # open[i] of a process that takes no connection
MAX_PROCESSES = 256  # as [server].processes allows: the counters take 16 bytes x N^2
_SENDER = struct.Struct(">H")
PARENT = 0xFFFF  # the sender of a connection the parent passed on (counted by nobody)
MAX_IN_FLIGHT = 4  # hand-overs to one sibling not taken yet: more, and it is passed over
STUCK_AFTER = 0.25  # seconds a hand-over may wait in a sibling's queue before it is passed over


def _sent(count: int, i: int, j: int) -> int:
    """The cell of ``sent[i][j]``: after the ``count`` open cells."""
    return count + i * count + j


def _taken(count: int, j: int, i: int) -> int:
    """The cell of ``taken[j][i]``: after the open and sent cells."""
    return count * (1 + count) + j * count + i


def _take_one(inbox: socket.socket, cells: memoryview, count: int, receiver: int
              ) -> list[int] | None:
    """One message from ``receiver``'s queue: its descriptor (at most one; none for a message
    that carries none), counted as taken from its sender; None when the queue is empty."""
    try:
        data, fds, _, _ = socket.recv_fds(inbox, _SENDER.size, 1, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    if len(data) == _SENDER.size and fds:
        sender = _SENDER.unpack(data)[0]
        if sender < count:
            cells[_taken(count, receiver, sender)] += 1
    return fds


class Spread:
    """The shared counters and sockets of a group of ``count`` processes (made before fork)."""

    def __init__(self, count: int) -> None:
        if not 2 <= count <= MAX_PROCESSES:
            raise ValueError(f"a spread needs 2-{MAX_PROCESSES} processes")
        self.count = count
        self._map = mmap.mmap(-1, 8 * (count + 2 * count * count))  # MAP_SHARED, anonymous
        self.cells = memoryview(self._map).cast("q")
        for i in range(count):
            self.cells[i] = DOWN
        self.pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(count)]
        for inbox, outbox in self.pairs:
            inbox.setblocking(False)
            outbox.setblocking(False)

    def down(self, index: int) -> None:
        """Process ``index`` is gone (the parent, when it reaps it): it takes no connection,
        and those handed to it and not taken yet go to the least-loaded live sibling (closed
        when there is none), so that no client waits for a replacement that may be slow to
        come. The dead process's ``taken`` counters are settled here (nobody else writes them
        until its replacement starts, after this)."""
        self.cells[index] = DOWN
        while True:
            try:
                fds = _take_one(self.pairs[index][0], self.cells, self.count, index)
            except OSError:
                return
            if fds is None:
                return
            for fd in fds:
                self._pass_on(fd)

    def _pass_on(self, fd: int) -> None:
        """A connection a dead process never took: to the live process with the fewest."""
        live = [(self.cells[j], j) for j in range(self.count) if self.cells[j] < DOWN]
        try:
            if live:
                socket.send_fds(self.pairs[min(live)[1]][1], [_SENDER.pack(PARENT)], [fd],
                                socket.MSG_DONTWAIT)
        except OSError:
            pass  # its queue is full: the client sees the connection close
        finally:
            os.close(fd)  # ours; the receiver has its own copy in flight

    def close(self) -> None:
        """Close the sockets (the parent, when the group has stopped)."""
        for pair in self.pairs:
            for sock in pair:
                sock.close()

    def member(self, index: int) -> Member:
        """Process ``index``'s view (in that process, after fork)."""
        return Member(self, index)


class Member:
    """One process's side: publish its count, hand a new connection over, adopt handed ones."""

    def __init__(self, spread: Spread, index: int) -> None:
        self.index, self.count, self.cells = index, spread.count, spread.cells
        self.inbox = spread.pairs[index][0]
        self._out = [outbox for _, outbox in spread.pairs]
        # When each hand-over to sibling j not known to be taken was sent (its queue is FIFO)
        self._handed_at = [collections.deque[float]() for _ in range(spread.count)]
        self.handed = self.adopted = 0  # this process's totals (for tests and metrics)

    def publish(self, held: int) -> None:
        """This process holds ``held`` connections now."""
        self.cells[self.index] = held

    def stop(self) -> None:
        """This process takes no more connections (it drains)."""
        self.cells[self.index] = DOWN

    def hand_off(self, sock: socket.socket, held: int) -> bool:
        """Give a just-accepted ``sock`` to the least-loaded sibling when it holds fewer than
        ``held`` (this process's connections without ``sock``): True when it went (and is
        closed here), False to keep it."""
        target = self._least_loaded(held)
        if target < 0:
            return False
        try:
            socket.send_fds(self._out[target], [_SENDER.pack(self.index)], [sock.fileno()],
                            socket.MSG_DONTWAIT)
        except OSError:  # its queue is full, or it is gone: keep the connection here
            return False
        self.cells[_sent(self.count, self.index, target)] += 1
        self._handed_at[target].append(time.monotonic())
        self.handed += 1
        sock.close()
        return True

    def receive(self) -> tuple[socket.socket, Any] | None:
        """A connection a sibling handed over (with its peer address), or None."""
        while True:
            fds = _take_one(self.inbox, self.cells, self.count, self.index)
            if fds is None:
                return None
            if not fds:
                continue
            sock = socket.socket(fileno=fds[0])
            try:
                peer = sock.getpeername()
            except OSError:  # the client is gone already
                sock.close()
                continue
            self.adopted += 1
            return sock, peer

    def _least_loaded(self, held: int) -> int:
        """The sibling with the fewest connections, if it has fewer than ``held``; else -1."""
        cells, count, me = self.cells, self.count, self.index
        best, least = -1, held
        for j in range(count):
            if j == me:
                continue
            load = cells[j]
            if load >= DOWN:
                continue
            in_flight = cells[_sent(count, me, j)] - cells[_taken(count, j, me)]
            if in_flight > 0 and self._stuck(j, in_flight):
                continue
            load += in_flight
            if load < least:
                best, least = j, load
        return best

    def _stuck(self, j: int, in_flight: int) -> bool:
        """Whether sibling ``j`` leaves this process's hand-overs in its queue: too many, or
        one for too long (the ones it took were the oldest: its queue is FIFO)."""
        times = self._handed_at[j]
        while len(times) > in_flight:
            times.popleft()
        if not times:
            return False
        return len(times) >= MAX_IN_FLIGHT or time.monotonic() - times[0] > STUCK_AFTER
