"""The in-memory key store: the reference implementation of the KeyStore port.

``MemoryStore`` keeps a dict of keys (so ``get`` on the encrypt hot path is one dict lookup, no
lock), a ``KeyIndex`` for listing, and one lock that serialises writers. It keeps nothing across
restarts: use it for tests and throw-away servers. What every store shares lives in ``records``
(the codec and checks) and ``keyindex`` (listing).

Writes go through the record codec like every other store's (so a key that cannot be encoded and
authenticated fails here as it would on disk), and the authenticated bytes are kept beside the
decoded keys for the start-up check. The store is born with the format marker set: it can never
hold records written before records were authenticated.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace

from ..domain.errors import Conflict, NotFound
from ..domain.model import Key, KeyFilter, Page
from .keyindex import IndexEntry, KeyIndex, check_batch, page_of
from .keystore import KeyStore, check_limit, decode_page_token
from .records import (
    FORMAT_META,
    RecordAuthenticator,
    RecordFormat,
    check_meta_name,
    check_new_key,
    check_update,
    write_error,
)


class MemoryStore(KeyStore):
    """Keys in a dict; nothing survives the process. Thread-safe; ``get`` takes no lock."""

    name = "memory"
    fail_writes = False  # fault injection: make the write path fail half-way (tests only)

    def __init__(self, authenticator: RecordAuthenticator) -> None:
        super().__init__(authenticator)
        self._keys: dict[str, Key] = {}
        self._stored: dict[str, bytes] = {}  # the authenticated records of ``_keys``
        self._index = KeyIndex()
        self._meta: dict[str, bytes] = {
            FORMAT_META: self._records.marker(RecordFormat.AUTHENTICATED)}
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
        records = {key.id: self._records.encode(key) for key in batch}
        with self._lock:
            entries = check_batch(self._index, batch)
            self._index.bulk_load(entries)
            self._keys.update((key.id, key) for key in batch)
            self._stored.update(records)

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
            self._stored.pop(key_id, None)
            self._index.remove(key_id)

    def _commit(self, stored: Key, previous: Key | None) -> None:
        """Index first, then the dicts; undo the index if the second step fails."""
        record = self._records.encode(stored)
        self._index.put(IndexEntry.of(stored))
        try:
            if self.fail_writes:
                raise OSError(errno.EIO, "injected write failure")
            self._keys[stored.id] = stored
            self._stored[stored.id] = record
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

    # ---- record integrity ----

    def _stored_ids(self) -> Sequence[str]:
        with self._lock:
            return sorted(self._stored)

    def _read_record(self, key_id: str) -> bytes:
        record = self._stored.get(key_id)
        if record is None:
            raise NotFound("no such key")
        return record

    def _reload(self, key_id: str) -> Key:
        return self._records.decode(key_id, self._read_record(key_id))

    def _replace_record(self, key_id: str, old: bytes, new: bytes) -> None:
        with self._lock:
            if self._stored.get(key_id) != old:
                raise Conflict(f"the record of key {key_id} changed while it was rewritten")
            self._keys[key_id] = self._records.decode(key_id, new)
            self._stored[key_id] = new
