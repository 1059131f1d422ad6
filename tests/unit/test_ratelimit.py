"""Token buckets with an injected clock: burst, refill, Retry-After, bounded memory, proxies."""

from __future__ import annotations

from typing import Any

import pytest

from ferrohsm.auth.ratelimit import (
    Limit,
    RateLimiter,
    RateLimitPolicy,
    TokenBuckets,
    parse_networks,
    policy_from_settings,
)
from ferrohsm.config import load_config
from ferrohsm.domain.errors import RateLimited


def test_burst_then_refusal_with_the_wait() -> None:
    buckets, limit = TokenBuckets(), Limit(rate=2.0, burst=3)
    assert [buckets.take("a", limit, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", limit, 0.0) == pytest.approx(0.5)  # one token every 0.5 s


def test_recovery_after_the_wait() -> None:
    buckets, limit = TokenBuckets(), Limit(rate=2.0, burst=3)
    for _ in range(3):
        buckets.take("a", limit, 0.0)
    assert buckets.take("a", limit, 0.25) > 0
    assert buckets.take("a", limit, 0.5) == 0.0
    assert buckets.take("a", limit, 100.0) == 0.0  # refills to the burst, never beyond it
    assert sum(buckets.take("a", limit, 100.0) == 0.0 for _ in range(10)) == 2


def test_clock_going_backwards_gives_no_tokens() -> None:
    buckets, limit = TokenBuckets(), Limit(rate=1.0, burst=1)
    buckets.take("a", limit, 10.0)
    assert buckets.take("a", limit, 5.0) > 0


def test_peek_spends_nothing_and_creates_nothing() -> None:
    buckets, limit = TokenBuckets(), Limit(rate=1.0, burst=1)
    assert buckets.peek("a", limit, 0.0) == 0.0 and len(buckets) == 0
    buckets.take("a", limit, 0.0)
    assert buckets.peek("a", limit, 0.0) == pytest.approx(1.0)
    assert buckets.peek("a", limit, 1.0) == 0.0


def test_memory_is_bounded_under_a_flood_of_distinct_keys() -> None:
    buckets, limit = TokenBuckets(max_entries=1000), Limit(rate=1.0, burst=5)
    for i in range(50_000):
        buckets.take(f"bogus-{i}", limit, i * 0.001)
    assert len(buckets) == 1000 and buckets.evicted == 49_000


def test_lru_keeps_the_active_keys() -> None:
    """A drained bucket that keeps being used is never evicted, so it never gets a new burst."""
    buckets, limit = TokenBuckets(max_entries=3), Limit(rate=0.001, burst=1)
    buckets.take("busy", limit, 0.0)
    for i in range(10):
        buckets.take(f"x{i}", limit, 0.0)
        assert buckets.take("busy", limit, 0.0) > 0
    assert len(buckets) == 3


def test_evicting_a_refilled_bucket_is_not_counted_as_a_loss() -> None:
    buckets, limit = TokenBuckets(max_entries=1), Limit(rate=10.0, burst=1)
    buckets.take("a", limit, 0.0)
    buckets.take("b", limit, 10.0)  # a is full again by then
    buckets.take("c", limit, 10.0)  # b is not
    assert buckets.evicted == 2 and buckets.evicted_unfull == 1


def limiter(**kw: Any) -> RateLimiter:
    return RateLimiter(RateLimitPolicy(**kw))


def test_a_new_token_for_the_same_subject_shares_the_bucket() -> None:
    rl = limiter(default=Limit(1.0, 2))
    rl.take_actor("alice", "operator", 0.0)
    rl.take_actor("alice", "operator", 0.0)  # e.g. a second token with another jti
    with pytest.raises(RateLimited) as info:
        rl.take_actor("alice", "operator", 0.0)
    assert info.value.retry_after == pytest.approx(1.0) and info.value.status == 429
    rl.take_actor("bob", "operator", 0.0)  # others are unaffected
    assert rl.stats()["limited_actor"] == 1


def test_per_role_limits() -> None:
    rl = limiter(default=Limit(1.0, 1), per_role={"service": Limit(100.0, 50)})
    for _ in range(50):
        rl.take_actor("svc", "service", 0.0)
    rl.take_actor("admin", "administrator", 0.0)
    with pytest.raises(RateLimited):
        rl.take_actor("admin", "administrator", 0.0)


def test_ip_buckets_group_ipv6_by_64() -> None:
    rl = limiter(per_ip=Limit(1.0, 1))
    rl.take_ip("2001:db8::1", 0.0)
    with pytest.raises(RateLimited):
        rl.take_ip("2001:db8::ffff:2", 0.0)  # same /64: same host
    rl.take_ip("2001:db8:0:1::1", 0.0)


def test_ipv4_mapped_addresses_are_ipv4() -> None:
    rl = limiter(per_ip=Limit(1.0, 1))
    rl.take_ip("::ffff:192.0.2.7", 0.0)
    with pytest.raises(RateLimited):
        rl.take_ip("192.0.2.7", 0.0)


@pytest.mark.parametrize("peer,xff,expected", [
    ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),           # untrusted peer: header ignored
    ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),             # trusted proxy relays the client
    ("10.0.0.2", ["6.6.6.6, 198.51.100.1, 10.0.0.3"], "198.51.100.1"),  # spoofed left entry
    ("10.0.0.2", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),  # repeated header fields
    ("10.0.0.2", ["garbage, 10.0.0.3"], "10.0.0.3"),            # stop at garbage
    ("10.0.0.2", [], "10.0.0.2"),
    ("::ffff:10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
])
def test_forwarded_for_only_from_trusted_proxies(peer: str, xff: list[str], expected: str) -> None:
    rl = limiter(trusted_proxies=parse_networks(["10.0.0.0/8"]))
    assert rl.client_ip(peer, xff) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert limiter().client_ip("10.0.0.2", ["1.2.3.4"]) == "10.0.0.2"


def test_parse_networks_names_the_bad_entry() -> None:
    with pytest.raises(ValueError, match="nope"):
        parse_networks(["10.0.0.0/8", "nope"])


def test_policy_from_settings() -> None:
    config = load_config(env={"FERROHSM_RATE_LIMIT_SERVICE_REQUESTS_PER_SECOND": "500",
                              "FERROHSM_RATE_LIMIT_AUDITOR_BURST": "7",
                              "FERROHSM_RATE_LIMIT_TRUSTED_PROXIES": "10.0.0.0/8,::1"})
    policy = policy_from_settings(config.rate_limit)
    assert policy.for_role("service") == Limit(500.0, 20000)
    assert policy.for_role("auditor") == Limit(10000.0, 7)
    assert policy.for_role("operator") == policy.default == Limit(10000.0, 20000)
    assert policy.per_ip == Limit(10.0, 40) and len(policy.trusted_proxies) == 2


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Limit(0.0, 1)
    with pytest.raises(ValueError):
        Limit(1.0, 0)


def test_is_proxy_names_only_trusted_proxies() -> None:
    limiter = RateLimiter(RateLimitPolicy(trusted_proxies=parse_networks(["10.0.0.0/8"])))
    assert limiter.is_proxy("10.1.2.3") and not limiter.is_proxy("192.0.2.1")
    assert not limiter.is_proxy("garbage") and not RateLimiter().is_proxy("10.1.2.3")


def test_each_role_of_a_subject_gets_its_own_limit_and_no_more() -> None:
    """One subject, two roles: a bucket for each. The administrator token neither refills the
    service token's bucket (it used to, by refilling one shared bucket at its own rate and
    burst) nor is locked out by the service token's spending (a shared timeline did that)."""
    rl = limiter(default=Limit(10_000.0, 20_000), per_role={"service": Limit(0.1, 5)})
    for _ in range(5):
        rl.take_actor("mixed", "service", 100.0)
    with pytest.raises(RateLimited):
        rl.take_actor("mixed", "service", 100.0)
    for _ in range(100):
        rl.take_actor("mixed", "administrator", 100.01)
    with pytest.raises(RateLimited):
        rl.take_actor("mixed", "service", 100.02)
    rl.take_actor("mixed", "service", 110.0)  # 10 s later: one service token again
    with pytest.raises(RateLimited):
        rl.take_actor("mixed", "service", 110.0)


def test_a_batch_spends_whole_or_nothing_when_asked() -> None:
    rl = limiter(default=Limit(1.0, 5))
    assert rl.take_actor_upto("a", "service", 7, 0.0, whole=True)[0] == 0
    assert rl.take_actor_upto("a", "service", 7, 0.0) == (5, 1.0)  # nothing was spent above
    with pytest.raises(RateLimited):
        rl.take_actor("a", "service", 0.0)


def test_a_batchs_items_are_counted_for_the_other_nodes() -> None:
    """Items a batch took are reported by drain_used like single requests, so the other
    processes and nodes are debited them (they were not: each node gave its own burst); each
    role of a subject is reported, and debited, on its own."""
    rl = limiter(default=Limit(1.0, 10), per_role={"service": Limit(1.0, 10),
                                                   "auditor": Limit(2.0, 20)})
    rl.share()
    rl.take_actor("a", "service", 0.0)
    assert rl.take_actor_upto("a", "service", 6, 0.0) == (6, 0.0)
    rl.take_actor("a", "auditor", 0.0)
    used = rl.drain_used()
    assert used == {"service\x1fa": (7.0, "service"), "auditor\x1fa": (1.0, "auditor")}
    assert rl.drain_used() == {}
    other = limiter(default=Limit(1.0, 10), per_role={"service": Limit(1.0, 10),
                                                      "auditor": Limit(2.0, 20)})
    for actor, (n, role) in used.items():
        other.debit_actor(actor, role, n, 0.0)
    assert other.take_actor_upto("a", "service", 10, 0.0)[0] == 3
    assert other.take_actor_upto("a", "auditor", 30, 0.0)[0] == 19
    other.debit_actor("b", "service", 10, 0.0)  # a plain subject, from an earlier version
    with pytest.raises(RateLimited):
        other.take_actor("b", "service", 0.0)
