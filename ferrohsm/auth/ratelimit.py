"""Rate limiting: token buckets per actor and per source IP, with bounded memory.

Sans-I/O: every method takes ``now`` (monotonic seconds) from the caller, so the tests drive time.

- Authenticated requests draw from the bucket of their actor: the token's ``sub`` and role, so
  a fresh token for the same subject shares the bucket; rate and burst come from the role. A
  subject holding tokens of two roles has a bucket for each: each role's requests get exactly
  that role's limit, and neither role's spending refills or empties the other's.
- Unauthenticated requests (health, metrics, dashboard, 404s) and FAILED authentication draw from
  the bucket of the source IP (IPv6 grouped by /64, since one host owns a whole /64). A valid
  token never draws from it, so bogus tokens from an address (a NAT, a proxy) cannot lock out
  the valid ones sent from the same address.
- Memory is bounded: each table is an LRU of at most ``max_entries`` buckets. The least recently
  used bucket goes first; one that has refilled to its burst is indistinguishable from a new one,
  so evicting it loses nothing, and at the default rates an LRU bucket is nearly always full.
- ``X-Forwarded-For`` is believed only when the TCP peer is a configured trusted proxy; then the
  client is the right-most address that is not itself a trusted proxy.
- Across processes and nodes (auth/sharedlimit.py): each node keeps its own buckets, counts what
  each actor spent since the last exchange (``drain_used``) and is debited what the other nodes
  spent (``debit_actor``), every ~100 ms. Per-IP buckets stay per node.
"""

from __future__ import annotations

import ipaddress
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..domain.addresses import client_key, parse_address
from ..domain.errors import RateLimited

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_FORWARDED_HOPS = 32
# Between the role and the subject of an actor's name in the shared usage (auth/sharedlimit.py):
# a character no role name holds, so the name splits at its first one whatever the subject is.
ROLE_SEPARATOR = "\x1f"
# A bucket's tokens are computed from times, so the burst's last token can come out a few ulps
# short (50 requests at 1/100 s each end at 0.49000000000000004): this much is a whole token.
EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Limit:
    """A sustained ``rate`` (tokens per second) and a ``burst`` (bucket capacity)."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.rate > 0 and self.burst >= 1):
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")


class TokenBuckets:
    """One token bucket per key in an LRU table of bounded size; thread-safe.

    Each bucket is kept as the time at which it would be full again (GCRA's "theoretical
    arrival time"): a request spends 1/rate seconds of that timeline and is allowed while the
    timeline is at most burst/rate seconds ahead of now. One float a key, and a debit from
    another node is a time added, whatever the bucket held."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max(1, max_entries)
        self._buckets: OrderedDict[Any, float] = OrderedDict()  # key → when it is full again
        self._lock = threading.Lock()
        self.evicted = 0
        self.evicted_unfull = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Any, limit: Limit, now: float, cost: float = 1.0) -> float:
        """Spend ``cost`` tokens: 0.0 when allowed, else the seconds until it would be."""
        with self._lock:
            full_at = self._buckets.get(key)
            if full_at is None:
                while len(self._buckets) >= self._max:
                    self._evict_one(now)
                full_at = now
            else:
                self._buckets.move_to_end(key)
                if full_at < now:
                    full_at = now
            tokens = limit.burst - (full_at - now) * limit.rate + EPSILON
            if tokens >= cost:
                self._buckets[key] = full_at + cost / limit.rate
                return 0.0
            self._buckets[key] = full_at
            return (cost - tokens) / limit.rate

    def take_upto(self, key: Any, limit: Limit, now: float, count: int,
                  whole: bool = False) -> tuple[int, float]:
        """Spend up to ``count`` whole tokens, as many as the bucket holds (``whole``: all of
        them or none): how many were spent, and the seconds until one more would be (0.0 when
        all ``count`` were)."""
        if count <= 0:
            return 0, 0.0
        with self._lock:
            full_at = max(now, self._touch(key, now))
            tokens = limit.burst - (full_at - now) * limit.rate
            granted = min(count, max(0, int(tokens + EPSILON)))
            if whole and granted < count:
                granted = 0
            full_at += granted / limit.rate
            self._buckets[key] = full_at
            if granted == count:
                return granted, 0.0
            return granted, max(0.0, (1 - (tokens - granted)) / limit.rate)

    def debit(self, key: Any, limit: Limit, now: float, amount: float) -> None:
        """Spend ``amount`` tokens that were spent elsewhere (another node): the bucket may go
        into debt (the cluster spent more than this node knew), down to ten bursts, and then
        refuses until it has refilled past zero."""
        with self._lock:
            full_at = max(now, self._touch(key, now)) + amount / limit.rate
            self._buckets[key] = min(full_at, now + 11.0 * limit.burst / limit.rate)

    def peek(self, key: Any, limit: Limit, now: float) -> float:
        """Like ``take`` of one token but spending nothing (and creating no bucket)."""
        with self._lock:
            full_at = self._buckets.get(key)
            if full_at is None:
                return 0.0
            tokens = limit.burst - max(0.0, full_at - now) * limit.rate + EPSILON
            return 0.0 if tokens >= 1 else (1 - tokens) / limit.rate

    def _touch(self, key: Any, now: float) -> float:
        """The key's time, made most recently used; a new bucket (full) when it has none."""
        full_at = self._buckets.get(key)
        if full_at is None:
            while len(self._buckets) >= self._max:
                self._evict_one(now)
            self._buckets[key] = now
            return now
        self._buckets.move_to_end(key)
        return full_at

    def _evict_one(self, now: float) -> None:
        _, full_at = self._buckets.popitem(last=False)
        self.evicted += 1
        if full_at > now:
            self.evicted_unfull += 1


