"""A bounded, expiring cache of unsealed key handles, so hot keys are not unsealed on every call
(oldest-inserted entries are evicted first; hits take no lock).

Entries are keyed by (key id, version, sealed blob). Including the sealed bytes means the cache can
never hand out material for a blob that has since changed: a tampered or replaced blob is a miss,
gets unsealed, and fails its integrity check like any other. Eviction on destroy is explicit.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
CacheKey = tuple[str, int, bytes]


class MaterialCache(Generic[T]):
    def __init__(self, max_entries: int = 4096, ttl_seconds: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, T]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: CacheKey) -> T | None:
        """The cached value on a live hit (counted), else None and nothing counted: a caller
        then uses ``get_or_load``, which counts the miss. Lets a hit skip building ``load``."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock():
            self.hits += 1
            return entry[1]
        return None

    def get_or_load(self, key: CacheKey, load: Callable[[], T]) -> T:
        """The cached value, or ``load()``'s (which may raise; failures are never cached)."""
        entry = self._entries.get(key)
        now = self._clock()
        if entry is not None and entry[0] > now:
            self.hits += 1
            return entry[1]
        self.misses += 1
        value = load()
        if self._max > 0:
            with self._lock:
                self._entries[key] = (now + self._ttl, value)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
                    self.evictions += 1
        return value

    def evict_key(self, key_id: str) -> None:
        with self._lock:
            for cached in [k for k in self._entries if k[0] == key_id]:
                del self._entries[cached]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions, "max_entries": self._max}
