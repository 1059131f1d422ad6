"""KeyIndex: sorted key ids and light metadata, the listing engine of the memory and filesystem stores.

Both stores list through the same index so their pages, filters and page tokens cannot drift apart.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from ..domain.errors import Conflict, NameTaken
from ..domain.model import Key, KeyFilter, Page
from .keystore import encode_page_token

_EMPTY_FILTER = KeyFilter()

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


def page_of(keys: tuple[Key, ...], scanned_last: str | None, more: bool,
            unreadable: tuple[str, ...] = (), filters: KeyFilter | None = None) -> Page:
    """A Page whose token continues after the last id the page covered (readable or not).
    ``filters``: checked again on the authenticated records, since the index or columns that
    chose them are not authenticated (an edited state column listed a revoked key as active)."""
    if filters is not None:
        keys = tuple(key for key in keys if filters.matches(key))
    return Page(keys, encode_page_token(scanned_last) if more and scanned_last else None,
                unreadable)


