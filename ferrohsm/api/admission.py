"""Admission of connections to the event-loop server: no single client can starve it.

Accounting happens per connection, at accept, at its first answered request and at close (never
per request), all on the loop thread:

- per source address, at most ``per_ip`` open connections, of which at most ``unproductive_per_ip``
  UNPRODUCTIVE: not yet past the TLS handshake and a first answered request (a silent peer, a
  slowloris dribbling its first head). A connection over either cap is closed once accepted.
  ``exempt`` addresses (the trusted proxies of ``[rate_limit]``, which speak for many clients)
  are not capped per address.
- a share of the slots (``reserved`` of them) is kept for authenticated peers: a connection that
  carried a request with a valid token is TRUSTED, and so is, for a while, its address (the last
  ``TRUSTED_ADDRESSES`` such addresses are remembered), so a fresh connection from a service
  that authenticated before may use the reserved slots too. Anonymous connections fill only the
  others; a new one beyond them replaces the oldest unproductive (else the longest-idle, else
  the one whose request has been arriving, or whose answer has waited for the peer to read it,
  the longest, ``STALLED`` seconds at least) anonymous connection, or is closed when every
  anonymous connection is busy. (A peer that got one answer to ``/healthz`` and then dribbled
  a body on each of its connections kept every anonymous slot, and every new client out, for
  as long as it liked.)
- eviction order when someone must make room (``victim``): an unproductive connection (the
  oldest of the address holding the most), then the longest-idle keep-alive one; anonymous
  before trusted; for a new anonymous client, then an anonymous one stalled mid-request; ones
  whose request is being answered never.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable

from .connection import BODY, HANDSHAKE, HEAD, IDLE, WRITING, Conn

TRUSTED_ADDRESSES = 4096
YOUNG = 0.05  # seconds a new connection is spared eviction (``victim``), unless its address
FLOODING = 4  # holds this many unproductive connections
WARN_EVERY = 60.0  # seconds between warnings of connections turned away
STALLED = 1.0  # seconds a request may take to arrive before its anonymous connection may go
# states in which a connection may be evicted (and a refused handshake's drain: Conn.raw)
_UNPRODUCTIVE = (HANDSHAKE, IDLE, HEAD, BODY)


class Admission:
    def __init__(self, max_connections: int, per_ip: int | None, unproductive_per_ip: int | None,
                 reserved_share: float, exempt: Callable[[str], bool] | None = None) -> None:
        if not 0.0 <= reserved_share < 1.0:
            raise ValueError("reserved_authenticated_share must be in [0, 1)")
        self.per_ip = max(1, per_ip or max_connections)
        self.unproductive_per_ip = max(1, unproductive_per_ip or max_connections)
        self.reserved = int(max_connections * reserved_share)
        self.anonymous_slots = max_connections - self.reserved
        self.turned_away = 0  # connections closed at accept by the caps
        self._warned_at = float("-inf")
        self.exempt = exempt  # addresses the per-address caps do not apply to (trusted proxies)
        self._per_ip: dict[str, list[int]] = {}  # address -> [open, unproductive]
        self._anonymous = 0  # open connections that are not trusted
        self._trusted: collections.OrderedDict[str, None] = collections.OrderedDict()

    def admit(self, ip: str, conns: Iterable[Conn], log: logging.Logger,
              now: float | None = None) -> tuple[bool, bool, Conn | None]:
        """Whether a new connection from ``ip`` is admitted, whether it is trusted, and the
        connection to close first to make room for it (if any)."""
        why = self.over_cap(ip)
        trusted = why is None and ip in self._trusted
        victim = None
        if why is None and not trusted and self.reserved and self._anonymous >= self.anonymous_slots:
            held = self._per_ip.get(ip)
            victim = self.victim(conns, anonymous_only=True, now=now,
                                 stalled_before=None if now is None else now - STALLED,
                                 own=ip if held is not None and held[0] >= FLOODING else None)
            if victim is None:
                why = "anonymous share full"
        if why is None:
            return True, trusted, victim
        self.turned_away += 1
        if now is not None and now - self._warned_at >= WARN_EVERY:  # seen, never a flood of lines
            log.warning("turned away a connection from %s: %s (%d turned away so far)", ip, why,
                        self.turned_away)
            self._warned_at = now
        else:
            log.debug("turned away a connection from %s: %s", ip, why)
        return False, False, None

    def over_cap(self, ip: str) -> str | None:
        """Why a new connection from ``ip`` is refused outright, or None."""
        counts = self._per_ip.get(ip)
        if counts is None:
            return None
        why = None
        if counts[0] >= self.per_ip:
            why = "per-address connection cap"
        elif counts[1] >= self.unproductive_per_ip:
            why = "per-address cap on unproductive connections"
        if why is not None and self.exempt is not None and self.exempt(ip):
            return None
        return why

    def opened(self, conn: Conn, now: float, trusted: bool) -> None:
        conn.accepted_at, conn.trusted = now, trusted
        counts = self._per_ip.setdefault(conn.peer[0], [0, 0])
        counts[0] += 1
        counts[1] += 1
        if not trusted:
            self._anonymous += 1

    def productive(self, conn: Conn) -> None:
        """``conn``'s first request is answered."""
        conn.productive = True
        counts = self._per_ip.get(conn.peer[0])
        if counts is not None:
            counts[1] -= 1

    def trust(self, conn: Conn) -> None:
        """``conn`` carried a valid token: it, and for a while its address, are trusted."""
        if not conn.trusted:
            conn.trusted = True
            self._anonymous -= 1
        ip = conn.peer[0]
        self._trusted[ip] = None
        self._trusted.move_to_end(ip)
        if len(self._trusted) > TRUSTED_ADDRESSES:
            self._trusted.popitem(last=False)

    def closed(self, conn: Conn) -> None:
        if not conn.trusted:
            self._anonymous -= 1
        ip = conn.peer[0]
        counts = self._per_ip.get(ip)
        if counts is None:
            return
        counts[0] -= 1
        if not conn.productive:
            counts[1] -= 1
        if counts[0] <= 0:
            del self._per_ip[ip]

    def victim(self, conns: Iterable[Conn], *, anonymous_only: bool,
               now: float | None = None, idle: bool = True,
               stalled_before: float | None = None, own: str | None = None) -> Conn | None:
        """An unproductive connection, else the longest-idle keep-alive one; anonymous before
        trusted; None when every candidate is busy. Of the unproductive ones, the oldest of the
        address holding the most: under a flood of connections as fast as the loopback takes
        them, the oldest overall was a client's own new connection within milliseconds, before
        its first answer, while the flooding address kept dozens. Given ``now``, a connection
        accepted less than YOUNG seconds ago is spared unless its address holds FLOODING or
        more unproductive ones: a client has not had the time to send its first request.
        Without ``idle``, only unproductive connections are candidates. Given
        ``stalled_before``, last of all an anonymous connection whose request started arriving
        before then. Given ``own``, the address of a newcomer that holds FLOODING connections
        already, that address's own connections go first: it replaces its own, not a client's
        new connection (which, before its first answer, would otherwise go first)."""
        best: Conn | None = None
        best_key: tuple[bool, int, bool, int, float] = (True, 3, True, 0, 0.0)
        per_ip = self._per_ip
        young = float("inf") if now is None else now - YOUNG  # None: no connection spared
        for conn in conns:
            if anonymous_only and conn.trusted:
                continue
            if not conn.productive and (conn.state in _UNPRODUCTIVE or conn.raw):
                held = per_ip.get(conn.peer[0])
                count = held[1] if held else 0
                if conn.accepted_at > young and count < FLOODING:
                    continue
                key = (conn.peer[0] != own, 0, conn.trusted, -count, conn.accepted_at)
            elif idle and conn.state == IDLE:
                key = (conn.peer[0] != own, 1, conn.trusted, 0, conn.idle_since)
            elif stalled_before is not None and not conn.trusted and (
                    (conn.state in (HEAD, BODY) and conn.received_at < stalled_before)
                    or (conn.state == WRITING and conn.write_since < stalled_before)):
                since = conn.received_at if conn.state != WRITING else conn.write_since
                key = (conn.peer[0] != own, 2, False, 0, since)
            else:
                continue
            if key < best_key:
                best, best_key = conn, key
        return best
