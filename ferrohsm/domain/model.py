"""The key model: frozen dataclasses validated on construction.

Pure data (L0): no I/O, no clock, no randomness. Times are timezone-aware UTC datetimes passed in by
the caller. A ``Key`` carries its versions' *sealed* material only; unsealed bytes never live here.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

from .errors import BadRequest, Conflict
from .shown import shown

# Each rule is one regular expression, written once: the server matches with it and the API
# description (api/openapi.py) publishes the same text as a JSON Schema ``pattern``, so the
# document and the server cannot disagree. They use only syntax both dialects read alike.
UUID_PATTERN = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
UUID_RE = re.compile(UUID_PATTERN)
# Names may not look like UUIDs, so a key reference is never ambiguous between id and name.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A new name also has no "..": the router refuses ".." in a path parameter, so such a name could
# never be used as a key reference (stored names keep NAME_RE).
NEW_NAME_PATTERN = r"[A-Za-z0-9](?:\.?[A-Za-z0-9_-])*\.?"
NEW_NAME_RE = re.compile(NEW_NAME_PATTERN)
MAX_NAME = 128
TAG_PATTERN = "[a-z0-9][a-z0-9_.-]{0,62}"
TAG_RE = re.compile(TAG_PATTERN)
# Text kept in records and shown to people (revocation reasons, vote comments, token ids): no
# C0/C1 control characters, no line or paragraph separators, no bidirectional overrides or
# zero-width characters (they would let one record display as another). The check also refuses
# a lone surrogate (no UTF-8 record, log line or answer can carry one): the body parser refuses
# them in requests, but a token's claims (jti, sid) reach here without it. (Not in the API
# schema's pattern: JSON Schema's regex dialect reads surrogate escapes its own way.)
_NOT_PLAIN = (r"\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
              r"\ufeff\ufff9-\ufffb")
# Tag characters (U+E0000-E007F) are invisible and can carry a hidden text: refused wherever
# the two kinds of text below are checked (not in the API schema's patterns either, for the
# same reason as surrogates: outside the Basic Multilingual Plane, the dialects part ways).
_INVISIBLE_TAGS = "\U000e0000-\U000e007f"
PLAIN_TEXT_PATTERN = rf"[^{_NOT_PLAIN}]*"
PLAIN_TEXT_RE = re.compile(rf"[^{_NOT_PLAIN}\ud800-\udfff{_INVISIBLE_TAGS}]*")
# Descriptions: no control characters other than tab and newline.
DESCRIPTION_PATTERN = r"[^\x00-\x08\x0b-\x1f\x7f]*"
DESCRIPTION_RE = re.compile(DESCRIPTION_PATTERN)
# A description given now (create, update, import) has no C1 controls and no bidirectional
# marks, embeddings, overrides or isolates either: "evil\u202etxt.exe" would show one key's
# description as another text in the dashboard and the CLI. Nor invisible characters that make
# two texts look the same ("a\u200bb" shows as "ab": zero-width space, word joiner, invisible
# operators, soft hyphen, BOM, interlinear annotation marks, tag characters) or break a line
# where a reader sees none (line and paragraph separators). Stored keys keep DESCRIPTION_RE,
# so a description written before this rule still loads. Joiners (U+200C, U+200D) stay: emoji
# sequences and some scripts need them.
_NOT_IN_NEW_DESCRIPTION = (r"\x00-\x08\x0b-\x1f\x7f-\x9f\xad\u061c\u180e\u200b\u200e\u200f"
                           r"\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb")
NEW_DESCRIPTION_PATTERN = rf"[^{_NOT_IN_NEW_DESCRIPTION}]*"
NEW_DESCRIPTION_RE = re.compile(rf"[^{_NOT_IN_NEW_DESCRIPTION}{_INVISIBLE_TAGS}]*")
# A page token (store/keystore.py): "k1." and the id of the last item of the previous page.
PAGE_TOKEN_PATTERN = r"k1\." + UUID_PATTERN
MAX_TAGS = 32
MAX_DESCRIPTION = 1024
MAX_HISTORY_DETAIL = 256
GCM_LIMIT = 1 << 32  # AES-GCM encryptions with random 96-bit nonces per key (NIST SP 800-38D)
# An audit record hash (audit/chain.py): lowercase hex SHA-256, or "" before the first binding.
AUDIT_HASH_RE = re.compile(r"(?:[0-9a-f]{64})?")


class NoSuchVersion(Conflict):
    """A version number the key does not have: 409, the key exists (a 404 would say it does
    not), and the number is well-formed (a 400 would say the request is)."""


class KeyState(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"
    DESTROY_SCHEDULED = "destroy_scheduled"
    DESTROYED = "destroyed"


class VersionState(StrEnum):
    ENABLED = "enabled"
    ARCHIVED = "archived"
    DESTROYED = "destroyed"


class Origin(StrEnum):
    """Where a version's material came from: made here, or brought in by key import (BYOK)."""

    GENERATED = "generated"
    IMPORTED = "imported"


