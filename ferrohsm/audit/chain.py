"""The audit record format: canonical encoding, hash chain and HMAC. Pure: no I/O, no clock.

Theory of operation
-------------------
A *record* is an ``AuditEvent``'s fields plus ``v`` (schema), ``id`` (UUID), ``seq`` (1, 2, ...),
``ts`` (RFC 3339 UTC, microseconds, ``Z``), ``prev_hash``, ``hash`` and ``hmac``. Every field is
always present (``null`` when unset) so every record has the same shape.

* ``body`` = canonical JSON of the record *without* ``hash`` and ``hmac``: sorted keys, separators
  ``(",", ":")``, ``ensure_ascii=True``. Control characters, U+2028 and every non-ASCII character
  are escaped, so a record is always exactly one line whatever a caller put in ``message``.
* ``hash`` = hex SHA-256 of ``prev_hash`` (its 64 ASCII hex characters) followed by ``body``.
  ``prev_hash`` of the first record is ``GENESIS_HASH`` (64 zeros); the log is named instead by the
  ``log_id`` detail of the sink's own ``audit.genesis`` / ``audit.segment_start`` records.
* ``hmac`` = hex HMAC-SHA256(audit HMAC key, the 64 ASCII characters of ``hash``). Authenticating
  the hash rather than the body keeps the MAC input small; SHA-256's collision resistance makes it
  equivalent. Without the key nobody can produce a record that verifies.
* The stored *line* is ``body`` with ``,"hash":"…","hmac":"…"`` inserted before its closing brace.
  The line is therefore canonical JSON except that the two fixed-size fields come last, and a
  verifier can slice ``body`` back out of the stored bytes and hash it without re-serialising —
  the reason the offline verifier reaches hundreds of thousands of records per second.

``seq`` and ``prev_hash`` are the only top-level keys whose position matters to the verifier's
fast path: every key sorted after them holds a scalar, so ``rfind`` locates them unambiguously even
when ``details`` (sorted earlier) repeats their names.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import Any

from ..model import RequestContext

SCHEMA_VERSION = 1
GENESIS_HASH = "0" * 64
OUTCOMES = frozenset({"success", "denied", "error"})

MAX_MESSAGE = 1024
MAX_FIELD = 256
MAX_DETAILS = 32
MAX_DETAIL_STR = 256
TRUNCATION_MARK = "...[truncated]"

ACTION_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
DETAIL_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
RECORD_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

DetailValue = str | int | bool | None

# Top-level fields of a record, in canonical (sorted) order, hash and hmac excluded.
EVENT_FIELDS = ("action", "actor", "client_fingerprint", "correlation_id", "details", "key_id",
                "key_version", "message", "outcome", "request_id", "role", "session",
                "source_ip", "trace_id")
RECORD_FIELDS = tuple(sorted(EVENT_FIELDS + ("v", "id", "seq", "ts", "prev_hash")))

# Byte layout of the tail of a stored line: body[:-1] + HASH_TAG + hash + HMAC_TAG + hmac + END.
HASH_TAG = b',"hash":"'
HMAC_TAG = b'","hmac":"'
END_TAG = b'"}'
SUFFIX_LEN = len(HASH_TAG) + 64 + len(HMAC_TAG) + 64 + len(END_TAG)
BODY_END = b',"v":%d}' % SCHEMA_VERSION
PREV_TAG = b'"prev_hash":"'
SEQ_TAG = b'"seq":'


def _cap(text: str, limit: int) -> str:
    """Shorten over-long text visibly instead of refusing it: an audit record must still be made."""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK


def _opt_str(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"audit field {name} must be a string or None")
    return _cap(value, MAX_FIELD)


def _clean_details(details: object) -> dict[str, DetailValue]:
    """Small, flat and typed: details are for ids and counters, never payloads or secrets."""
    if not isinstance(details, dict):
        raise TypeError("audit details must be a dict")
    if len(details) > MAX_DETAILS:
        raise ValueError(f"audit details hold at most {MAX_DETAILS} entries")
    clean: dict[str, DetailValue] = {}
    for key, value in details.items():
        if not isinstance(key, str) or not DETAIL_KEY_RE.match(key):
            raise ValueError(f"bad audit detail name {key!r:.70}")
        if isinstance(value, str):
            value = _cap(value, MAX_DETAIL_STR)
        elif value is not None and not isinstance(value, int):  # bool is an int
            raise TypeError(f"audit detail {key} must be str, int, bool or None")
        clean[key] = value
    return clean


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What a caller wants recorded. The sink adds v, id, seq, ts and the chain fields.

    Validation happens here, at construction, so that sealing inside a sink's group commit can
    never fail for one bad event and take a whole group of other writers down with it.
    Over-long strings are shortened with a visible mark rather than refused.
    """

    actor: str
    role: str
    action: str
    outcome: str
    message: str
    key_id: str | None = None
    key_version: int | None = None
    request_id: str | None = None
    correlation_id: str | None = None
    trace_id: str | None = None
    session: str | None = None
    client_fingerprint: str | None = None
    source_ip: str | None = None
    details: dict[str, DetailValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.action, str) or not ACTION_RE.match(self.action):
            raise ValueError("audit action must look like 'key.create' (lowercase, <= 64 chars)")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"audit outcome must be one of {sorted(OUTCOMES)}")
        if not isinstance(self.message, str):
            raise TypeError("audit message must be a string")
        kv = self.key_version
        if kv is not None and (isinstance(kv, bool) or not isinstance(kv, int)):
            raise TypeError("audit key_version must be an int or None")
        setattr_ = object.__setattr__
        setattr_(self, "actor", _opt_str("actor", self.actor) or "")
        setattr_(self, "role", _opt_str("role", self.role) or "")
        setattr_(self, "message", _cap(self.message, MAX_MESSAGE))
        for name in ("key_id", "request_id", "correlation_id", "trace_id", "session",
                     "client_fingerprint", "source_ip"):
            setattr_(self, name, _opt_str(name, getattr(self, name)))
        setattr_(self, "details", _clean_details(self.details))

    @classmethod
    def from_context(cls, ctx: RequestContext, action: str, outcome: str, message: str,
                     **kw: Any) -> AuditEvent:
        """Fill who/where/which-request from the request context; ``kw`` adds or overrides."""
        principal = ctx.principal
        fields: dict[str, Any] = {
            "actor": ctx.actor,
            "role": principal.role.value if principal else "anonymous",
            "session": principal.session if principal else None,
            "request_id": ctx.request_id, "correlation_id": ctx.correlation_id,
            "trace_id": ctx.trace_id, "source_ip": ctx.source_ip,
            "client_fingerprint": ctx.client_fingerprint,
        }
        fields.update(kw)
        if ctx.approval_id is not None:
            details = dict(fields.get("details") or {})
            details.setdefault("approval_id", ctx.approval_id)
            fields["details"] = details
        return cls(action=action, outcome=outcome, message=message, **fields)


