"""The KeyStore port.

Stores persist ``Key`` records, whose versions carry SEALED material only: a store never sees a
master key or plaintext key bytes. Writes are compare-and-swap on ``Key.revision`` so two writers
(threads or processes) never lose an update: ``update(key)`` succeeds only if the stored revision
still equals ``key.revision``, and stores ``revision + 1``.

Listing is keyset-paginated in ascending ``id`` order. Ids are UUIDv7 (time-ordered), so that is
creation order, and a page token ("after this id") stays valid and skips nothing that existed
before the first page was read, even while keys are inserted concurrently.

Records are authenticated: every store is built with a RecordAuthenticator and encodes and
decodes through one ``RecordCodec`` (records.py), so a store cannot forget the MAC. A record is
checked when it is decoded (a cache miss), not on every ``get``: memory and filesystem ``get``
stay a dict lookup of an already-checked Key, SQLite's a hit in its decoded-key cache. A key whose
record fails its check raises IntegrityError (or StoreError when it cannot be read at all) for
that key only; listings report it in ``Page.unreadable`` and go on.

``check_records``, ``record_census`` and ``authenticate_legacy_records`` serve the start-up check
and the one-time migration (integrity/records.py); each store gives them four small primitives.

Every implementation passes tests/conformance/test_keystore.py.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime

from ..domain.errors import BadRequest, IntegrityError, NotFound
from ..domain.model import (
    PAGE_TOKEN_PATTERN,
    Key,
    KeyFilter,
    KeyState,
    KeyVersion,
    Page,
    VersionState,
    is_uuid,
)
from .records import (
    FORMAT_META,
    RECORD_FAULTS,
    RecordAuthenticator,
    RecordCodec,
    RecordFormat,
    RecordScan,
    fault_of,
    has_mac,
)

log = logging.getLogger("ferrohsm.store")
MAX_PAGE = 1000
PAGE_TOKEN_RE = re.compile(PAGE_TOKEN_PATTERN)
MAX_NEWEST = 1_000_000  # keys whose newest binding a process remembers (resolve)


def _older(key: Key, seq: int, revision: int) -> bool:
    """Whether ``key`` is older than a record bound to ``seq`` at ``revision`` (0: unknown)."""
    if key.audit_seq < seq:
        return True
    if not revision:
        return False
    if key.audit_seq == seq:
        return key.revision != revision
    return key.revision <= revision


def encode_page_token(last_id: str) -> str:
    """``k1.<id>``: one regular expression (model.PAGE_TOKEN_PATTERN) describes every token, so
    the API description can say exactly which values the server takes."""
    return "k1." + last_id


def decode_page_token(token: str | None) -> str | None:
    """The id after which the next page starts; BadRequest for anything we did not issue."""
    if token is None:
        return None
    if not isinstance(token, str) or not PAGE_TOKEN_RE.fullmatch(token):
        raise BadRequest("invalid page_token")
    return token[3:]


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
    return limit


class KeyStore(ABC):
    """Persistence for keys. Implementations must be safe to call from many threads."""

    name = "abstract"

    def __init__(self, authenticator: RecordAuthenticator) -> None:
        self._records = RecordCodec(authenticator)
        # key id -> the newest (audit binding, revision) served or stored (_fresh)
        self._newest: dict[str, tuple[int, int]] = {}
        self._passed: dict[str, Key] = {}  # key id -> the Key object that last passed it

    @abstractmethod
    def create(self, key: Key) -> Key:
        """Insert a new key; returns it with revision 1. NameTaken / Conflict on duplicates."""

    @abstractmethod
    def delete(self, key_id: str) -> None:
        """Remove a key entirely (tests and tooling). The service never deletes a key
        (destruction erases material and keeps metadata) and undoes nothing: a change is
        recorded before it is applied (service/changes.py)."""

    @abstractmethod
    def bulk_create(self, keys: Iterable[Key]) -> None:
        """Insert many keys all-or-nothing (imports, benchmarks)."""

    @abstractmethod
    def get(self, key_id: str) -> Key:
        """NotFound when absent."""

    @abstractmethod
    def get_by_name(self, name: str) -> Key:
        """NotFound when absent."""

    @abstractmethod
    def update(self, key: Key) -> Key:
        """Compare-and-swap on revision; StaleRevision if someone wrote first. Name is immutable."""

    @abstractmethod
    def list(self, filters: KeyFilter, limit: int = 100, page_token: str | None = None) -> Page:
        """Keys matching ``filters`` with id > token, ascending id, at most ``limit``.

        ``next_page_token`` is None on the last page: stores look one key ahead, so a token never
        leads to an empty page."""

    def checked(self, page: Page) -> Page:
        """``page`` with every key that is an older copy of its record (``_fresh``) moved to
        ``unreadable``: a listing, or a backup, must not show a revoked key as active while
        reading it alone is refused. A key deleted meanwhile is left out."""
        keys: list[Key] = []
        stale: list[str] = []
        for key in page.keys:
            try:
                keys.append(key if self._passed.get(key.id) is key else self._fresh(key))
            except IntegrityError:
                stale.append(key.id)
            except NotFound:
                continue
        if len(keys) == len(page.keys):
            return page
        return Page(tuple(keys), page.next_page_token, tuple(sorted({*page.unreadable, *stale})))

    def readable(self) -> tuple[Sequence[Key], Sequence[str]]:
        """Every key whose record passes its checks (``checked``), and the ids of those whose
        record does not: what a backup may carry, and what it must not silently leave out."""
        keys: list[Key] = []
        unreadable: list[str] = []
        token: str | None = None
        while True:
            page = self.checked(self.list(KeyFilter(), MAX_PAGE, token))
            keys += page.keys
            unreadable += page.unreadable
            token = page.next_page_token
            if token is None:
                return keys, unreadable

    def walk(self, filters: KeyFilter | None = None) -> Iterator[Key]:
        """Every key matching ``filters`` (all keys when None), page by page, ascending id: a
        caller never holds more than a page it has not consumed."""
        token: str | None = None
        while True:
            page = self.list(filters or KeyFilter(), MAX_PAGE, token)
            yield from page.keys
            token = page.next_page_token
            if token is None:
                return

    @abstractmethod
    def count(self, filters: KeyFilter | None = None) -> int:
        """How many keys match (all keys when ``filters`` is None)."""

    @abstractmethod
    def get_meta(self, name: str) -> bytes | None:
        """Small named blobs the service keeps beside the keys (e.g. the master-key check value)."""

    @abstractmethod
    def put_meta(self, name: str, value: bytes) -> None:
        """Durably store a named blob, replacing any previous value."""

    def scrub(self) -> None:
        """Make material that earlier writes erased unrecoverable from this store's files
        (journals, free pages). Called after a key's material is destroyed; no-op by default."""

    def close(self) -> None:
        """Release files, locks and connections. Idempotent."""

    def describe(self) -> dict[str, object]:
        """Health information (never secrets)."""
        return {"backend": self.name}

    # ---- record integrity: what each store provides ----

    @abstractmethod
    def _stored_ids(self) -> Sequence[str]:
        """Every key id with a stored record, readable or not, ascending."""

    @abstractmethod
    def _read_record(self, key_id: str) -> bytes:
        """The record exactly as stored (NotFound if gone, StoreError if unreadable)."""

    @abstractmethod
    def _reload(self, key_id: str) -> Key:
        """Decode the stored record afresh (no cache) and bring caches and indexes in line
        with it; raises what ``get`` raises for a bad record."""

    @abstractmethod
    def _replace_record(self, key_id: str, old: bytes, new: bytes) -> None:
        """Store ``new`` in place of ``old`` only if ``old`` is still what is stored (Conflict
        otherwise); a revision column, if the store keeps one, follows ``new`` (a rekey binds
        each rewritten record to its audit intent, revision + 1)."""

    # ---- record integrity: start-up check and migration (integrity/records.py) ----

    def check_records(self) -> RecordScan:
        """Decode every stored record afresh; one fault per key that cannot be served."""
        faults = []
        checked = 0
        for key_id in self._stored_ids():
            try:
                self._reload(key_id)
            except NotFound:
                continue  # deleted since the ids were read
            except RECORD_FAULTS as exc:
                faults.append(fault_of(key_id, exc))
            checked += 1
        return RecordScan(checked, tuple(faults))

    def record_census(self) -> tuple[int, int]:
        """(records in the authenticated form, records without a MAC), MACs not verified."""
        with_mac = without = 0
        for data in self._raw_records():
            if has_mac(data):
                with_mac += 1
            else:
                without += 1
        return with_mac, without

    def authenticate_legacy_records(self) -> int:
        """Give every record that has no MAC one; returns how many were rewritten.

        Trust on first use: a format-1 record is taken as it is, which is why only the start-up
        migration calls this, and only until the format marker says AUTHENTICATED. Records that
        carry a MAC, right or wrong, are left alone (the check reports the wrong ones), and so
        are unparsable ones. Each rewrite is atomic, so a kill mid-way loses nothing: the next
        run rewrites what is left."""
        rewritten = 0
        for key_id in self._stored_ids():
            try:
                data = self._read_record(key_id)
                if has_mac(data):
                    continue
                key = self._records.decode_unauthenticated(key_id, data)
            except (NotFound, *RECORD_FAULTS):
                continue
            self._replace_record(key_id, data, self._records.encode(key))
            rewritten += 1
        return rewritten

    def rewrite_records(self, rewrite: Callable[[str, bytes], bytes | None],
                        after: Callable[[str], None] | None = None) -> int:
        """Replace each stored record by ``rewrite(key_id, record)`` unless that is None; the
        new record must pass this store's own check (a master-key rekey opens the store under
        the new key: custody/rekey.py). Each replacement is atomic and compare-and-swap, so a
        kill leaves every record either as it was or rewritten; ``after(key_id)`` follows each
        replacement. Returns how many were rewritten."""
        rewritten = 0
        for key_id in self._stored_ids():
            try:
                data = self._read_record(key_id)
            except NotFound:
                continue
            new = rewrite(key_id, data)
            if new is not None:
                self._replace_record(key_id, data, new)
                rewritten += 1
                if after is not None:
                    after(key_id)
        return rewritten

    def use_record_mac(self, authenticator: RecordAuthenticator) -> None:
        """From now on encode and check records under ``authenticator``: the swap at the end of
        an online master-key rekey (custody/online.py), made while no request runs."""
        self._records = RecordCodec(authenticator)

    def _raw_records(self) -> Iterable[bytes]:
        for key_id in self._stored_ids():
            try:
                yield self._read_record(key_id)
            except (NotFound, *RECORD_FAULTS):
                continue

    def record_format(self) -> RecordFormat | None:
        """The format marker; None if unset; IntegrityError if it fails its MAC."""
        return self._records.read_marker(self.get_meta(FORMAT_META))

    def set_record_format(self, state: RecordFormat) -> None:
        self.put_meta(FORMAT_META, self._records.marker(state))

    # ---- conveniences every store gets from the primitives above ----

    def resolve(self, ref: str) -> Key:
        """A key by id (UUID form) or unique name, as API paths accept either."""
        if not isinstance(ref, str) or not ref:
            raise NotFound("no such key")
        key = self.get(ref) if is_uuid(ref) else self.get_by_name(ref)
        return key if self._passed.get(key.id) is key else self._fresh(key)

    def read_afresh(self, key_id: str) -> Key:
        """The key as stored now, past any cache (NotFound when absent): for a decision that a
        cache a moment behind another process's write would get wrong."""
        return self._reload(key_id)

    def _fresh(self, key: Key) -> Key:
        """``key``, unless it is older than what this process has already served or stored:
        an older copy of its record put back (a revoked or destroyed key made active again:
        the MAC cannot tell, the copy was authentic once), a write the store lost, or a change
        another process made to such a copy. Every change binds a record to a later audit
        record AND to the next revision, so a key's (binding, revision) only grows, both at
        once; a record bound to a later change but not at a later revision was made from an
        older copy. Read afresh once first: a read that raced a change, or a cache behind, is
        not that."""
        seq, revision = self._newest.get(key.id, (0, 0))
        if _older(key, seq, revision):
            key = self._reload(key.id)
            if _older(key, seq, revision):
                log.error("integrity: key %s: the store holds an older copy of its record, or "
                          "one made from such a copy (bound to audit record seq %d at revision "
                          "%d; served bound to seq %d at revision %d)", key.id, key.audit_seq,
                          key.revision, seq, revision)
                raise IntegrityError(
                    f"key {key.id}: stored record failed its integrity check (it is an older "
                    f"copy, or made from one: bound to audit record seq {key.audit_seq} at "
                    f"revision {key.revision}, but this server has served it bound to seq "
                    f"{seq} at revision {revision}; put back, or a write the store lost)",
                    key_id=key.id, problem="older_copy")
        if key.audit_seq > seq or (key.audit_seq == seq and not revision):
            self.note_binding(key.id, key.audit_seq, key.revision)
        self._passed[key.id] = key  # the same object again (a cache hit) passes at once
        return key

    def note_binding(self, key_id: str, seq: int, revision: int = 0) -> None:
        """``key_id``'s record is bound to audit record ``seq`` (or later), at ``revision`` (0:
        not known): a change this process just stored, or the log's latest confirmed change of
        it (a start's reading of the log). ``resolve`` then refuses an older record."""
        if seq > self._newest.get(key_id, (0, 0))[0] or key_id not in self._newest:
            if len(self._newest) >= MAX_NEWEST and key_id not in self._newest:
                self._passed.pop(oldest := next(iter(self._newest)), None)
                del self._newest[oldest]
            self._newest[key_id] = (seq, revision)
            self._passed.pop(key_id, None)  # the bar rose: what passed it must pass again
        elif seq == self._newest[key_id][0] and revision and not self._newest[key_id][1]:
            self._newest[key_id] = (seq, revision)

    def append_version(self, key: Key, sealed: bytes, now: datetime) -> Key:
        added = KeyVersion(len(key.versions) + 1, VersionState.ENABLED, now, sealed)
        return self.update(replace(key, versions=(*key.versions, added), updated_at=now))

    def set_primary(self, key: Key, version: int, now: datetime) -> Key:
        key.version(version)
        return self.update(replace(key, primary_version=version, updated_at=now))

    def set_state(self, key: Key, state: KeyState, now: datetime) -> Key:
        return self.update(replace(key, state=state, updated_at=now))

    def purge_version(self, key: Key, version: int, now: datetime) -> Key:
        """Erase one version's sealed material; its number, dates and history stay."""
        key.version(version)
        versions = tuple(replace(v, state=VersionState.DESTROYED, sealed=None)
                         if v.version == version else v for v in key.versions)
        return self.update(replace(key, versions=versions, updated_at=now))