class Role(StrEnum):
    ADMINISTRATOR = "administrator"
    OPERATOR = "operator"
    AUDITOR = "auditor"
    SERVICE = "service"


def utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise ValueError("naive datetime: FerroHSM only handles aware UTC times")
    return dt.astimezone(UTC)


def iso(dt: datetime | None) -> str | None:
    """RFC 3339 with a Z suffix and microseconds kept, so ordering by string is ordering by time."""
    if dt is None:
        return None
    return utc(dt).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except (ValueError, AttributeError) as exc:
        raise BadRequest(f"not an RFC 3339 time: {shown(text)}") from exc


def is_uuid(text: str) -> bool:
    return isinstance(text, str) and UUID_RE.fullmatch(text) is not None


def is_key_ref(text: str) -> bool:
    """Whether ``text`` could name a key at all: an id, or a name (of any age, NAME_RE)."""
    return isinstance(text, str) and (is_uuid(text) or NAME_RE.fullmatch(text) is not None)


def validate_name(name: str | None) -> None:
    if name is None:
        return
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or is_uuid(name.lower()):
        raise BadRequest("name must be 1-128 characters of letters, digits, '.', '_' or '-', "
                         "start with a letter or digit, and not look like a UUID", field="name")


def validate_new_name(name: str | None) -> None:
    """A name for a new key: ``validate_name``, and usable as a key reference."""
    validate_name(name)
    if name is not None and not NEW_NAME_RE.fullmatch(name):
        raise BadRequest("name may not contain '..' (it could not be used in a path)",
                         field="name")


def plain_text(text: str, name: str, limit: int) -> str:
    """``text`` if it is at most ``limit`` characters matching PLAIN_TEXT_PATTERN; else 400."""
    if len(text) > limit or not PLAIN_TEXT_RE.fullmatch(text):
        raise BadRequest(f"{name} must be at most {limit} characters, without control, "
                         f"line-separator or bidi-override characters")
    return text


def validate_tags(tags: tuple[str, ...]) -> None:
    """Refusals name the tag at fault (by its place, and its text cut short) and the field, so
    a form with a dozen tags can point at the one to change."""
    if len(tags) > MAX_TAGS:
        raise BadRequest(f"at most {MAX_TAGS} tags", field="tags")
    for place, tag in enumerate(tags, 1):
        if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
            raise BadRequest(f"tag {place} ({shown(tag)}) is not valid: tags must be 1-63 "
                             "lowercase letters, digits, '.', '_' or '-'", field="tags")
        if tag in tags[:place - 1]:
            raise BadRequest(f"tag {place} ({shown(tag)}) is given twice", field="tags")


def validate_description(text: str) -> None:
    if not isinstance(text, str) or len(text) > MAX_DESCRIPTION:
        raise BadRequest(f"description must be a string of at most {MAX_DESCRIPTION} characters",
                         field="description")
    if not DESCRIPTION_RE.fullmatch(text):
        raise BadRequest("description may not contain control characters", field="description")


def validate_new_description(text: str) -> None:
    """A description a client gives now: ``validate_description``, and NEW_DESCRIPTION_RE."""
    validate_description(text)
    if not NEW_DESCRIPTION_RE.fullmatch(text):
        raise BadRequest("description may not contain control characters, invisible "
                         "characters or bidirectional formatting characters", field="description")