# Built once: json.dumps(**options) would build a new encoder on every call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                            allow_nan=False)


def canonical_json(obj: object) -> bytes:
    """The one JSON encoding every hash, MAC and signature in the audit subsystem is taken over."""
    return _ENCODER.encode(obj).encode("ascii")


def rfc3339(ts: datetime) -> str:
    """'2026-11-28T12:00:00.000000Z': UTC, always microseconds, so string order is time order."""
    if ts.tzinfo is None:
        raise ValueError("naive datetime: audit times must be aware UTC datetimes")
    if ts.utcoffset():
        ts = ts.astimezone(UTC)
    return ts.isoformat(timespec="microseconds")[:-6] + "Z"


def canonical(record: dict[str, Any]) -> bytes:
    """Canonical bytes of ``record`` without its ``hash`` and ``hmac``: what ``hash`` covers."""
    return canonical_json({k: v for k, v in record.items() if k not in ("hash", "hmac")})


def record_hash(prev_hash: str | bytes, body: bytes) -> str:
    prefix = prev_hash.encode("ascii") if isinstance(prev_hash, str) else prev_hash
    return hashlib.sha256(prefix + body).hexdigest()


def record_mac(hmac_key: bytes, hash_hex: str | bytes) -> str:
    data = hash_hex.encode("ascii") if isinstance(hash_hex, str) else hash_hex
    return _hmac.digest(hmac_key, data, "sha256").hex()


