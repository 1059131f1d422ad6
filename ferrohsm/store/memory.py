"""The in-memory key store, and the pieces every store shares.

``MemoryStore`` is the reference implementation of the KeyStore port: a dict of keys (so ``get`` on
the encrypt hot path is one dict lookup, no lock), a ``KeyIndex`` for listing, and one lock that
serialises writers. It keeps nothing across restarts: use it for tests and throw-away servers.

This module also holds what the other stores reuse, so they cannot drift apart on semantics:
``KeyIndex`` (sorted ids + light metadata; the filesystem store keeps one too), the record codec
(``encode_record`` / ``decode_record``, which turns a corrupted record into a StoreError that
names the key but never its contents), ``check_update`` (the compare-and-swap and immutable-name
rules) and the id and meta-name checks that keep untrusted strings out of file and item names.
"""

from __future__ import annotations

import bisect
import errno
import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace

from ..domain.errors import (
    BadRequest,
    Conflict,
    FerroError,
    NameTaken,
    NotFound,
    StaleRevision,
    StoreError,
)
from ..domain.model import Key, KeyFilter, Page, key_from_record, key_to_record
from .keystore import KeyStore, check_limit, decode_page_token, encode_page_token

# fullmatch, not ``$``: ``$`` also matches before a trailing newline, and these strings become
# file and item names.
_KEY_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_META_NAME_RE = re.compile(r"[a-z0-9_-]{1,64}")
_EMPTY_FILTER = KeyFilter()
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


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What listing needs to know about a key without loading it. ``None`` fields are unknown
    (an unreadable key): such an entry only matches the empty filter."""

    id: str
    name: str | None
    state: str | None
    algorithm: str | None
    usage: str | None
    tags: tuple[str, ...]

    @classmethod
    def of(cls, key: Key) -> IndexEntry:
        return cls(key.id, key.name, key.state.value, key.algorithm, key.usage, key.tags)

    def matches(self, f: KeyFilter) -> bool:
        """Same rules as KeyFilter.matches, on the light entry."""
        return ((f.state is None or self.state == f.state)
                and (f.algorithm is None or self.algorithm == f.algorithm)
                and (f.usage is None or self.usage == f.usage)
                and (f.tag is None or f.tag in self.tags)
                and (f.name_prefix is None
                     or (self.name is not None and self.name.startswith(f.name_prefix))))


class KeyIndex:
    """Ids in ascending order, entries, unique names, and an id list per tag.

    Keyset pages are a bisect into a sorted list; a tag filter walks that tag's own list, so a
    rare tag does not scan every key. Not thread-safe: the owning store holds its lock.
    """

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._entries: dict[str, IndexEntry] = {}
        self._names: dict[str, str] = {}
        self._tagged: dict[str, list[str]] = {}

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> Iterable[IndexEntry]:
        return self._entries.values()

    def entry(self, key_id: str) -> IndexEntry | None:
        return self._entries.get(key_id)

    def id_for_name(self, name: str) -> str | None:
        return self._names.get(name)

    def check_new(self, entry: IndexEntry) -> None:
        if entry.id in self._entries:
            raise Conflict(f"a key with id {entry.id} already exists")
        if entry.name is not None and entry.name in self._names:
            raise NameTaken(f"a key named {entry.name!r} already exists")

    def put(self, entry: IndexEntry) -> None:
        """Insert or replace; NameTaken (and no change) if the name belongs to another key."""
        owner = self._names.get(entry.name) if entry.name is not None else None
        if owner is not None and owner != entry.id:
            raise NameTaken(f"a key named {entry.name!r} already exists")
        old = self._entries.get(entry.id)
        self._entries[entry.id] = entry
        if old is None:
            bisect.insort(self._ids, entry.id)
        elif old.name == entry.name and old.tags == entry.tags:
            return  # the usual update: only state and friends changed, links stay
        else:
            self._unlink(old)
        if entry.name is not None:
            self._names[entry.name] = entry.id
        for tag in entry.tags:
            bisect.insort(self._tagged.setdefault(tag, []), entry.id)

    def bulk_load(self, entries: Iterable[IndexEntry]) -> list[IndexEntry]:
        """Add many NEW entries with one sort instead of an insort each (which is O(n) per key
        once ids arrive out of order, e.g. from a directory listing). Returns the entries left
        out because their id or name was already taken."""
        rejected: list[IndexEntry] = []
        for entry in entries:
            if entry.id in self._entries or (entry.name is not None and entry.name in self._names):
                rejected.append(entry)
                continue
            self._entries[entry.id] = entry
            self._ids.append(entry.id)
            if entry.name is not None:
                self._names[entry.name] = entry.id
            for tag in entry.tags:
                self._tagged.setdefault(tag, []).append(entry.id)
        self._ids.sort()
        for ids in self._tagged.values():
            ids.sort()
        return rejected

    def remove(self, key_id: str) -> None:
        old = self._entries.pop(key_id, None)
        if old is not None:
            self._unlink(old)
            del self._ids[bisect.bisect_left(self._ids, key_id)]

    def _unlink(self, old: IndexEntry) -> None:
        """Drop an entry's name and tag links (not its id)."""
        if old.name is not None and self._names.get(old.name) == old.id:
            del self._names[old.name]
        for tag in old.tags:
            ids = self._tagged[tag]
            del ids[bisect.bisect_left(ids, old.id)]
            if not ids:
                del self._tagged[tag]

    def page(self, filters: KeyFilter, after: str | None, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` matching ids after ``after``, and whether another match follows."""
        ids = self._ids if filters.tag is None else self._tagged.get(filters.tag, [])
        start = 0 if after is None else bisect.bisect_right(ids, after)
        if filters == _EMPTY_FILTER or filters == KeyFilter(tag=filters.tag):
            chunk = ids[start:start + limit + 1]
            return chunk[:limit], len(chunk) > limit
        found: list[str] = []
        entries = self._entries
        for key_id in ids[start:] if start else ids:
            if entries[key_id].matches(filters):
                if len(found) == limit:
                    return found, True
                found.append(key_id)
        return found, False

    def count(self, filters: KeyFilter | None) -> int:
        if filters is None or filters == _EMPTY_FILTER:
            return len(self._entries)
        ids = self._ids if filters.tag is None else self._tagged.get(filters.tag, [])
        entries = self._entries
        return sum(1 for key_id in ids if entries[key_id].matches(filters))


def check_batch(index: KeyIndex, batch: list[Key]) -> list[IndexEntry]:
    """Index entries for a bulk create; Conflict / NameTaken if any id or name is taken, either
    in ``index`` or twice within the batch."""
    entries = [IndexEntry.of(key) for key in batch]
    ids: set[str] = set()
    names: set[str] = set()
    for entry in entries:
        index.check_new(entry)
        if entry.id in ids:
            raise Conflict(f"key id {entry.id} appears twice in the batch")
        if entry.name is not None and entry.name in names:
            raise NameTaken(f"key name {entry.name!r} appears twice in the batch")
        ids.add(entry.id)
        if entry.name is not None:
            names.add(entry.name)
    return entries


def page_of(keys: tuple[Key, ...], scanned_last: str | None, more: bool) -> Page:
    """A Page whose token continues after the last id the page covered."""
    return Page(keys, encode_page_token(scanned_last) if more and scanned_last else None)


class MemoryStore(KeyStore):
    """Keys in a dict; nothing survives the process. Thread-safe; ``get`` takes no lock."""

    name = "memory"
    fail_writes = False  # fault injection: make the write path fail half-way (tests only)

    def __init__(self) -> None:
        self._keys: dict[str, Key] = {}
        self._index = KeyIndex()
        self._meta: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key_id: str) -> Key:
        key = self._keys.get(key_id)
        if key is None:
            raise NotFound("no such key")
        return key

    def get_by_name(self, name: str) -> Key:
        key_id = self._index.id_for_name(name) if isinstance(name, str) else None
        if key_id is None:
            raise NotFound("no such key")
        return self.get(key_id)

    def create(self, key: Key) -> Key:
        stored = replace(check_new_key(key), revision=1)
        with self._lock:
            self._index.check_new(IndexEntry.of(stored))
            self._commit(stored, None)
        return stored

    def bulk_create(self, keys: Iterable[Key]) -> None:
        """Insert many new keys at once (imports, benchmarks): all of them or none."""
        batch = [replace(check_new_key(k), revision=1) for k in keys]
        with self._lock:
            entries = check_batch(self._index, batch)
            self._index.bulk_load(entries)
            self._keys.update((key.id, key) for key in batch)

    def update(self, key: Key) -> Key:
        with self._lock:
            current = self.get(key.id)
            check_update(current, key)
            stored = replace(key, revision=key.revision + 1)
            self._commit(stored, current)
        return stored

    def delete(self, key_id: str) -> None:
        """Remove a key record entirely. Not a lifecycle move (destruction keeps metadata, see
        lifecycle.complete_destroy): it exists so the service can undo a create whose audit
        record failed. Every store offers it with these semantics."""
        with self._lock:
            if self._keys.pop(key_id, None) is None:
                raise NotFound("no such key")
            self._index.remove(key_id)

    def _commit(self, stored: Key, previous: Key | None) -> None:
        """Index first, then the dict; undo the index if the second step fails."""
        self._index.put(IndexEntry.of(stored))
        try:
            if self.fail_writes:
                raise OSError(errno.EIO, "injected write failure")
            self._keys[stored.id] = stored
        except OSError as exc:
            if previous is None:
                self._index.remove(stored.id)
            else:
                self._index.put(IndexEntry.of(previous))
            raise write_error(f"key {stored.id}", exc) from None

    def list(self, filters: KeyFilter, limit: int = 100, page_token: str | None = None) -> Page:
        limit = check_limit(limit)
        after = decode_page_token(page_token)
        with self._lock:
            ids, more = self._index.page(filters, after, limit)
            keys = tuple(self._keys[key_id] for key_id in ids)
        return page_of(keys, ids[-1] if ids else None, more)

    def count(self, filters: KeyFilter | None = None) -> int:
        with self._lock:
            return self._index.count(filters)

    def get_meta(self, name: str) -> bytes | None:
        return self._meta.get(check_meta_name(name))

    def put_meta(self, name: str, value: bytes) -> None:
        check_meta_name(name)
        if self.fail_writes:
            raise write_error(f"meta {name}", OSError(errno.EIO, "injected write failure"))
        self._meta[name] = bytes(value)

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "keys": len(self._keys)}
