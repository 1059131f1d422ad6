"""W3C Trace Context (traceparent, tracestate) parsing and fresh ids, without any library.

Every request gets a server span id of its own; its trace id and flags come from a valid
``traceparent`` (the sender's span becomes the parent), else a new trace id with flags 00. The
log line carries the three, whether or not spans are exported (telemetry/tracing.py).
An invalid header is ignored as the specification says: a new trace starts.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_ZERO_BYTES = bytes(8)
MAX_TRACESTATE = 512  # the specification's limit a vendor must propagate at least
MAX_MEMBER = 128  # a member longer than this goes first when the list is over MAX_TRACESTATE
# Ids need not be secret (W3C: random, unique), so a PRNG seeded from os.urandom per process
# serves them without a system call per id (SystemRandom costs one each).
_ids = random.Random(os.urandom(32))  # noqa: S311  identifiers, not secrets
_roots: list[str] = []  # new_root_ids: drawn ROOT_DRAW at a time, handed out one a pop
ROOT_DRAW = 256


def _after_fork() -> None:
    """A forked child (processes = N) would otherwise repeat its siblings' ids: it seeds the
    generator afresh and forgets the ids drawn before the fork."""
    _ids.seed(os.urandom(32))
    _roots.clear()


os.register_at_fork(after_in_child=_after_fork)


@dataclass(frozen=True, slots=True)
class Parent:
    """The remote parent a valid ``traceparent`` names."""

    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits
    flags: int
    tracestate: str | None = None


def parse_traceparent(values: Sequence[str] | None,
                      tracestate: Sequence[str] | None = None) -> Parent | None:
    """The parent of a valid single ``traceparent`` field (version 00, or a later version read
    as 00 allows), else None. ``tracestate`` is kept as received (joined with ","), cut by
    whole members to MAX_TRACESTATE characters (``_within_limit``)."""
    if not values or len(values) != 1:
        return None
    match = _TRACEPARENT.fullmatch(values[0].strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or (rest and not rest.startswith("-")):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    state = ",".join(v.strip() for v in tracestate) if tracestate else None
    if state is not None and (not state.isprintable() or not state.isascii()):
        state = None
    return Parent(trace_id, span_id, int(flags, 16), _within_limit(state) if state else None)


def _within_limit(state: str) -> str | None:
    """``state`` cut to MAX_TRACESTATE characters as the specification says a vendor may cut
    it: whole members only, first those over MAX_MEMBER characters, then from the end (the
    members a caller put first are the most recent)."""
    if len(state) <= MAX_TRACESTATE:
        return state
    members = [m.strip() for m in state.split(",") if m.strip()]
    kept = [m for m in members if len(m) <= MAX_MEMBER]
    while kept and len(",".join(kept)) > MAX_TRACESTATE:
        kept.pop()
    return ",".join(kept) or None


def new_trace_id() -> str:
    while True:
        value = _ids.getrandbits(128)
        if value:
            return f"{value:032x}"


def new_trace_and_span_ids() -> tuple[str, str]:
    """A new trace id and span id (the access line of an untraced request)."""
    text = new_root_ids()
    return text[:32], text[32:]


def new_root_ids() -> str:
    """A new trace id and then a new span id, 48 hex digits (a root request's ids). Drawn
    ROOT_DRAW at a time and handed out one list pop each: one draw a request cost about 7,400
    instructions (the format spec built each time, a 192-bit number formatted), against
    about a tenth of that here. Thread-safe: a pop is atomic, and two threads that find the
    list empty both refill it."""
    while True:
        try:
            return _roots.pop()
        except IndexError:
            _refill()


def _refill() -> None:
    text = _ids.randbytes(24 * ROOT_DRAW).hex()
    ids = [text[at:at + 48] for at in range(0, len(text), 48)]
    if _ZERO_SPAN in text:  # all but never: leave out any block with an all-zero id
        ids = [i for i in ids if i[:32] != _ZERO_TRACE and i[32:] != _ZERO_SPAN]
    _roots.extend(ids)


def new_id_block(spans: int, *, trace: bool = True) -> str:
    """A trace id (with ``trace``) and then ``spans`` span ids, in hex, from one draw: a
    request's ids without a system call. No id in it is all zeros (W3C: invalid)."""
    at = 32 if trace else 0
    width = at + 16 * spans
    while True:
        text = f"{_ids.getrandbits(4 * width):0{width}x}"
        if _ZERO_SPAN not in text:  # nearly always: then no id in it can be all zeros
            return text
        if (not trace or text[:32] != _ZERO_TRACE) and all(
                text[i:i + 16] != _ZERO_SPAN for i in range(at, width, 16)):
            return text


def new_span_id() -> str:
    while True:
        value = _ids.getrandbits(64)
        if value:
            return f"{value:016x}"


def new_span_bytes(count: int) -> bytes:
    """``count`` span ids as 8 bytes each, from one draw (the exporter child's ids for a
    request's children). None is all zeros (W3C: invalid)."""
    while True:
        block = _ids.randbytes(8 * count)
        if _ZERO_BYTES not in block:  # nearly always; else look at each id
            return block
        if all(block[at:at + 8] != _ZERO_BYTES for at in range(0, len(block), 8)):
            return block


def traceparent(trace_id: str, span_id: str, flags: int) -> str:
    return f"00-{trace_id}-{span_id}-{flags:02x}"