@dataclass(frozen=True, slots=True)
class KeyVersion:
    version: int
    state: VersionState
    created_at: datetime
    sealed: bytes | None  # None once the material is purged; metadata stays
    origin: Origin = Origin.GENERATED  # in the record, so the record MAC covers it
    # AES-GCM encryptions reserved with this version by every process that ever used it
    # (engine/gcmbudget.py): the bound of the encryptions made, kept to GCM_LIMIT.
    encryptions_reserved: int = 0

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("versions start at 1")
        reserved = self.encryptions_reserved
        if type(reserved) is not int or not 0 <= reserved <= GCM_LIMIT:
            raise ValueError(f"encryptions_reserved must be an int from 0 to {GCM_LIMIT}")
        if not isinstance(self.origin, Origin):
            raise ValueError("origin must be an Origin")
        if (self.sealed is None) != (self.state is VersionState.DESTROYED):
            raise ValueError("a version has sealed material exactly when it is not destroyed")


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One append-only entry of a key's metadata history: who changed what, when."""

    at: datetime
    actor: str
    action: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Key:
    id: str
    name: str | None
    description: str
    algorithm: str
    usage: str
    tags: tuple[str, ...]
    state: KeyState
    primary_version: int
    versions: tuple[KeyVersion, ...]
    created_at: datetime
    updated_at: datetime
    created_by: str
    destroy_after: datetime | None = None
    previous_state: KeyState | None = None  # what cancel-destroy restores
    revision: int = 0  # bumped by the store on every write (compare-and-swap)
    history: tuple[HistoryEvent, ...] = field(default=())
    # The seq and hash of the audit record of this key's last change, so a start-up check can
    # tell an older (replayed) copy of an authenticated record from the current one. 0 and ""
    # mean "not bound yet" (records written before the binding existed).
    audit_seq: int = 0
    audit_hash: str = ""

    def __post_init__(self) -> None:
        if not is_uuid(self.id):
            raise ValueError("key id must be a lowercase UUID")
        validate_name(self.name)
        validate_tags(self.tags)
        validate_description(self.description)
        numbers = [v.version for v in self.versions]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError("versions must be numbered 1..n in order")
        if self.state is not KeyState.DESTROYED and not 1 <= self.primary_version <= len(numbers):
            raise ValueError("primary_version must name an existing version")
        if (self.state is KeyState.DESTROY_SCHEDULED) != (self.destroy_after is not None):
            raise ValueError("destroy_after is set exactly when destruction is scheduled")
        if type(self.audit_seq) is not int or self.audit_seq < 0:
            raise ValueError("audit_seq must be a non-negative int")
        if type(self.audit_hash) is not str or not AUDIT_HASH_RE.fullmatch(self.audit_hash):
            raise ValueError("audit_hash must be 64 lowercase hex characters or empty")

    @property
    def origin(self) -> Origin:
        """How the key came to be: its first version's origin (each version keeps its own)."""
        return self.versions[0].origin if self.versions else Origin.GENERATED

    def version(self, number: int) -> KeyVersion:
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= len(self.versions):
            raise NoSuchVersion(f"key has no version {shown(number, 20)}")
        return self.versions[number - 1]

    def with_event(self, now: datetime, actor: str, action: str, detail: str = "", **changes: Any) -> Key:
        """A copy with ``changes`` applied, ``updated_at`` set and one history event appended."""
        event = HistoryEvent(now, actor, action, detail[:MAX_HISTORY_DETAIL])
        return replace(self, updated_at=now, history=(*self.history, event), **changes)


@dataclass(frozen=True, slots=True)
class KeyFilter:
    state: KeyState | None = None
    algorithm: str | None = None
    usage: str | None = None
    tag: str | None = None
    name_prefix: str | None = None

    def matches(self, key: Key) -> bool:
        return ((self.state is None or key.state == self.state)
                and (self.algorithm is None or key.algorithm == self.algorithm)
                and (self.usage is None or key.usage == self.usage)
                and (self.tag is None or self.tag in key.tags)
                and (self.name_prefix is None
                     or (key.name is not None and key.name.startswith(self.name_prefix))))


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing. ``unreadable`` holds the ids in the page's range whose stored
    records failed their check (unreadable, tampered): they count toward the page's limit, so
    pages and tokens stay where they would be, and one bad record never breaks a listing."""

    keys: tuple[Key, ...]
    next_page_token: str | None
    unreadable: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``tags`` limits a Service principal to keys carrying one of them."""

    subject: str
    role: Role
    tags: frozenset[str] | None = None
    session: str | None = None
    token_id: str | None = None
    expires_at: int | None = None  # the token's exp claim (Unix time), for GET /v1/whoami
    issued_at: int | None = None  # its iat claim, for Vault's lookup-self (api/handlers/vaultauth)
    # The algorithm of the key that verified the token (HS256, RS256, PS256, ES256, ES384):
    # [approvals].require_asymmetric_tokens lets only identity-provider tokens vote.
    signed_with: str | None = None


class RequestContext(NamedTuple):
    """Who asked, from where, under which ids: reaches handlers, logs and every audit record.

    A NamedTuple rather than a frozen dataclass: as immutable, and built twice per request (before
    and after authentication) at less than half the cost (a frozen dataclass's ``__init__`` sets
    each field through ``object.__setattr__``). Change a field with ``ctx._replace(...)``."""

    principal: Principal | None
    request_id: str
    correlation_id: str | None = None
    trace_id: str | None = None
    source_ip: str | None = None
    client_fingerprint: str | None = None
    approval_id: str | None = None
    # Where a record that may wait (``record(..., defer=True)``: refusals, crypto results) leaves
    # its audit ticket instead of being made durable at once: the request's own list, which the
    # event-loop server checks before it answers. None: nobody waits, every record is durable
    # before ``record`` returns.
    tickets: list[Any] | None = None

    @property
    def actor(self) -> str:
        return self.principal.subject if self.principal else "anonymous"


