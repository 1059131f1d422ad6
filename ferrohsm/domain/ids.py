"""Identifiers. Key ids are UUIDv7 (RFC 9562): time-ordered, so ascending id is creation order and
keyset pagination by id is both stable and chronological."""

from __future__ import annotations

import os
import re
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


def uuid4_str() -> str:
    """A random RFC 4122 version-4 UUID in canonical lowercase form, like ``str(uuid.uuid4())``
    (the same 122 random bits from os.urandom, the same version and variant bits) in less than
    half the time: it skips building a ``uuid.UUID`` just to format it (audit record ids)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_approval_id(value: str) -> bool:
    """Whether ``value`` has the form of an approval id: a UUID in canonical lowercase form (ids
    are made by ``uuid7``), nothing else (no path, no upper case, no padding)."""
    return _UUID_RE.fullmatch(value) is not None
