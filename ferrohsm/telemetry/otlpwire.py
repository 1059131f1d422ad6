"""Span records straight to the bytes of an OTLP ``ExportTraceServiceRequest`` (protobuf).

Why not the SDK's encoder: it wants a ``ReadableSpan`` per record (about 2 µs) and then builds a
protobuf object per span, attribute and value in Python (about 13.6 µs a span here). Our records
are already plain tuples, and the message has a fixed, small shape, so writing its wire format
directly costs a few microseconds a span. That is most of the exporter child's CPU, which shares
the machine with the server.

The wire format is protobuf's (varints, length-delimited fields, little-endian fixed64/fixed32)
with the field numbers of opentelemetry-proto's ``trace/v1/trace.proto``,
``common/v1/common.proto`` and ``resource/v1/resource.proto``. tests/unit/test_otlpwire.py
decodes what this writes with opentelemetry-proto's classes and compares it with the SDK's own
encoding of the same spans, so a mistake here shows up as a difference there.

What the SDK's encoder does and this does too: the span flags say whether the parent is remote;
an UNSET status is written as an empty Status; a trace state is normalized by the caller (the
W3C header parsed and joined again); an attribute value it cannot encode (an int beyond int64,
an object, text that is not valid Unicode) is skipped, as the SDK skips it (and logs). A span
whose name is not valid Unicode is left out; the SDK would fail the whole batch.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .tracing import CHILD, OPTIONAL, leading, name_of, server_attributes

_DOUBLE = struct.Struct("<d").pack
_FIXED32 = struct.Struct("<I").pack
_SMALL = [bytes([n]) for n in range(128)]
_CACHE_LIMIT = 4096  # attribute encodings kept (most values repeat from request to request)
_UNCACHED = frozenset({"ferrohsm.request_id"})  # unique per request: encoded, never kept

# One byte per tag: (field number << 3) | wire type (0 varint, 1 fixed64, 2 length, 5 fixed32).
_SPAN_TRACE_ID, _SPAN_SPAN_ID, _SPAN_TRACE_STATE = b"\x0a\x10", b"\x12\x08", b"\x1a"
_SPAN_PARENT_ID, _SPAN_NAME, _SPAN_KIND = b"\x22\x08", b"\x2a", b"\x30"
_SPAN_ATTRIBUTE = b"\x4a"
_STATUS_UNSET, _STATUS_ERROR = b"\x7a\x00", b"\x7a\x02\x18\x02"  # Status{code: ERROR (2)}
_SPAN_FLAGS = b"\x85\x01"  # field 16, fixed32
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags
_LOCAL_FLAGS, _REMOTE_FLAGS = _FIXED32(_HAS_IS_REMOTE), _FIXED32(_HAS_IS_REMOTE | _IS_REMOTE)
INTERNAL, SERVER = 0, 1  # opentelemetry.trace.SpanKind's; the proto's kinds are the API's + 1
_KIND = {kind: _SPAN_KIND + bytes([kind + 1]) for kind in range(5)}  # INTERNAL ... CONSUMER
_TIMES = struct.Struct("<BQBQ").pack  # start (field 7) and end (field 8), fixed64 each
# Status, then flags: by (error, the parent is remote)
_TAIL = {(error, remote): (_STATUS_ERROR if error else _STATUS_UNSET) + _SPAN_FLAGS
         + (_REMOTE_FLAGS if remote else _LOCAL_FLAGS)
         for error in (False, True) for remote in (False, True)}


def varint(value: int) -> bytes:
    """An unsigned varint; negative int64 values as their 64-bit two's complement."""
    if 0 <= value < 128:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SIZES = [varint(n) for n in range(1 << 14)]  # every span's length prefix, nearly


def _size(value: int) -> bytes:
    """A length's varint (a table lookup for any length under 16 KiB)."""
    return _SIZES[value] if value < 16384 else varint(value)


