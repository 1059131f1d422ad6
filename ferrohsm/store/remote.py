"""Remote key vaults: the adapter port a cloud KMS / network HSM client implements, and
``RemoteKeyStore``, which turns ANY such vault into a KeyStore.

A future cloud adapter only writes a ``RemoteKeyVault``: four calls with compare-and-swap
semantics over opaque, named blobs. Everything KeyStore promises (unique names, CAS on revision,
keyset pagination, filters, meta blobs) is built here on top of them, so policy, audit and the
service never change when the backend does. The vault only ever receives key records whose
material is already sealed by FerroHSM (a vault may add its own envelope encryption on top).

How the KeyStore semantics map onto the vault's items:

* ``keys/<id>``    the authenticated key record (records.py): the vault cannot change what a key
  may do without the MAC failing, whatever envelope encryption it adds or omits. Created with "must not exist"; updated with
  "etag must still be the one I read", which is exactly compare-and-swap on the revision.
* ``names/<name>`` a reservation holding the key id. It is written create-only BEFORE the key, so
  two creators can never both get a name. If the key write then fails, the reservation is deleted
  again; if the process dies in between, the name stays reserved (``get_by_name`` still answers
  NotFound) until an operator deletes the orphan. Safety first: a name is never handed out twice.
* ``meta/<name>``  put_meta blobs.

Filters are evaluated here on scanned records, as most vault APIs cannot filter on our fields;
a vault that can may be given a smarter store later without touching this port.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import itertools
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

from ..domain.errors import Conflict, FerroError, NameTaken, NotFound, StaleRevision, StoreError
from ..domain.model import NAME_RE, Key, KeyFilter, Page
from .keyindex import page_of
from .keystore import KeyStore, check_limit, decode_page_token
from .records import (
    RECORD_FAULTS,
    RecordAuthenticator,
    check_meta_name,
    check_new_key,
    check_update,
    is_key_id,
    write_error,
)

KEYS, NAMES, META = "keys/", "names/", "meta/"
SCAN_BATCH = 256
META_RETRIES = 16


class VaultError(Exception):
    """Base of what a vault client raises on purpose."""


class VaultConflict(VaultError):
    """A conditional write or delete found the item in another state than expected."""


class VaultUnavailable(VaultError):
    """The vault could not be reached, timed out, or refused the call (auth, quota, ...)."""


@dataclass(frozen=True, slots=True)
class VaultItem:
    name: str
    data: bytes
    etag: str  # opaque; changes on every write of the item


class RemoteKeyVault(ABC):
    """The remote API a cloud KMS / HSM client must provide. Implementations must be thread-safe.

    Item names are ASCII and sort by code point; ``data`` is opaque bytes. Raise VaultConflict for
    a failed precondition and VaultUnavailable for anything transport- or service-related; a
    conditional call must be atomic on the server (DynamoDB condition expressions, GCS
    ifGenerationMatch, Azure/S3 If-Match / If-None-Match all provide this).
    """

    @abstractmethod
    def read(self, name: str) -> VaultItem | None:
        """The item, or None if absent."""

    @abstractmethod
    def write(self, name: str, data: bytes, expected_etag: str | None) -> str:
        """Store ``data``; returns the new etag. ``expected_etag`` None: create only (conflict
        if the item exists); otherwise replace only if the item's etag is still that one."""

    @abstractmethod
    def delete(self, name: str, expected_etag: str) -> None:
        """Delete only if the item's etag is still ``expected_etag`` (conflict otherwise)."""

    @abstractmethod
    def scan(self, prefix: str, after: str | None, limit: int) -> Sequence[VaultItem]:
        """Items whose name starts with ``prefix`` and sorts after ``after``, ascending, at most
        ``limit``; fewer than ``limit`` means there are no more."""

    def close(self) -> None:
        """Release connections. Idempotent."""

    def describe(self) -> dict[str, object]:
        return {"vault": type(self).__name__}


