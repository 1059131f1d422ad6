"""The unsealed-material cache: bounded, expiring, never caching a failure, keyed by the sealed
bytes so a changed blob is always unsealed (and integrity-checked) again."""

from __future__ import annotations

import pytest

from ferrohsm.domain.errors import IntegrityError
from ferrohsm.engine.keycache import MaterialCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hits_until_the_entry_expires() -> None:
    clock, loads = Clock(), []
    cache: MaterialCache[str] = MaterialCache(8, ttl_seconds=10, clock=clock)

    def load() -> str:
        loads.append(1)
        return "handle"
    assert cache.get_or_load(("k", 1, b"s"), load) == "handle"
    assert cache.get_or_load(("k", 1, b"s"), load) == "handle"
    assert len(loads) == 1 and cache.stats()["hits"] == 1
    clock.now = 11
    cache.get_or_load(("k", 1, b"s"), load)
    assert len(loads) == 2


def test_bounded() -> None:
    cache: MaterialCache[int] = MaterialCache(3, ttl_seconds=60)
    for n in range(10):
        cache.get_or_load(("k", n, b"s"), lambda n=n: n)  # type: ignore[misc]  # mypy cannot infer a lambda with a default
    stats = cache.stats()
    assert stats["entries"] == 3 and stats["evictions"] == 7


def test_a_changed_sealed_blob_is_a_miss_and_failures_are_not_cached() -> None:
    cache: MaterialCache[str] = MaterialCache(8, ttl_seconds=60)
    cache.get_or_load(("k", 1, b"good"), lambda: "handle")

    def tampered() -> str:
        raise IntegrityError("sealed material of key k version 1 failed its integrity check")
    for _ in range(2):  # the failure is raised every time, never remembered as a value
        with pytest.raises(IntegrityError):
            cache.get_or_load(("k", 1, b"flipped"), tampered)
    assert cache.stats()["entries"] == 1


def test_evict_key_forgets_every_version() -> None:
    cache: MaterialCache[str] = MaterialCache(8, ttl_seconds=60)
    for v in (1, 2):
        cache.get_or_load(("k", v, b"s"), lambda: "h")
    cache.get_or_load(("other", 1, b"s"), lambda: "h")
    cache.evict_key("k")
    assert cache.stats()["entries"] == 1


def test_zero_size_disables_caching() -> None:
    cache: MaterialCache[str] = MaterialCache(0, ttl_seconds=60)
    cache.get_or_load(("k", 1, b"s"), lambda: "h")
    assert cache.stats()["entries"] == 0
