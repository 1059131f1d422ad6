"""The key record codec and the checks every key store applies, so no store drifts from another.

``encode_record`` / ``decode_record`` turn a Key into canonical JSON and back; a corrupted record
becomes a StoreError that names the key but never its contents. ``check_update`` is the
compare-and-swap and immutable-name rule. The id and meta-name checks keep untrusted strings out of
file and item names.
"""

from __future__ import annotations

import errno
import json
import re

from ..domain.errors import BadRequest, FerroError, StaleRevision, StoreError
from ..domain.model import Key, key_from_record, key_to_record

# fullmatch, not ``$``: ``$`` also matches before a trailing newline, and these strings become
# file and item names.
_KEY_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_META_NAME_RE = re.compile(r"[a-z0-9_-]{1,64}")
# What a malformed record makes json.loads / key_from_record raise (BadRequest comes from
# parse_iso and the model's validators).
_CORRUPT = (ValueError, KeyError, TypeError, AttributeError, RecursionError, FerroError)


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


def encode_record(key: Key) -> bytes:
    """Canonical JSON bytes of ``key_to_record`` (sorted keys, no spaces)."""
    return json.dumps(key_to_record(key), sort_keys=True, separators=(",", ":")).encode("ascii")


def decode_record(key_id: str, data: bytes | str) -> Key:
    """Parse a stored record; StoreError naming the key (never the contents) when it is corrupt.

    The record must also carry the id it is stored under, so a file or row copied over another
    key's place is refused rather than served under the wrong id.
    """
    try:
        key = key_from_record(json.loads(data))
    except _CORRUPT as exc:
        raise StoreError(f"key {key_id}: stored record is corrupted "
                         f"({type(exc).__name__})") from None
    if key.id != key_id:
        raise StoreError(f"key {key_id}: stored record belongs to a different key")
    return key


def write_error(what: str, exc: OSError) -> StoreError:
    """A StoreError for a failed write that names the object and the OS reason, nothing else."""
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "I/O error")
    return StoreError(f"could not write {what}: {reason}")


