"""The pure parts of batches: how item positions are written into records, and how a batch
takes its rate-limit tokens."""

from __future__ import annotations

from ferrohsm.auth.ratelimit import Limit, RateLimiter, RateLimitPolicy, TokenBuckets
from ferrohsm.service.batch import MAX_RANGES, _ranges


def expand(text: str) -> list[int]:
    out: list[int] = []
    for span in text.split(","):
        low, _, high = span.partition("-")
        out += range(int(low), int(high or low) + 1)
    return out


def test_positions_are_compact_ranges() -> None:
    assert _ranges([0]) == [("0", 1)]
    assert _ranges([0, 1, 2, 5, 7, 8]) == [("0-2,5,7-8", 6)]
    assert _ranges(list(range(1000))) == [("0-999", 1000)]


def test_a_long_list_is_split_and_loses_no_position() -> None:
    items = list(range(0, 2000, 2))
    pieces = _ranges(items)
    assert len(pieces) > 1 and all(len(text) <= MAX_RANGES for text, _ in pieces)
    assert [i for text, _ in pieces for i in expand(text)] == items
    assert sum(count for _, count in pieces) == len(items)


def test_take_upto_grants_what_the_bucket_holds() -> None:
    buckets = TokenBuckets()
    limit = Limit(1.0, 10)
    assert buckets.take_upto("a", limit, 0.0, 4) == (4, 0.0)
    granted, wait = buckets.take_upto("a", limit, 0.0, 10)
    assert granted == 6 and 0 < wait <= 1.0
    assert buckets.take_upto("a", limit, 0.0, 1)[0] == 0
    assert buckets.take_upto("a", limit, 2.0, 5)[0] == 2  # refilled 2 tokens in 2 s
    assert buckets.take_upto("a", limit, 2.0, 0) == (0, 0.0)


def test_take_actor_upto_counts_the_items_refused() -> None:
    limiter = RateLimiter(RateLimitPolicy(default=Limit(1.0, 5)))
    assert limiter.take_actor_upto("svc", "service", 8, 0.0)[0] == 5
    assert limiter.stats()["limited_actor"] == 3
