"""The listening socket of the event-loop server, with the connection cap's paused mode.

At the cap the server stops watching the listener (new clients wait in the kernel's backlog)
and only peeks, every ``BACKLOG_POLL`` seconds, whether someone is queued there, so it can make
room (server.py evicts the longest-idle connection). Peeking uses ``select.poll``, which has no
descriptor limit, unlike ``select.select``.

With ``[server] processes = N`` the listener also takes the connections a sibling handed over,
and hands a new one to a sibling holding fewer (spread.py): both arrive as ``accept()``.
"""

from __future__ import annotations

import select
import selectors
import socket
from typing import Any

from .spread import Member

BACKLOG_POLL = 0.1


class Listener:
    def __init__(self, host: str, port: int, backlog: int, reuse_port: bool,
                 selector: selectors.BaseSelector, tag: Any, spread: Member | None = None
                 ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=backlog,
                                         reuse_port=reuse_port)
        self.sock.setblocking(False)
        name = self.sock.getsockname()
        self.address = (str(name[0]), int(name[1]))
        self._selector, self._tag = selector, tag
        self._poll = select.poll()
        self.spread = spread
        if spread is not None:
            spread.publish(0)  # listening: siblings may hand this process connections now
        self._sources: list[Any] = [self.sock] + ([spread.inbox] if spread else [])
        for source in self._sources:
            self._poll.register(source, select.POLLIN)
            self._selector.register(source, selectors.EVENT_READ, tag)
        self.paused = False
        self.closed = False
        self.next_check = 0.0

    def accept(self, held: int) -> tuple[socket.socket, Any]:
        """The next new connection (``held``: those the server holds now): one a sibling
        handed over, else one from the kernel, unless it goes to a sibling holding fewer.
        BlockingIOError when there is none."""
        spread = self.spread
        if spread is None:
            return self.sock.accept()
        handed = spread.receive()
        if handed is not None:
            spread.publish(held + 1)
            return handed
        while True:
            sock, addr = self.sock.accept()
            if not spread.hand_off(sock, held):
                spread.publish(held + 1)
                return sock, addr

    def refuse(self, sock: socket.socket, held: int) -> None:
        """Close a connection ``accept`` returned that admission turned away: ``held`` are
        still held (``accept`` counted it in already)."""
        sock.close()
        self._publish(held)

    def holding(self, held: int, cap: int) -> None:
        """A connection closed: ``held`` are left; below ``cap``, watch for new ones again."""
        self._publish(held)
        if held < cap:
            self.resume()

    def _publish(self, held: int) -> None:
        """Tell the siblings (spread.py) how many this process holds, while it listens."""
        if self.spread is not None and not self.closed:
            self.spread.publish(held)

    def pause(self, now: float) -> None:
        """Stop watching for new clients; ``queued()`` tells whether one is waiting."""
        if not self.paused and not self.closed:
            for source in self._sources:
                self._selector.unregister(source)
            self.paused, self.next_check = True, now + BACKLOG_POLL

    def resume(self) -> None:
        if self.paused and not self.closed:
            for source in self._sources:
                self._selector.register(source, selectors.EVENT_READ, self._tag)
            self.paused = False

    def queued(self, now: float) -> bool:
        """While paused, at most every BACKLOG_POLL: whether a client waits in the backlog."""
        if not self.paused or self.closed or now < self.next_check:
            return False
        self.next_check = now + BACKLOG_POLL
        return bool(self._poll.poll(0))

    def waiting(self) -> bool:
        """Whether a client waits in the backlog (or a sibling's hand-over), now."""
        return not self.closed and bool(self._poll.poll(0))

    def close(self) -> None:
        """Refuse new connections from now on."""
        if self.closed:
            return
        if not self.paused:
            for source in self._sources:
                self._selector.unregister(source)
        self.closed = True
        self.sock.close()
        if self.spread is not None:  # siblings hand nothing more; what is queued waits for
            self.spread.stop()       # the next process started in this slot


class Waker:
    """A socket pair that interrupts the loop's select from any thread."""

    def __init__(self, selector: selectors.BaseSelector, tag: Any) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        selector.register(self._r, selectors.EVENT_READ, tag)

    def wake(self) -> None:
        try:
            self._w.send(b"\0")
        except OSError:
            pass  # the pipe is full: the loop is awake already

    def drain(self) -> None:
        try:
            while self._r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        self._r.close()
        self._w.close()
