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

import dataclasses
import functools
import hashlib
import hmac as _hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import Any

from ..domain.model import Principal, RequestContext

SCHEMA_VERSION = 1
GENESIS_HASH = "0" * 64
# "intent" and "rolled_back" belong to a state change: its intent is recorded before the change is
# applied, then "success" (applied) or "rolled_back" (not applied) names the intent's seq.
OUTCOMES = frozenset({"success", "denied", "error", "intent", "rolled_back"})

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
RECORD_FIELDS = tuple(sorted((*EVENT_FIELDS, "v", "id", "seq", "ts", "prev_hash")))

# Byte layout of the tail of a stored line: body[:-1] + HASH_TAG + hash + HMAC_TAG + hmac + END.
HASH_TAG = b',"hash":"'
HMAC_TAG = b'","hmac":"'
END_TAG = b'"}'
SUFFIX_LEN = len(HASH_TAG) + 64 + len(HMAC_TAG) + 64 + len(END_TAG)
BODY_END = b',"v":%d}' % SCHEMA_VERSION
PREV_TAG = b'"prev_hash":"'
_V_HASH_TAG = BODY_END[:-1] + HASH_TAG  # a stored line is body[:-1] + HASH_TAG + ...
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


def _all_plain(actor: object, role: object, *optional: object) -> bool:
    """True when nothing needs normalising: actor and role are short str, the rest short str
    or None. Anything else (None actor, long text, a wrong type) takes the general path."""
    if type(actor) is not str or type(role) is not str or len(actor) > MAX_FIELD \
            or len(role) > MAX_FIELD:
        return False
    for value in optional:
        if value is not None and (type(value) is not str or len(value) > MAX_FIELD):
            return False
    return True


# Action names already seen to match ACTION_RE: they are code constants, so a set lookup replaces
# the regex on every later record. Bounded, so no caller can grow it without limit.
_KNOWN_ACTIONS: set[str] = set()
_MAX_KNOWN_ACTIONS = 512