class RemoteKeyStore(KeyStore):
    """The KeyStore port on top of any RemoteKeyVault; stateless, so many servers may share one
    vault (every check is the vault's own compare-and-swap, nothing is cached here)."""

    name = "remote"
    fail_writes = False  # fault injection: fail after the name is reserved (tests only)

    def __init__(self, vault: RemoteKeyVault, authenticator: RecordAuthenticator) -> None:
        super().__init__(authenticator)
        self._vault = vault
        self._closed = False

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Vault and transport failures become StoreError; VaultConflict is the caller's to map."""
        if self._closed:
            raise StoreError("the remote store is closed")
        try:
            yield
        except VaultUnavailable as exc:
            raise StoreError(f"key vault unavailable while accessing {what}: "
                             f"{type(exc).__name__}") from None
        except OSError as exc:
            raise write_error(what, exc) from None

    def _fault_point(self) -> None:
        if self.fail_writes:
            raise OSError(errno.EIO, "injected write failure")

    # ---- reading ---------------------------------------------------------------------------

    def get(self, key_id: str) -> Key:
        return self._records.decode(key_id, self._read_record(key_id))

    def get_by_name(self, name: str) -> Key:
        if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
            raise NotFound("no such key")
        with self._calling(f"name {name}"):
            item = self._vault.read(NAMES + name)
        if item is None:
            raise NotFound("no such key")
        key_id = item.data.decode("ascii", "replace")
        if not is_key_id(key_id):
            raise StoreError(f"the reservation of name {name!r} is corrupted")
        key = self.get(key_id)  # NotFound for an orphaned reservation
        if key.name != name:
            raise NotFound("no such key")
        return key

    def list(self, filters: KeyFilter, limit: int = 100, page_token: str | None = None) -> Page:
        limit = check_limit(limit)
        after = decode_page_token(page_token)
        found: list[Key] = []
        unreadable: list[str] = []
        last = None
        for key_id, key in self._scan(after):
            if _listed(filters, key):
                if len(found) + len(unreadable) == limit:
                    return page_of(tuple(found), last, True, tuple(unreadable))
                if key is None:
                    unreadable.append(key_id)
                else:
                    found.append(key)
                last = key_id
        return page_of(tuple(found), None, False, tuple(unreadable))

    def count(self, filters: KeyFilter | None = None) -> int:
        return sum(1 for _, key in self._scan(None) if filters is None or _listed(filters, key))

    def _scan(self, after: str | None) -> Iterator[tuple[str, Key | None]]:
        """Every key after ``after`` in id order, fetched in batches; None for a record that
        fails its check."""
        cursor = None if after is None else KEYS + after
        while True:
            with self._calling("the key list"):
                batch = self._vault.scan(KEYS, cursor, SCAN_BATCH)
            for item in batch:
                key_id = item.name[len(KEYS):]
                if is_key_id(key_id):
                    yield key_id, self._decode_or_none(key_id, item.data)
            if len(batch) < SCAN_BATCH:
                return
            cursor = batch[-1].name

    def _decode_or_none(self, key_id: str, data: bytes) -> Key | None:
        try:
            return self._records.decode(key_id, data)
        except RECORD_FAULTS:
            return None

    def get_meta(self, name: str) -> bytes | None:
        check_meta_name(name)
        with self._calling(f"meta {name}"):
            item = self._vault.read(META + name)
        return None if item is None else item.data

    # ---- writing ---------------------------------------------------------------------------

    def create(self, key: Key) -> Key:
        stored = replace(check_new_key(key), revision=1)
        what = f"key {stored.id}"
        with self._calling(what):
            if self._vault.read(KEYS + stored.id) is not None:
                raise Conflict(f"a key with id {stored.id} already exists")
        reservation = self._reserve(stored) if stored.name is not None else None
        try:
            with self._calling(what):
                self._fault_point()
                try:
                    self._vault.write(KEYS + stored.id, self._records.encode(stored), None)
                except VaultConflict:
                    raise Conflict(f"a key with id {stored.id} already exists") from None
        except BaseException:
            if reservation is not None:
                self._delete_quietly(NAMES + str(stored.name), reservation)
            raise
        return stored

    def _reserve(self, key: Key) -> str:
        with self._calling(f"name {key.name}"):
            try:
                return self._vault.write(NAMES + str(key.name), key.id.encode("ascii"), None)
            except VaultConflict:
                raise NameTaken(f"a key named {key.name!r} already exists") from None

    def _delete_quietly(self, item: str, etag: str) -> None:
        """Best-effort undo; if it fails too, a name stays reserved, which is the safe side."""
        with contextlib.suppress(VaultError, OSError):
            self._vault.delete(item, etag)

    def bulk_create(self, keys: Iterable[Key]) -> None:
        """Create many keys; on failure the ones already created are deleted again (best effort:
        a remote vault offers no multi-item transaction)."""
        done: list[Key] = []
        try:
            for key in keys:
                done.append(self.create(key))
        except BaseException:
            for key in reversed(done):
                with contextlib.suppress(FerroError):
                    self.delete(key.id)
            raise

    def update(self, key: Key) -> Key:
        if not is_key_id(key.id):
            raise NotFound("no such key")
        what = f"key {key.id}"
        with self._calling(what):
            item = self._vault.read(KEYS + key.id)
        if item is None:
            raise NotFound("no such key")
        check_update(self._records.decode(key.id, item.data), key)
        stored = replace(key, revision=key.revision + 1)
        with self._calling(what):
            self._fault_point()
            try:
                self._vault.write(KEYS + key.id, self._records.encode(stored), item.etag)
            except VaultConflict:
                raise StaleRevision(f"key {key.id} was changed by someone else; "
                                    "read it again") from None
        return stored

    def delete(self, key_id: str) -> None:
        """Remove a key record and its name reservation (undo of a create; see
        MemoryStore.delete). The record goes first: a leftover reservation is the safe side."""
        if not is_key_id(key_id):
            raise NotFound("no such key")
        with self._calling(f"key {key_id}"):
            item = self._vault.read(KEYS + key_id)
            if item is None:
                raise NotFound("no such key")
            key_name = self._records.decode(key_id, item.data).name
            try:
                self._vault.delete(item.name, item.etag)
            except VaultConflict:
                raise StaleRevision(f"key {key_id} changed while it was being deleted") from None
            reservation = self._vault.read(NAMES + key_name) if key_name else None
            if reservation is not None and reservation.data == key_id.encode("ascii"):
                self._delete_quietly(reservation.name, reservation.etag)

    def put_meta(self, name: str, value: bytes) -> None:
        check_meta_name(name)
        data = bytes(value)
        with self._calling(f"meta {name}"):
            for _ in range(META_RETRIES):  # "replace whatever is there": CAS in a loop
                item = self._vault.read(META + name)
                self._fault_point()
                try:
                    self._vault.write(META + name, data, None if item is None else item.etag)
                    return
                except VaultConflict:
                    continue
        raise StoreError(f"could not write meta {name}: too many concurrent writers")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._vault.close()

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, **self._vault.describe()}

    # ---- record integrity ------------------------------------------------------------------

    def _stored_ids(self) -> Sequence[str]:
        ids: list[str] = []
        cursor = None
        while True:
            with self._calling("the key list"):
                batch = self._vault.scan(KEYS, cursor, SCAN_BATCH)
            ids += [i.name[len(KEYS):] for i in batch if is_key_id(i.name[len(KEYS):])]
            if len(batch) < SCAN_BATCH:
                return ids
            cursor = batch[-1].name

    def _read_record(self, key_id: str) -> bytes:
        if not is_key_id(key_id):
            raise NotFound("no such key")
        with self._calling(f"key {key_id}"):
            item = self._vault.read(KEYS + key_id)
        if item is None:
            raise NotFound("no such key")
        return item.data

    def _reload(self, key_id: str) -> Key:
        return self.get(key_id)  # nothing is cached here

    def _replace_record(self, key_id: str, old: bytes, new: bytes) -> None:
        self._records.decode(key_id, new)
        with self._calling(f"key {key_id}"):
            item = self._vault.read(KEYS + key_id)
            if item is None or item.data != old:
                raise Conflict(f"the record of key {key_id} changed while it was rewritten")
            try:
                self._vault.write(KEYS + key_id, new, item.etag)
            except VaultConflict:
                raise Conflict(f"the record of key {key_id} changed while it was "
                               "rewritten") from None


