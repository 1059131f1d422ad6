"""What the KeyStore suite's fixtures hand out: the ``Backend`` type and a key factory.

Kept out of conftest.py so test_keystore.py can import these types under the one module name
``keystores`` (both tests/conformance and tests/integration have a conftest.py, so a bare
``conftest`` names two modules to mypy).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from backends import Backend as GenericBackend

from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.model import Key, KeyState
from ferrohsm.store.keystore import KeyStore

NOW = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)
RECORD_MAC = RecordMac.derive(bytes(range(32)))  # every backend's records are MACed under it


@dataclass(frozen=True)
class RawRecords:
    """Read and write a key's stored record bytes without going through the store."""

    read: Callable[[str], bytes]
    write: Callable[[str, bytes], None]


class Uuid7Source:
    """UUIDv7-style ids (48-bit ms timestamp, version 7, variant 10, random bits), strictly
    increasing even within one millisecond, so ascending id == creation order in the tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def __call__(self) -> str:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            counter = int.from_bytes(os.urandom(10), "big") >> 7  # 73 bits: room to count up
            value = (ms << 74) | counter
            self._last = value = max(value, self._last + 1)
        ms, counter = value >> 74, value & ((1 << 74) - 1)
        uuid = (ms << 80) | (0x7 << 76) | ((counter >> 62) << 64) | (0b10 << 62) \
            | (counter & ((1 << 62) - 1))
        text = f"{uuid:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass
class KeyFactory:
    """Builds keys for the tests; also the suite's clock (``now``, ``later``)."""

    new_id: Uuid7Source = field(default_factory=Uuid7Source)
    now: datetime = NOW
    later: datetime = NOW + timedelta(minutes=5)

    @staticmethod
    def sealed(label: str) -> bytes:
        """Opaque bytes standing in for sealed material: a label plus every byte value."""
        return label.encode() + b"|" + bytes(range(256))

    def key(self, *, name: str | None = None, algorithm: str = "aes-256-gcm",
            usage: str = "encrypt", tags: tuple[str, ...] = (), state: KeyState = KeyState.ACTIVE,
            key_id: str | None = None, description: str = "") -> Key:
        """A fresh key (revision 0), moved through the lifecycle into ``state``."""
        key = lc.new_key(key_id=key_id or self.new_id(), name=name, description=description,
                         algorithm=algorithm, usage=usage, tags=tags,
                         sealed=self.sealed("v1"), now=NOW, actor="alice")
        if state is KeyState.REVOKED:
            key = lc.revoke(key, NOW, "alice", "test")
        elif state is KeyState.DESTROY_SCHEDULED:
            key = lc.schedule_destroy(key, NOW, "alice", timedelta(hours=24))
        elif state is KeyState.DESTROYED:
            key = lc.complete_destroy(lc.schedule_destroy(key, NOW, "alice", timedelta(0)),
                                      NOW, "alice")
        return key


Backend = GenericBackend[KeyStore]