def _length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def any_value(value: Any) -> bytes | None:
    """An AnyValue message's bytes, or None for a value it cannot hold. The cases, and their
    order, are the SDK encoder's: None is an empty AnyValue, any other sequence an array, a
    mapping a key-value list."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _utf8(b"\x0a", value)
    if isinstance(value, int):
        return b"\x18" + varint(value) if -(1 << 63) <= value < 1 << 63 else None
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _length_delimited(b"\x3a", value)
    return _composite(value)


def _composite(value: Any) -> bytes | None:
    """array_value (5: ArrayValue{values}) or kvlist_value (6: KeyValueList{values}); None
    when one of its items cannot be encoded (the SDK drops the whole attribute then too)."""
    if isinstance(value, Sequence):
        tag, items = b"\x2a", [any_value(item) for item in value]
    elif isinstance(value, Mapping):
        tag, items = b"\x32", [key_value(str(k), v) for k, v in value.items()]
    else:
        return None
    parts = []
    for item in items:
        if item is None:
            return None
        parts.append(_length_delimited(b"\x0a", item))
    return _length_delimited(tag, b"".join(parts))


def key_value(key: str, value: Any) -> bytes | None:
    """A KeyValue message's bytes (key 1, value 2), or None when the value is not encodable."""
    encoded = any_value(value)
    name = _utf8(b"\x0a", key)
    if encoded is None or name is None:
        return None
    return name + _length_delimited(b"\x12", encoded)