def _enc(value: object) -> str:
    """One JSON value exactly as ``canonical_json`` would write it inside a record."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return encode_basestring_ascii(value)  # what the C encoder uses under ensure_ascii
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    return _ENCODER.encode(value)


def _members(fields: dict[str, Any], names: tuple[str, ...]) -> str:
    return ",".join(f'"{name}":{_enc(fields[name])}' for name in names)


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """An event already encoded, so that a sink's group-commit leader only fills in the blanks.

    The canonical body of a record interleaves the event's fields with the four values only the
    leader knows (id, prev_hash, seq, ts) in sorted-key order, so the event's part is encoded in
    four pieces. Encoding costs most of the sealing time; doing it in each writer's own thread,
    before it queues, overlaps it with the leader's fsync instead of lengthening every group.
    ``tests/unit/test_audit_chain.py`` checks the pieces reassemble to ``canonical_json``.
    """

    fields: dict[str, Any]
    before_id: str       # {"action":…,"details":…,"id":"
    before_prev: str     # ","key_id":…,"outcome":…,"prev_hash":"
    before_seq: str      # ","request_id":…,"role":…,"seq":
    before_ts: str       # ,"session":…,"trace_id":…,"ts":"


def prepare(event: AuditEvent) -> PreparedEvent:
    fields: dict[str, Any] = {name: getattr(event, name) for name in EVENT_FIELDS}
    fields["details"] = dict(event.details)
    return PreparedEvent(
        fields=fields,
        before_id="{" + _members(fields, EVENT_FIELDS[:5]) + ',"id":"',
        before_prev='",' + _members(fields, EVENT_FIELDS[5:9]) + ',"prev_hash":"',
        before_seq='",' + _members(fields, EVENT_FIELDS[9:11]) + ',"seq":',
        before_ts="," + _members(fields, EVENT_FIELDS[11:]) + ',"ts":"')


def seal_prepared(prepared: PreparedEvent, *, seq: int, prev_hash: str, ts: datetime,
                  record_id: str, hmac_key: bytes) -> tuple[dict[str, Any], bytes]:
    """Seal as record ``seq`` after ``prev_hash``: the record and its stored line (no newline)."""
    if type(seq) is not int or seq < 1:
        raise ValueError("audit seq starts at 1")
    if not HEX64_RE.match(prev_hash):
        raise ValueError("prev_hash must be 64 lowercase hex characters")
    if not RECORD_ID_RE.match(record_id):
        raise ValueError("record id must be 1-64 characters of [A-Za-z0-9._:-]")
    stamp = rfc3339(ts)
    body = (f'{prepared.before_id}{record_id}{prepared.before_prev}{prev_hash}'
            f'{prepared.before_seq}{seq}{prepared.before_ts}{stamp}","v":{SCHEMA_VERSION}}}'
            ).encode("ascii")
    digest = record_hash(prev_hash, body)
    mac = record_mac(hmac_key, digest)
    record = dict(prepared.fields)
    record.update(v=SCHEMA_VERSION, id=record_id, seq=seq, ts=stamp, prev_hash=prev_hash,
                  hash=digest, hmac=mac)
    line = body[:-1] + HASH_TAG + digest.encode() + HMAC_TAG + mac.encode() + END_TAG
    return record, line


def seal_record_line(event: AuditEvent, *, seq: int, prev_hash: str, ts: datetime,
                     record_id: str, hmac_key: bytes) -> tuple[dict[str, Any], bytes]:
    """``seal_record`` plus the stored line (no trailing newline; sinks add one)."""
    return seal_prepared(prepare(event), seq=seq, prev_hash=prev_hash, ts=ts,
                         record_id=record_id, hmac_key=hmac_key)


def seal_record(event: AuditEvent, *, seq: int, prev_hash: str, ts: datetime, record_id: str,
                hmac_key: bytes) -> dict[str, Any]:
    """The sealed record (a dict with hash and hmac) for ``event``; see the module docstring."""
    return seal_record_line(event, seq=seq, prev_hash=prev_hash, ts=ts, record_id=record_id,
                            hmac_key=hmac_key)[0]


def record_line(record: dict[str, Any]) -> bytes:
    """The stored line of a sealed record (no newline): what exports should write, verbatim."""
    body = canonical(record)
    return (body[:-1] + HASH_TAG + str(record["hash"]).encode("ascii") + HMAC_TAG
            + str(record["hmac"]).encode("ascii") + END_TAG)


def split_line(line: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(body, hash, hmac) sliced out of a canonical stored line, or None if it is not one."""
    if (len(line) <= SUFFIX_LEN + len(BODY_END) or not line.endswith(END_TAG)
            or line[-SUFFIX_LEN:-SUFFIX_LEN + len(HASH_TAG)] != HASH_TAG
            or line[-len(END_TAG) - 64 - len(HMAC_TAG):-len(END_TAG) - 64] != HMAC_TAG):
        return None
    body = line[:-SUFFIX_LEN] + b"}"
    digest = line[-SUFFIX_LEN + len(HASH_TAG):-SUFFIX_LEN + len(HASH_TAG) + 64]
    mac = line[-len(END_TAG) - 64:-len(END_TAG)]
    return body, digest, mac


