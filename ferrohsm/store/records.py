"""The key record codec and the checks every key store applies, so no store drifts from another.

A key record is stored authenticated (format 2)::

    {"format":2,"mac":"<64 lowercase hex>","record":<canonical JSON of key_to_record>}

``mac`` is HMAC-SHA256 under a key derived from the master key (crypto/recordmac.py) over the
exact bytes of ``record``, with the context ``RECORD_CONTEXT``. Every field of the key is in the
record (state, usage, algorithm, tags, name, description, versions with their states and sealed
blobs, history, revision, dates, the audit binding), so every field is covered. The stored text
is canonical JSON as a whole, but ``decode`` never re-serialises: it checks the envelope's fixed
layout, verifies the MAC over the record bytes as they are stored, and only then parses them.

What ``decode`` refuses with IntegrityError (code ``integrity_error``), naming the key and what
failed but never the contents:

* a record without a MAC (format 1, as written before records were authenticated): only the
  one-time migration reads those, through ``decode_unauthenticated``;
* a MAC that does not match: any field edited, another key's sealed blob swapped in, another
  record's MAC copied in;
* an authentic record stored under another key's id (a whole file or row copied over).

The format marker, a MAC'd meta blob, says whether every record of a store must carry a MAC
(integrity/records.py runs the start-up protocol that sets it).

``check_update`` is the compare-and-swap and immutable-name rule. The id and meta-name checks keep
untrusted strings out of file and item names.
"""

from __future__ import annotations

import errno
import hmac
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ..domain.errors import BadRequest, FerroError, IntegrityError, StaleRevision, StoreError
from ..domain.model import Key, key_from_record, key_to_record

# fullmatch, not ``$``: ``$`` also matches before a trailing newline, and these strings become
# file and item names.
_KEY_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_META_NAME_RE = re.compile(r"[a-z0-9_-]{1,64}")
# What a malformed record makes json.loads / key_from_record raise (BadRequest comes from
# parse_iso and the model's validators).
_CORRUPT = (ValueError, KeyError, TypeError, AttributeError, RecursionError, FerroError)

RECORD_CONTEXT = b"ferrohsm key record v2"
MARKER_CONTEXT = b"ferrohsm key record format marker"
FORMAT_META = "key_record_format"
RECORD_FORMAT_VERSION = 2  # 1: the bare record, as stored before records carried a MAC
_PREFIX = b'{"format":%d,"mac":"' % RECORD_FORMAT_VERSION
_MIDDLE = b'","record":'
_SUFFIX = b"}"
_MAC_HEX = 64
_RECORD_AT = len(_PREFIX) + _MAC_HEX + len(_MIDDLE)
_MARKER_PREFIX = b"ferrohsm key records: format=%d state=" % RECORD_FORMAT_VERSION

# What a store raises for one key whose record cannot be served: listings and start-up checks
# report the key and carry on with the others.
RECORD_FAULTS = (StoreError, IntegrityError)


class RecordAuthenticator(Protocol):
    """Makes the MAC of ``data`` in ``context`` (crypto.recordmac.RecordMac in production)."""

    def tag(self, context: bytes, data: bytes) -> bytes: ...


class Problem(StrEnum):
    """What failed, in audit details and error details (never the record's contents)."""

    MAC_MISSING = "mac_missing"
    MAC_MISMATCH = "mac_mismatch"
    LAYOUT = "layout_changed"
    WRONG_KEY = "wrong_key"
    UNREADABLE = "unreadable"


_SAYS = {
    Problem.MAC_MISSING: "it carries no MAC in the authenticated layout",
    Problem.MAC_MISMATCH: "its MAC does not match",
    Problem.LAYOUT: "its stored bytes are not laid out as they were written: it was edited",
    Problem.WRONG_KEY: "it belongs to a different key",
}


class RecordFormat(StrEnum):
    """The format marker's states: records being given MACs, or all of them carrying one."""

    MIGRATING = "migrating"
    AUTHENTICATED = "authenticated"


@dataclass(frozen=True, slots=True)
class RecordFault:
    """One stored record that cannot be served, as the start-up check reports it."""

    key_id: str
    problem: str
    message: str  # the error's message: names the key and the reason, never contents


@dataclass(frozen=True, slots=True)
class RecordScan:
    checked: int
    faults: tuple[RecordFault, ...]


def fault_of(key_id: str, exc: FerroError) -> RecordFault:
    problem = exc.details.get("problem", Problem.UNREADABLE)
    return RecordFault(key_id, str(problem), exc.message)


def record_error(key_id: str, problem: Problem) -> IntegrityError:
    return IntegrityError(f"key {key_id}: stored record failed its integrity check "
                          f"({_SAYS[problem]})", key_id=key_id, problem=problem.value)


def _canonical(key: Key) -> bytes:
    return json.dumps(key_to_record(key), sort_keys=True, separators=(",", ":")).encode("ascii")