def _utf8(tag: bytes, text: str) -> bytes | None:
    """A string field, or None for text that is not valid Unicode (a lone surrogate, e.g. from
    an environment variable's undecodable bytes): protobuf strings must be UTF-8, and a
    collector refuses a whole request over one bad string."""
    try:
        return _length_delimited(tag, text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


class SpanWriter:
    """Encodes record batches for one resource and one instrumentation scope."""

    def __init__(self, resource: Mapping[str, Any], scope_name: str, scope_version: str, *,
                 resource_schema_url: str = "", trace_state: Callable[[str], str] = str) -> None:
        resource_bytes = b"".join(_length_delimited(b"\x0a", kv) for kv in (
            key_value(k, v) for k, v in resource.items()) if kv is not None)
        scope = _length_delimited(b"\x0a", scope_name.encode()) + \
            _length_delimited(b"\x12", scope_version.encode())
        self._resource = _length_delimited(b"\x0a", resource_bytes)  # ResourceSpans.resource
        self._resource_schema = (_length_delimited(b"\x1a", resource_schema_url.encode())
                                 if resource_schema_url else b"")
        self._scope = _length_delimited(b"\x0a", scope)  # ScopeSpans.scope
        self._trace_state = trace_state
        # (key, value, type) -> the attribute field's bytes: True == 1 == 1.0, types differ
        self._kv: dict[tuple[str, Any, type], bytes | None] = {}
        self._names: dict[tuple[str, int], bytes] = {}  # (name, kind) -> their fields' bytes
        self._server_names: dict[tuple[Any, str | None], bytes] = {}  # (method, route) -> those
        self._blocks: dict[tuple[Any, ...], bytes] = {}  # server attribute values -> bytes
        self.skipped = 0  # attribute values that could not be encoded

    def request(self, records: Iterable[tuple[Any, ...]]) -> tuple[bytes, int]:
        """(ExportTraceServiceRequest bytes, spans in it). A malformed record is left out."""
        spans = []
        span = self.span
        for record in records:
            try:
                spans.append(span(record))
            except (TypeError, ValueError, struct.error):  # a bug upstream: lose that record
                continue
        return self.wrap(spans), len(spans)

    def wrap(self, spans: list[bytes]) -> bytes:
        """Encoded spans (ScopeSpans.spans fields) as one ExportTraceServiceRequest, in one
        join (the lengths are known from the parts: nesting by concatenation copied a
        request's bytes four times)."""
        scope_spans = len(self._scope) + sum(map(len, spans))
        scope_size = varint(scope_spans)
        resource_spans = (len(self._resource) + 1 + len(scope_size) + scope_spans
                          + len(self._resource_schema))
        return b"".join((b"\x0a", varint(resource_spans), self._resource, b"\x12", scope_size,
                         self._scope, *spans, self._resource_schema))

    def request_spans(self, records: Iterable[tuple[Any, ...]],
                      new_ids: Callable[[int], bytes]) -> tuple[list[bytes], int]:
        """Request records (tracing.RequestRecord) straight to their encoded spans, the bytes
        ``span(r)`` makes of each of ``tracing.spans_of(record)``, the children's ids from
        ``new_ids(n)`` (n ids of 8 bytes, none all zeros); and how many records were
        malformed (each lost whole). Why not through spans_of: its tuples and dicts, and
        decoding the trace id again for every child, were a third of the exporter's CPU, and
        that CPU slows the server even on another core."""
        out: list[bytes] = []
        lost = 0
        # (name, error type, id of the attributes) -> a child's encoded parts, for this call
        # only: its records keep every attribute dict alive (so no id is reused meanwhile),
        # and a frame's children mostly share a few (marshal keeps one shared dict shared)
        parts: dict[tuple[Any, Any, int], tuple[bytes, bytes]] = {}
        for record in records:
            try:
                out += self._request(record, new_ids, parts)
            except (AttributeError, TypeError, ValueError, struct.error):  # a name not a str
                lost += 1
        return out, lost

    def _request(self, record: Any, new_ids: Callable[[int], bytes],
                 parts: dict[tuple[Any, Any, int], tuple[bytes, bytes]]) -> list[bytes]:
        """One record's spans, each written with one join: the length prefix is known from
        the parts' sizes, so no span body is copied twice."""
        (trace_hex, span_hex, parent_hex, state, start, end, request, route, user, status, error,
         extra, children) = record  # another shape: ValueError (the record is lost)
        if len(children) % CHILD:
            raise ValueError("a child of the wrong length")
        trace_id, span_id = bytes.fromhex(trace_hex), bytes.fromhex(span_hex)
        if len(trace_id) != 16 or len(span_id) != 8:
            raise ValueError("trace or span id of the wrong length")
        head = _SPAN_TRACE_ID + trace_id
        state_field = b""
        if state:
            normalized = self._trace_state(state)
            if normalized:
                state_field = _length_delimited(_SPAN_TRACE_STATE, normalized.encode())
        parent_field = b""
        if parent_hex is not None:
            parent_field = _SPAN_PARENT_ID + bytes.fromhex(parent_hex)
            if len(parent_field) != 10:
                raise ValueError("parent span id of the wrong length")
        attributes = (self._attributes(server_attributes(record).items()) if extra
                      else self._server_attributes(request, route, user, status, error))
        name_kind = self._server_name(request[0], route)
        tail = _TAIL[status is not None and status >= 500, bool(parent_field)]
        size = (46 + len(state_field) + len(parent_field) + len(name_kind) + len(attributes)
                + len(tail))  # 18 + 10 + 10 times: trace id, span id, start and end
        spans = [b"".join((b"\x12", _size(size), head, _SPAN_SPAN_ID, span_id, state_field,
                           parent_field, name_kind, _TIMES(0x39, start, 0x41, end), attributes,
                           tail))]
        if not children:
            return spans
        ids = new_ids(len(children) // CHILD)
        middle = state_field + _SPAN_PARENT_ID + span_id  # each child's, the same
        fixed = 46 + len(middle)  # trace id 18, span id 10, times 18, and the middle
        for at in range(0, len(children), CHILD):  # indexed: no tuple made a child
            key = (children[at], children[at + 3], id(children[at + 4]))
            part = parts.get(key)
            if part is None:
                part = parts[key] = self._child_part(children[at], children[at + 3],
                                                     children[at + 4])
            size = fixed + len(part[0]) + len(part[1])
            span_at = at // CHILD * 8
            spans.append(b"".join((
                b"\x12", _SIZES[size] if size < 16384 else varint(size), head, _SPAN_SPAN_ID,
                ids[span_at:span_at + 8], middle, part[0],
                _TIMES(0x39, children[at + 1], 0x41, children[at + 2]), part[1])))
        return spans

    def _child_part(self, name: str, error: str | None,
                    attributes: dict[str, Any] | None) -> tuple[bytes, bytes]:
        """A child span's name and kind fields, and its attribute and status fields."""
        if error is not None:
            attributes = {**(attributes or {}), "error.type": error}
        return (self._name_kind(name, INTERNAL),
                (self._attributes(attributes.items()) if attributes else b"")
                + _TAIL[error is not None, False])

    def _server_name(self, method: Any, route: str | None) -> bytes:
        """The server span's name and kind fields (tracing.name_of), made once each."""
        key = (method, route)
        encoded = self._server_names.get(key)
        if encoded is None:
            if len(self._server_names) >= _CACHE_LIMIT:
                self._server_names.clear()
            encoded = self._server_names[key] = self._name_kind(name_of(method, route), SERVER)
        return encoded

    def _server_attributes(self, request: tuple[Any, ...], route: str | None, user: str | None,
                           status: int | None, error: str | None) -> bytes:
        """The server span's attributes in tracing.server_attributes's order (no extra ones:
        those are rare, tracing.set_attribute, and go through one dict): the values before the
        request id, and those after it, are cached as two blocks (most repeat)."""
        method, path, client, request_id, agent, port = request
        blocks = self._blocks
        before_key = (method, path, client)
        after_key = (agent, port, route, user, status, error)
        before = blocks.get(before_key)
        if before is None:
            before = self._block(before_key, leading(method, path, client))
        after = blocks.get(after_key)
        if after is None:
            after = self._block(after_key, [(k, v) for k, v in zip(OPTIONAL, after_key)
                                            if v is not None])
        rid = (_text_attribute(_REQUEST_ID, request_id) if isinstance(request_id, str)
               else _attribute("ferrohsm.request_id", request_id))
        if rid is None:
            self.skipped += 1
            rid = b""
        return before + rid + after

    def _block(self, key: tuple[Any, ...], items: Iterable[tuple[str, Any]]) -> bytes:
        if len(self._blocks) >= _CACHE_LIMIT:
            self._blocks.clear()
        block = self._blocks[key] = self._attributes(items)
        return block

    def _name_kind(self, name: str, kind: int) -> bytes:
        """A span's name and kind fields (a name that is not valid Unicode: ValueError)."""
        key = (name, kind)
        encoded = self._names.get(key)
        if encoded is None:
            if len(self._names) >= _CACHE_LIMIT:
                self._names.clear()
            name_bytes = name.encode("utf-8")
            encoded = self._names[key] = (_SPAN_NAME + varint(len(name_bytes)) + name_bytes
                                          + _KIND[kind])
        return encoded

    def span(self, record: tuple[Any, ...]) -> bytes:
        """One tracing.Record as a ScopeSpans.spans field (tag, length, Span message)."""
        trace_hex, span_hex, parent_hex, name, kind, start, end, attributes, error, state = record
        trace_id, span_id = bytes.fromhex(trace_hex), bytes.fromhex(span_hex)
        if len(trace_id) != 16 or len(span_id) != 8:
            raise ValueError("trace or span id of the wrong length")
        parts = [_SPAN_TRACE_ID, trace_id, _SPAN_SPAN_ID, span_id]
        if state:
            normalized = self._trace_state(state)
            if normalized:
                parts.append(_length_delimited(_SPAN_TRACE_STATE, normalized.encode()))
        remote = False
        if parent_hex is not None:
            parent = bytes.fromhex(parent_hex)
            if len(parent) != 8:
                raise ValueError("parent span id of the wrong length")
            parts += (_SPAN_PARENT_ID, parent)
            remote = kind == SERVER  # a server span's parent is the caller's
        name_bytes = name.encode("utf-8")  # text that is not valid Unicode: ValueError
        parts += (_SPAN_NAME, varint(len(name_bytes)), name_bytes,
                  _KIND.get(kind) or _SPAN_KIND + varint(int(kind) + 1), _TIMES(0x39, start, 0x41, end))
        if attributes:
            parts.append(self._attributes(attributes.items()))
        parts.append(_TAIL[bool(error), remote])
        body = b"".join(parts)
        return b"\x12" + varint(len(body)) + body

    def _attributes(self, items: Iterable[tuple[str, Any]]) -> bytes:
        """Span.attributes fields, each cached by (key, value, type) when hashable."""
        cache = self._kv
        out = []
        for key, value in items:
            if key in _UNCACHED:  # a value of its own each time: caching it only churns
                encoded = _attribute(key, value)
            else:
                try:
                    encoded = cache[key, value, type(value)]
                except KeyError:
                    encoded = _cached(cache, key, value)
                except TypeError:  # an unhashable value (a list): encode it every time
                    encoded = _attribute(key, value)
            if encoded is None:
                self.skipped += 1
            else:
                out.append(encoded)
        return b"".join(out)


def _text_attribute(prefix: bytes, value: str) -> bytes | None:
    """A string attribute's field; ``prefix``: its KeyValue's key field and value tag."""
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if len(raw) < 16000:  # the lengths from the table (a request id: always)
        any_text = b"\x0a" + _SIZES[len(raw)] + raw
        pair = prefix + _SIZES[len(any_text)] + any_text
        return _SPAN_ATTRIBUTE + _SIZES[len(pair)] + pair
    any_text = b"\x0a" + varint(len(raw)) + raw
    pair = prefix + varint(len(any_text)) + any_text
    return _SPAN_ATTRIBUTE + varint(len(pair)) + pair


_REQUEST_ID = b"\x0a\x13ferrohsm.request_id\x12"


def _attribute(key: str, value: Any) -> bytes | None:
    kv = key_value(key, value)
    return None if kv is None else _length_delimited(_SPAN_ATTRIBUTE, kv)


def _cached(cache: dict[tuple[str, Any, type], bytes | None], key: str,
            value: Any) -> bytes | None:
    encoded = _attribute(key, value)
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key, value, type(value)] = encoded
    return encoded