SYSTEM_CONTEXT = RequestContext(Principal("system", Role.ADMINISTRATOR), request_id="system")


# ---- serialisation -------------------------------------------------------------------------
# Stores persist ``key_to_record``; the API shows ``key_view``. Keeping both here means a new store
# cannot drift from the others on field names.

def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("stored sealed material is not base64") from exc


def key_to_record(key: Key) -> dict[str, Any]:
    return {
        "id": key.id, "name": key.name, "description": key.description,
        "algorithm": key.algorithm, "usage": key.usage, "tags": list(key.tags),
        "state": key.state.value, "primary_version": key.primary_version,
        "versions": [_version_record(v) for v in key.versions],
        "created_at": iso(key.created_at), "updated_at": iso(key.updated_at),
        "created_by": key.created_by, "destroy_after": iso(key.destroy_after),
        "previous_state": key.previous_state.value if key.previous_state else None,
        "revision": key.revision,
        "history": [{"at": iso(h.at), "actor": h.actor, "action": h.action, "detail": h.detail}
                    for h in key.history],
        "audit_seq": key.audit_seq, "audit_hash": key.audit_hash,
    }


def _version_record(v: KeyVersion) -> dict[str, Any]:
    """A version's stored form. ``encryptions_reserved`` only once it is not 0, so a record
    written before it existed keeps its bytes (its MAC and its intent's digest)."""
    out = {"version": v.version, "state": v.state.value, "created_at": iso(v.created_at),
           "sealed": _b64(v.sealed), "origin": v.origin.value}
    if v.encryptions_reserved:
        out["encryptions_reserved"] = v.encryptions_reserved
    return out


def key_from_record(rec: dict[str, Any]) -> Key:
    """Inverse of key_to_record; raises ValueError/KeyError/TypeError on a malformed record.

    ``audit_seq`` and ``audit_hash`` default to 0 and "", and a version's ``origin`` to
    "generated", because records written before they existed do not carry them."""
    return Key(
        id=rec["id"], name=rec["name"], description=rec["description"],
        algorithm=rec["algorithm"], usage=rec["usage"], tags=tuple(rec["tags"]),
        state=KeyState(rec["state"]), primary_version=int(rec["primary_version"]),
        versions=tuple(KeyVersion(int(v["version"]), VersionState(v["state"]),
                                  _time(v["created_at"]), _unb64(v["sealed"]),
                                  Origin(v.get("origin", Origin.GENERATED)),
                                  v.get("encryptions_reserved", 0))
                       for v in rec["versions"]),
        created_at=_time(rec["created_at"]), updated_at=_time(rec["updated_at"]),
        created_by=rec["created_by"], destroy_after=parse_iso(rec["destroy_after"]),
        previous_state=KeyState(rec["previous_state"]) if rec["previous_state"] else None,
        revision=int(rec["revision"]),
        history=tuple(HistoryEvent(_time(h["at"]), h["actor"], h["action"], h["detail"])
                      for h in rec["history"]),
        audit_seq=rec.get("audit_seq", 0), audit_hash=rec.get("audit_hash", ""),
    )


def _time(text: str) -> datetime:
    value = parse_iso(text)
    if value is None:
        raise ValueError("missing time")
    return value


def key_view(key: Key) -> dict[str, Any]:
    """The API's key object (docs/api.md): never any sealed bytes. ``audit_seq``/``audit_hash``
    stay out: they bind the stored record to the audit log for the start-up check, and an
    auditor finds a key's changes through the audit API by key id."""
    return {
        "id": key.id, "name": key.name, "description": key.description,
        "algorithm": key.algorithm, "usage": key.usage, "tags": list(key.tags),
        "state": key.state.value, "primary_version": key.primary_version,
        "origin": key.origin.value,
        "versions": [_version_view(key, v) for v in key.versions],
        "created_at": iso(key.created_at), "updated_at": iso(key.updated_at),
        "created_by": key.created_by, "destroy_after": iso(key.destroy_after),
        "revision": key.revision,
        "history": [{"at": iso(h.at), "actor": h.actor, "action": h.action, "detail": h.detail}
                    for h in key.history],
    }


def _version_view(key: Key, v: KeyVersion) -> dict[str, Any]:
    """A version in the API. An AES-GCM encrypt key's versions say how many encryptions every
    process together has reserved of the GCM_LIMIT each may make (a bound of those made)."""
    out: dict[str, Any] = {"version": v.version, "state": v.state.value,
                           "created_at": iso(v.created_at), "origin": v.origin.value}
    if key.algorithm == "aes-256-gcm" and key.usage == "encrypt":
        out["encryptions_reserved"] = v.encryptions_reserved
    return out