def line_fields(body: bytes) -> tuple[int, bytes] | None:
    """(seq, prev_hash) of a canonical body by position (see module docstring), or None."""
    i = body.rfind(PREV_TAG)
    j = body.rfind(SEQ_TAG)
    if i < 0 or j < 0 or not body.endswith(BODY_END):
        return None
    prev = body[i + len(PREV_TAG):i + len(PREV_TAG) + 64]
    end = body.find(b",", j)
    try:
        seq = int(body[j + len(SEQ_TAG):end])
    except ValueError:
        return None
    return seq, prev


def check_line(line: bytes, hmac_key: bytes) -> tuple[int, str] | str:
    """Integrity of one stored line alone: (seq, hash) if authentic, else the problem kind."""
    parts = split_line(line)
    fields = line_fields(parts[0]) if parts else None
    if parts is None or fields is None:
        return "malformed"
    body, digest, mac = parts
    if record_hash(fields[1], body).encode() != digest:
        return "modified"
    if not _hmac.compare_digest(record_mac(hmac_key, digest).encode(), mac):
        return "bad_hmac"
    return fields[0], digest.decode("ascii")


def check_record(record: dict[str, Any], prev_hash: str | None,
                 hmac_key: bytes) -> str | None:
    """The problem with one parsed record, or None. Kinds: malformed, modified, bad_hmac, and
    chain_break (authentic, but its prev_hash is not ``prev_hash``; pass None to skip that check).
    The offline verifier refines chain breaks into deleted / reordered / inserted using ``seq``.
    """
    if (not isinstance(record, dict) or set(record) != set(RECORD_FIELDS) | {"hash", "hmac"}
            or record.get("v") != SCHEMA_VERSION or not isinstance(record.get("seq"), int)
            or not all(isinstance(record.get(k), str) and HEX64_RE.match(record[k])
                       for k in ("prev_hash", "hash", "hmac"))):
        return "malformed"
    try:
        body = canonical(record)
    except (TypeError, ValueError):
        return "malformed"
    if not _hmac.compare_digest(record_hash(record["prev_hash"], body), record["hash"]):
        return "modified"
    if not _hmac.compare_digest(record_mac(hmac_key, record["hash"]), record["hmac"]):
        return "bad_hmac"
    if prev_hash is not None and record["prev_hash"] != prev_hash:
        return "chain_break"
    return None


def stored_seq(line: bytes) -> int | None:
    """seq of a stored line (trailing newline allowed) without parsing all of it, or None."""
    parts = split_line(line[:-1] if line.endswith(b"\n") else line)
    fields = line_fields(parts[0]) if parts else None
    return fields[0] if fields else None