def _listed(filters: KeyFilter, key: Key | None) -> bool:
    """Whether a scanned key belongs in a listing; one whose record fails its check has no
    trustworthy fields, so only the unfiltered listing shows it (as unreadable)."""
    return filters.matches(key) if key is not None else filters == KeyFilter()


class InMemoryRemoteVault(RemoteKeyVault):
    """The reference vault: the test double of a remote API, NOT a product backend (it keeps
    nothing across restarts). It implements the contract exactly, so RemoteKeyStore is proven
    by the conformance suite, and counts round-trips so tests can see what a network would pay.
    """

    def __init__(self) -> None:
        self._items: dict[str, tuple[bytes, str]] = {}
        self._names: list[str] = []  # sorted, for scans
        self._lock = threading.Lock()
        self._etags = itertools.count(1)
        self.round_trips = 0

    def read(self, name: str) -> VaultItem | None:
        with self._lock:
            self.round_trips += 1
            found = self._items.get(name)
        return None if found is None else VaultItem(name, found[0], found[1])

    def write(self, name: str, data: bytes, expected_etag: str | None) -> str:
        with self._lock:
            self.round_trips += 1
            current = self._items.get(name)
            if (current is None) != (expected_etag is None) or (
                    current is not None and current[1] != expected_etag):
                raise VaultConflict(name)
            etag = str(next(self._etags))
            if current is None:
                bisect.insort(self._names, name)
            self._items[name] = (bytes(data), etag)
            return etag

    def delete(self, name: str, expected_etag: str) -> None:
        with self._lock:
            self.round_trips += 1
            current = self._items.get(name)
            if current is None or current[1] != expected_etag:
                raise VaultConflict(name)
            del self._items[name]
            del self._names[bisect.bisect_left(self._names, name)]

    def scan(self, prefix: str, after: str | None, limit: int) -> Sequence[VaultItem]:
        with self._lock:
            self.round_trips += 1
            start = bisect.bisect_right(self._names, after) if after is not None and \
                after >= prefix else bisect.bisect_left(self._names, prefix)
            out: list[VaultItem] = []
            for name in self._names[start:start + limit]:
                if not name.startswith(prefix):
                    break
                data, etag = self._items[name]
                out.append(VaultItem(name, data, etag))
            return out

    def describe(self) -> dict[str, object]:
        return {"vault": "in-memory reference vault (test double)", "items": len(self._items)}
