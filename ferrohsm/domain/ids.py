"""Identifiers. Key ids are UUIDv7 (RFC 9562): time-ordered, so ascending id is creation order and
keyset pagination by id is both stable and chronological."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta


def uuid7(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    return _uuid7_from(ms, (rand >> 62) & 0xFFF, rand & ((1 << 62) - 1))


def _uuid7_from(ms: int, rand_a: int, rand_b: int) -> str:
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76                      # version 7
    value |= rand_a << 64                   # rand_a, 12 bits
    value |= 0b10 << 62                     # RFC 4122 variant
    value |= rand_b                         # rand_b, 62 bits
    return str(uuid.UUID(int=value))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ordered_lock = threading.Lock()
_last_ordered = (0, 0)  # (ms, rand_a) of the last uuid7_at in this process


def uuid7_at(when: datetime) -> str:
    """The id of a record created at ``when`` (its ``created_at``): ids sort as their
    timestamps do, to the microsecond, across processes (rand_a holds the sub-millisecond
    fraction: RFC 9562 section 6.2, method 3), so a listing in id order is in creation order.
    Within a process they also increase strictly (a counter in rand_a past the last id), for
    records made in the same microsecond or under a clock that stands still."""
    global _last_ordered
    micros = (when - _EPOCH) // timedelta(microseconds=1)
    ms, sub = divmod(micros, 1000)
    stamp = (ms, sub * 4096 // 1000)
    with _ordered_lock:
        if stamp <= _last_ordered:
            ms, rand_a = _last_ordered
            stamp = (ms + 1, 0) if rand_a == 0xFFF else (ms, rand_a + 1)
        _last_ordered = stamp
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    return _uuid7_from(stamp[0], stamp[1], rand_b)


def uuid4() -> str:
    return str(uuid.uuid4())


class _IdBytes:
    """os.urandom bytes for identifiers, fetched 4 KiB at a time: one system call per 256 ids
    instead of one per id (a request makes two: its request id and its audit record's). Never
    used for keys or nonces. A forked child starts with an empty buffer, so two processes
    never hand out the same bytes."""

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        self._lock = threading.Lock()

    def take16(self) -> bytes:
        with self._lock:
            pos = self._pos
            if pos + 16 > len(self._buf):
                self._buf, pos = os.urandom(4096), 0
            self._pos = pos + 16
            return self._buf[pos:pos + 16]

    def forget(self) -> None:
        self._lock = threading.Lock()  # a lock held at fork time stays held in the child
        self._buf, self._pos = b"", 0


_ID_BYTES = _IdBytes()
os.register_at_fork(after_in_child=_ID_BYTES.forget)


def _forget_ordered_lock() -> None:
    global _ordered_lock
    _ordered_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_ordered_lock)


def uuid4_str() -> str:
    """A random RFC 4122 version-4 UUID in canonical lowercase form, like ``str(uuid.uuid4())``
    (the same 122 random bits from os.urandom, the same version and variant bits) in a fraction
    of the time: no ``uuid.UUID`` built just to format it, no system call per id (request and
    audit record ids)."""
    raw = bytearray(_ID_BYTES.take16())
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_approval_id(value: str) -> bool:
    """Whether ``value`` has the form of an approval id: a UUID in canonical lowercase form (ids
    are made by ``uuid7``), nothing else (no path, no upper case, no padding)."""
    return _UUID_RE.fullmatch(value) is not None