def _as_bytes(key_id: str, data: bytes | str) -> bytes:
    if isinstance(data, bytes):
        return data
    try:
        return data.encode("ascii")
    except UnicodeEncodeError:  # we only ever store ASCII: this was not written by us
        raise record_error(key_id, Problem.MAC_MISMATCH) from None


def has_mac(data: bytes | str) -> bool:
    """Whether a stored record is in the authenticated form (not whether its MAC is right)."""
    raw = data if isinstance(data, bytes) else data.encode("ascii", "replace")
    return raw.startswith(_PREFIX)


def _parse(key_id: str, record: bytes) -> Key:
    try:
        key = key_from_record(json.loads(record))
    except _CORRUPT as exc:
        raise StoreError(f"key {key_id}: stored record is corrupted "
                         f"({type(exc).__name__})") from None
    if key.id != key_id:
        raise record_error(key_id, Problem.WRONG_KEY)
    return key


class RecordCodec:
    """Encodes keys to authenticated records and decodes them back, checking the MAC first."""

    __slots__ = ("_auth",)

    def __init__(self, authenticator: RecordAuthenticator) -> None:
        self._auth = authenticator

    def _mac_hex(self, context: bytes, data: bytes) -> bytes:
        return self._auth.tag(context, data).hex().encode("ascii")

    def encode(self, key: Key) -> bytes:
        """The stored form: canonical record bytes inside the MAC envelope."""
        record = _canonical(key)
        return b"".join((_PREFIX, self._mac_hex(RECORD_CONTEXT, record), _MIDDLE, record,
                         _SUFFIX))

    def decode(self, key_id: str, data: bytes | str) -> Key:
        """The key, once its MAC is verified; IntegrityError (naming key and problem) if not."""
        raw = _as_bytes(key_id, data)
        if not raw.startswith(_PREFIX):  # a MAC elsewhere: the envelope was rewritten
            raise record_error(key_id, Problem.LAYOUT if b'"mac"' in raw else Problem.MAC_MISSING)
        stored_mac = raw[len(_PREFIX):len(_PREFIX) + _MAC_HEX]
        record = raw[_RECORD_AT:-len(_SUFFIX)]
        if raw[_RECORD_AT - len(_MIDDLE):_RECORD_AT] != _MIDDLE or not raw.endswith(_SUFFIX) \
                or not hmac.compare_digest(stored_mac, self._mac_hex(RECORD_CONTEXT, record)):
            raise record_error(key_id, Problem.MAC_MISMATCH)
        return _parse(key_id, record)

    @staticmethod
    def decode_unauthenticated(key_id: str, data: bytes | str) -> Key:
        """A format-1 record (no MAC), for the one-time migration ONLY: it trusts the bytes."""
        return _parse(key_id, data if isinstance(data, bytes) else data.encode("utf-8"))

    def marker(self, state: RecordFormat) -> bytes:
        """The format marker blob: format version and ``state``, then their MAC."""
        payload = _MARKER_PREFIX + state.value.encode("ascii")
        return payload + b"|" + self._mac_hex(MARKER_CONTEXT, payload)

    def read_marker(self, blob: bytes | None) -> RecordFormat | None:
        """The marker's state; None when there is none; IntegrityError when it fails its MAC."""
        if blob is None:
            return None
        payload, _, mac = blob.rpartition(b"|")
        if payload.startswith(_MARKER_PREFIX) and hmac.compare_digest(
                mac, self._mac_hex(MARKER_CONTEXT, payload)):
            try:
                return RecordFormat(payload[len(_MARKER_PREFIX):].decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                pass  # a state (or format) this version does not know: refuse it too
        raise IntegrityError("the key store's record-format marker failed its integrity check",
                             problem=Problem.MAC_MISMATCH.value)


def is_key_id(text: object) -> bool:
    """A lowercase UUID and nothing else, so it is safe to use as a file or item name."""
    return isinstance(text, str) and _KEY_ID_RE.fullmatch(text) is not None


def check_new_key(key: Key) -> Key:
    """Refuse an id the model let through but no store may use as a name (see is_key_id)."""
    if not is_key_id(key.id):
        raise BadRequest("key id must be a lowercase UUID")
    return key


def check_meta_name(name: object) -> str:
    if not isinstance(name, str) or _META_NAME_RE.fullmatch(name) is None:
        raise BadRequest("meta name must be 1-64 characters of a-z, 0-9, '_' or '-'")
    return name


def check_update(current: Key, proposed: Key) -> None:
    """The compare-and-swap rule: the caller must have read the revision that is stored now."""
    if proposed.name != current.name:
        raise BadRequest("a key's name cannot be changed")
    if proposed.revision != current.revision:
        raise StaleRevision(f"key {current.id} was changed by someone else; read it again")


def write_error(what: str, exc: OSError) -> StoreError:
    """A StoreError for a failed write that names the object and the OS reason, nothing else."""
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "I/O error")
    return StoreError(f"could not write {what}: {reason}")
