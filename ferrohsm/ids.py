"""Identifiers. Key ids are UUIDv7 (RFC 9562): time-ordered, so ascending id is creation order and
keyset pagination by id is both stable and chronological."""

from __future__ import annotations

import os
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
