"""Identifiers. Key ids are UUIDv7 (RFC 9562): time-ordered, so ascending id is creation order and
keyset pagination by id is both stable and chronological."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid


def uuid7(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76                      # version 7
    value |= ((rand >> 62) & 0xFFF) << 64   # rand_a, 12 bits
    value |= 0b10 << 62                     # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)         # rand_b, 62 bits
    return str(uuid.UUID(int=value))


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