def _check_action(action: object) -> None:
    if not isinstance(action, str) or not ACTION_RE.match(action):
        raise ValueError("audit action must look like 'key.create' (lowercase, <= 64 chars)")
    if type(action) is str and len(_KNOWN_ACTIONS) < _MAX_KNOWN_ACTIONS:
        _KNOWN_ACTIONS.add(action)


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
        action = self.action
        if not (type(action) is str and action in _KNOWN_ACTIONS):
            _check_action(action)
        if self.outcome not in OUTCOMES:
            raise ValueError(f"audit outcome must be one of {sorted(OUTCOMES)}")
        if not isinstance(self.message, str):
            raise TypeError("audit message must be a string")
        kv = self.key_version
        if kv is not None and (isinstance(kv, bool) or not isinstance(kv, int)):
            raise TypeError("audit key_version must be an int or None")
        setattr_ = object.__setattr__
        if len(self.message) > MAX_MESSAGE:
            setattr_(self, "message", _cap(self.message, MAX_MESSAGE))
        # The common case (every text field a short str or None) needs no rewriting: checking is
        # enough, and skipping nine setattr calls is most of what validation used to cost.
        if not _all_plain(self.actor, self.role, self.key_id, self.request_id,
                          self.correlation_id, self.trace_id, self.session,
                          self.client_fingerprint, self.source_ip):
            self._normalise_text()
        details = self.details
        setattr_(self, "details", {} if type(details) is dict and not details
                 else _clean_details(details))

    def _normalise_text(self) -> None:
        """The general path: type-check every text field, cap the long ones, actor/role ""."""
        setattr_ = object.__setattr__
        setattr_(self, "actor", _opt_str("actor", self.actor) or "")
        setattr_(self, "role", _opt_str("role", self.role) or "")
        for name in ("key_id", "request_id", "correlation_id", "trace_id", "session",
                     "client_fingerprint", "source_ip"):
            setattr_(self, name, _opt_str(name, getattr(self, name)))

    @classmethod
    def from_context(cls, ctx: RequestContext, action: str, outcome: str, message: str,
                     **kw: Any) -> AuditEvent:
        """Fill who/where/which-request from the request context; ``kw`` adds or overrides."""
        principal = ctx.principal
        if cls is AuditEvent and kw.keys() <= _RECORD_KW:  # what KeyService.record passes
            details = kw["details"] if "details" in kw else {}
            if ctx.approval_id is not None:
                details = dict(details or {})
                details.setdefault("approval_id", ctx.approval_id)
            return _event(ctx.actor, _role_of(principal),
                          action, outcome, message, kw.get("key_id"), kw.get("key_version"),
                          ctx.request_id, ctx.correlation_id, ctx.trace_id,
                          principal.session if principal else None, ctx.client_fingerprint,
                          ctx.source_ip, details)
        fields: dict[str, Any] = {
            "actor": ctx.actor,
            "role": _role_of(principal),
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


# A frozen slotted dataclass's generated __init__ stores each field through object.__setattr__;
# calling the slot's own descriptor stores the same value in about half the time. The two classes
# made once per record (AuditEvent, PreparedEvent) are built that way on the hot path, every field
# named (a renamed field is a KeyError at the first call, never a silently unset slot).
Setter = Callable[[Any, Any], None]


def _slot_setters(cls: type) -> dict[str, Setter]:
    return {f.name: cls.__dict__[f.name].__set__ for f in dataclasses.fields(cls)}


_EVENT_SLOTS = _slot_setters(AuditEvent)
_RECORD_KW = frozenset({"key_id", "key_version", "details"})


def _role_of(principal: Principal | None) -> str:
    """The record's role: the server's own acts (SYSTEM_CONTEXT: the scheduler, start-up, a
    restore) are ``system``, as its sink's own records are, never mixed into an
    administrator's; no token may name that subject (auth/authn.py RESERVED_SUBJECTS)."""
    if principal is None:
        return "anonymous"
    return "system" if principal.subject == "system" else principal.role.value


def _event(actor: Any, role: Any, action: Any, outcome: Any, message: Any, key_id: Any,
           key_version: Any, request_id: Any, correlation_id: Any, trace_id: Any, session: Any,
           client_fingerprint: Any, source_ip: Any, details: Any) -> AuditEvent:
    """``AuditEvent(...)`` with the same arguments and the same ``__post_init__`` validation."""
    event = object.__new__(AuditEvent)
    slot = _EVENT_SLOTS
    slot["actor"](event, actor)
    slot["role"](event, role)
    slot["action"](event, action)
    slot["outcome"](event, outcome)
    slot["message"](event, message)
    slot["key_id"](event, key_id)
    slot["key_version"](event, key_version)
    slot["request_id"](event, request_id)
    slot["correlation_id"](event, correlation_id)
    slot["trace_id"](event, trace_id)
    slot["session"](event, session)
    slot["client_fingerprint"](event, client_fingerprint)
    slot["source_ip"](event, source_ip)
    slot["details"](event, details)
    event.__post_init__()
    return event


# Built once: json.dumps(**options) would build a new encoder on every call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                            allow_nan=False)


def canonical_json(obj: object) -> bytes:
    """The one JSON encoding every hash, MAC and signature in the audit subsystem is taken over."""
    return _ENCODER.encode(obj).encode("ascii")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# (whole seconds since the epoch, its "YYYY-MM-DDTHH:MM:SS"): records come many per second, and
# formatting only the microseconds costs half of isoformat(). Replaced whole, so a reader in
# another thread sees an old or a new pair, never half of each.
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def rfc3339(ts: datetime) -> str:
    """'2026-11-28T12:00:00.000000Z': UTC, always microseconds, so string order is time order."""
    global _last_second
    if ts.tzinfo is UTC:  # the sinks' clock
        since = ts - _EPOCH
        second = since.days * 86400 + since.seconds
        cached = _last_second
        if cached[0] != second:
            cached = _last_second = (second, ts.isoformat()[:19])
        return f"{cached[1]}.{ts.microsecond:06d}Z"
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


@functools.lru_cache(maxsize=8)
def _keyed_mac(hmac_key: bytes) -> _hmac.HMAC:
    """An HMAC-SHA256 context with the key already absorbed. Copying it skips the two key-pad
    compressions every record would otherwise repeat (a sink uses one key for its lifetime)."""
    return _hmac.new(hmac_key, digestmod=hashlib.sha256)


def record_mac(hmac_key: bytes, hash_hex: str | bytes) -> str:
    data = hash_hex.encode("ascii") if isinstance(hash_hex, str) else hash_hex
    if type(hmac_key) is not bytes:  # bytearray, memoryview: unhashable, not worth caching
        return _hmac.digest(hmac_key, data, "sha256").hex()
    mac = _keyed_mac(hmac_key).copy()
    mac.update(data)
    return mac.hexdigest()


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


_PREPARED_SLOTS = _slot_setters(PreparedEvent)


def prepare(event: AuditEvent) -> PreparedEvent:
    """Encode ``event``'s part of the canonical body: the four pieces, each in one expression.

    The event was validated at construction, so every text field is a str or None and
    ``key_version`` an int or None; ``details`` (flat, scalar) goes through the canonical encoder
    unless it is empty. Each value is written exactly as ``canonical_json`` would write it.
    """
    details = dict(event.details)
    action, actor, message, outcome, role = (event.action, event.actor, event.message,
                                             event.outcome, event.role)
    fingerprint, correlation, key_id, key_version = (event.client_fingerprint,
                                                     event.correlation_id, event.key_id,
                                                     event.key_version)
    request_id, session, source_ip, trace_id = (event.request_id, event.session,
                                                event.source_ip, event.trace_id)
    fields: dict[str, Any] = {
        "action": action, "actor": actor, "client_fingerprint": fingerprint,
        "correlation_id": correlation, "details": details, "key_id": key_id,
        "key_version": key_version, "message": message, "outcome": outcome,
        "request_id": request_id, "role": role, "session": session, "source_ip": source_ip,
        "trace_id": trace_id}
    esc = encode_basestring_ascii  # what the C encoder uses under ensure_ascii
    before_id = (f'{{"action":{esc(action)},"actor":{esc(actor)},"client_fingerprint":'
                 f'{"null" if fingerprint is None else esc(fingerprint)},"correlation_id":'
                 f'{"null" if correlation is None else esc(correlation)},"details":'
                 f'{_ENCODER.encode(details) if details else "{}"},"id":"')
    before_prev = (f'","key_id":{"null" if key_id is None else esc(key_id)},"key_version":'
                   f'{"null" if key_version is None else _enc(key_version)},'
                   f'"message":{esc(message)},"outcome":{esc(outcome)},"prev_hash":"')
    before_seq = (f'","request_id":{"null" if request_id is None else esc(request_id)},'
                  f'"role":{esc(role)},"seq":')
    before_ts = (f',"session":{"null" if session is None else esc(session)},"source_ip":'
                 f'{"null" if source_ip is None else esc(source_ip)},"trace_id":'
                 f'{"null" if trace_id is None else esc(trace_id)},"ts":"')
    prepared = object.__new__(PreparedEvent)  # PreparedEvent(...) minus object.__setattr__
    slot = _PREPARED_SLOTS
    slot["fields"](prepared, fields)
    slot["before_id"](prepared, before_id)
    slot["before_prev"](prepared, before_prev)
    slot["before_seq"](prepared, before_seq)
    slot["before_ts"](prepared, before_ts)
    return prepared


# The hash this function made last: a sink seals record n+1 after record n, so its prev_hash is
# usually this one, already known to be 64 lowercase hex characters (no regex needed).
_last_hash = GENESIS_HASH


def seal_prepared(prepared: PreparedEvent, *, seq: int, prev_hash: str, ts: datetime,
                  record_id: str, hmac_key: bytes) -> tuple[dict[str, Any], bytes]:
    """Seal as record ``seq`` after ``prev_hash``: the record and its stored line (no newline)."""
    global _last_hash
    if type(seq) is not int or seq < 1:
        raise ValueError("audit seq starts at 1")
    if prev_hash != _last_hash and not HEX64_RE.match(prev_hash):
        raise ValueError("prev_hash must be 64 lowercase hex characters")
    if not RECORD_ID_RE.match(record_id):
        raise ValueError("record id must be 1-64 characters of [A-Za-z0-9._:-]")
    stamp = rfc3339(ts)
    head = (f'{prepared.before_id}{record_id}{prepared.before_prev}{prev_hash}'
            f'{prepared.before_seq}{seq}{prepared.before_ts}{stamp}"').encode("ascii")
    body = head + BODY_END
    digest = hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()
    mac = record_mac(hmac_key, digest)
    record = {**prepared.fields, "v": SCHEMA_VERSION, "id": record_id, "seq": seq, "ts": stamp,
              "prev_hash": prev_hash, "hash": digest, "hmac": mac}
    line = b"".join((head, _V_HASH_TAG, digest.encode("ascii"), HMAC_TAG, mac.encode("ascii"),
                     END_TAG))
    _last_hash = digest
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


def failed_check(result: str) -> str:
    """The failed check as an operator reads it: ``bad_hmac`` on a record whose hash is right
    most often means another audit HMAC key than the one the log was written with."""
    if result == "bad_hmac":
        return ("bad_hmac: is FERROHSM_AUDIT_HMAC_KEY the one this log was written with, the same "
                "on every node?")
    return result


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