@dataclass(frozen=True)
class RateLimitPolicy:
    """What the limiter enforces; ``per_role`` overrides ``default`` for that role's actors."""

    default: Limit = field(default_factory=lambda: Limit(10_000.0, 20_000))
    per_role: Mapping[str, Limit] = field(default_factory=dict)
    per_ip: Limit = field(default_factory=lambda: Limit(10.0, 40))
    max_entries: int = 100_000
    trusted_proxies: tuple[IPNetwork, ...] = ()

    def for_role(self, role: str) -> Limit:
        return self.per_role.get(role, self.default)


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (or single addresses); ValueError naming the bad entry."""
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR: {entry!r:.60}") from None
    return tuple(out)



class RateLimiter:
    """The policy applied to requests: actor buckets, IP buckets, trusted-proxy resolution."""

    def __init__(self, policy: RateLimitPolicy | None = None) -> None:
        self.policy = policy or RateLimitPolicy()
        self.actors = TokenBuckets(self.policy.max_entries)
        self.ips = TokenBuckets(self.policy.max_entries)
        self.limited = {"actor": 0, "ip": 0}
        # actor -> [tokens spent since the last drain_used, role]; None: nothing shares our limits
        self._used: dict[str, list[Any]] | None = None
        self._used_lock = threading.Lock()

    def share(self) -> None:
        """Start counting per-actor spending for ``drain_used`` (auth/sharedlimit.py)."""
        self._used = {}

    def drain_used(self) -> dict[str, tuple[float, str]]:
        """What each actor spent here since the last call: actor -> (tokens, role)."""
        with self._used_lock:
            if self._used is None:
                return {}
            used, self._used = self._used, {}
        return {actor: (float(n), str(role)) for actor, (n, role) in used.items()}

    def debit_actor(self, actor: str, role: str, amount: float, now: float) -> None:
        """Charge an actor's bucket with what it spent on other nodes (``actor``: as
        ``drain_used`` names it; a plain subject from a node of an earlier version is that
        subject under ``role``)."""
        named_role, sep, subject = actor.partition(ROLE_SEPARATOR)
        if sep:
            role = named_role
        else:
            subject = actor
        self.actors.debit((subject, role), self.policy.for_role(role), now, amount)

    def client_ip(self, peer_ip: str, forwarded_for: list[str]) -> str:
        """The address to limit and audit: the peer, or what a trusted proxy says it relayed."""
        if not forwarded_for or not self.policy.trusted_proxies:  # the common case: no parsing
            return peer_ip[7:] if peer_ip.startswith("::ffff:") and "." in peer_ip else peer_ip
        peer = parse_address(peer_ip)
        if peer is None or not forwarded_for or not self._trusted(peer):
            return str(peer) if peer is not None else peer_ip
        hops = [h for value in forwarded_for for h in value.split(",")][-MAX_FORWARDED_HOPS:]
        client = peer
        for hop in reversed(hops):
            addr = parse_address(hop)
            if addr is None:
                break  # garbage from beyond the last trusted hop: stop believing the header
            client = addr
            if not self._trusted(addr):
                break
        return str(client)

    def is_proxy(self, peer_ip: str) -> bool:
        """Whether ``peer_ip`` is a trusted proxy (the server exempts it from its per-address
        connection caps: it speaks for many clients)."""
        addr = parse_address(peer_ip) if self.policy.trusted_proxies else None
        return addr is not None and self._trusted(addr)

    def _trusted(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(addr in net for net in self.policy.trusted_proxies)

    ip_key = staticmethod(client_key)  # an IPv4 address or an IPv6 /64 (domain/addresses.py)

    def take_ip(self, ip: str, now: float) -> None:
        """Spend one token of the IP's bucket (unauthenticated routes); 429 when empty."""
        wait = self.ips.take(self.ip_key(ip), self.policy.per_ip, now)
        if wait > 0:
            self._refuse("ip", wait)

    def ip_spent(self, ip: str, now: float) -> bool:
        """Whether the IP's bucket is empty now (spending nothing)."""
        return self.ips.peek(self.ip_key(ip), self.policy.per_ip, now) > 0

    def take_actor(self, subject: str, role: str, now: float) -> None:
        """Spend one token of the actor's bucket; 429 with the wait when empty."""
        wait = self.actors.take((subject, role), self.policy.for_role(role), now)
        if wait > 0:
            self._refuse("actor", wait)
        if self._used is not None:
            self._spent(subject, role, 1)

    def take_actor_upto(self, subject: str, role: str, count: int, now: float,
                        whole: bool = False) -> tuple[int, float]:
        """Spend up to ``count`` tokens of the actor's bucket at once (the items of a batch;
        ``whole``: all or none): how many it held, and the seconds until the next; each item
        left without one counts as a limited request."""
        granted, wait = self.actors.take_upto((subject, role), self.policy.for_role(role), now,
                                              count, whole)
        self.limited["actor"] += count - granted
        if self._used is not None and granted:
            self._spent(subject, role, granted)  # the other nodes are debited a batch's too
        return granted, wait

    def burst_of(self, role: str) -> float:
        """The most one actor of ``role`` can ever spend at once."""
        return self.policy.for_role(role).burst

    def _spent(self, subject: str, role: str, tokens: int) -> None:
        with self._used_lock:
            if self._used is None:
                return
            actor = f"{role}{ROLE_SEPARATOR}{subject}"
            entry = self._used.get(actor)
            if entry is None:
                self._used[actor] = [tokens, role]
            else:
                entry[0] += tokens

    def _refuse(self, scope: str, wait: float) -> None:
        self.limited[scope] += 1
        raise RateLimited(f"rate limit exceeded; retry in {math.ceil(wait)} s", retry_after=wait)

    def stats(self) -> dict[str, int]:
        return {"limited_actor": self.limited["actor"], "limited_ip": self.limited["ip"],
                "actor_buckets": len(self.actors), "ip_buckets": len(self.ips),
                "evicted": self.actors.evicted + self.ips.evicted,
                "evicted_unfull": self.actors.evicted_unfull + self.ips.evicted_unfull}


def policy_from_settings(settings: Any) -> RateLimitPolicy:
    """Build the policy from ``config.RateLimitSettings`` (0 in a per-role field: the default)."""
    default = Limit(settings.requests_per_second, settings.burst)
    per_role: dict[str, Limit] = {}
    for role in ("administrator", "operator", "auditor", "service"):
        rate = getattr(settings, f"{role}_requests_per_second", 0.0)
        burst = getattr(settings, f"{role}_burst", 0)
        if rate or burst:
            per_role[role] = Limit(rate or default.rate, burst or default.burst)
    return RateLimitPolicy(default=default, per_role=per_role,
                           per_ip=Limit(settings.ip_requests_per_second, settings.ip_burst),
                           max_entries=settings.max_tracked,
                           trusted_proxies=parse_networks(settings.trusted_proxies))
