"""The listening socket of the event-loop server, with the connection cap's paused mode.

At the cap the server stops watching the listener (new clients wait in the kernel's backlog)
and only peeks, every ``BACKLOG_POLL`` seconds, whether someone is queued there, so it can make
room (server.py evicts the longest-idle connection). Peeking uses ``select.poll``, which has no
descriptor limit, unlike ``select.select``.
"""

from __future__ import annotations

import select
import selectors
import socket
from typing import Any

BACKLOG_POLL = 0.1


class Listener:
    def __init__(self, host: str, port: int, backlog: int, reuse_port: bool,
                 selector: selectors.BaseSelector, tag: Any) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=backlog,
                                         reuse_port=reuse_port)
        self.sock.setblocking(False)
        name = self.sock.getsockname()
        self.address = (str(name[0]), int(name[1]))
        self._selector, self._tag = selector, tag
        self._poll = select.poll()
        self._poll.register(self.sock, select.POLLIN)
        self._selector.register(self.sock, selectors.EVENT_READ, tag)
        self.paused = False
        self.closed = False
        self.next_check = 0.0

    def pause(self, now: float) -> None:
        """Stop watching for new clients; ``queued()`` tells whether one is waiting."""
        if not self.paused and not self.closed:
            self._selector.unregister(self.sock)
            self.paused, self.next_check = True, now + BACKLOG_POLL

    def resume(self) -> None:
        if self.paused and not self.closed:
            self._selector.register(self.sock, selectors.EVENT_READ, self._tag)
            self.paused = False

    def queued(self, now: float) -> bool:
        """While paused, at most every BACKLOG_POLL: whether a client waits in the backlog."""
        if not self.paused or self.closed or now < self.next_check:
            return False
        self.next_check = now + BACKLOG_POLL
        return bool(self._poll.poll(0))

    def close(self) -> None:
        """Refuse new connections from now on."""
        if self.closed:
            return
        if not self.paused:
            self._selector.unregister(self.sock)
        self.closed = True
        self.sock.close()


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
