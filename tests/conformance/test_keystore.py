"""The KeyStore contract (ferrohsm/store/keystore.py), run against every implementation.

Each test receives ``store`` once per backend (memory, filesystem, sqlite, remote). Expected
results come from the model itself (``KeyFilter.matches``), never from another store. Every
backend authenticates its records (``RECORD_MAC``); the record-integrity tests at the end edit
stored records behind the store's back (``raw``) wherever records live outside the process.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from keystores import RECORD_MAC

from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.errors import (
    BadRequest,
    Conflict,
    IntegrityError,
    NameTaken,
    NotFound,
    StaleRevision,
    StoreError,
)
from ferrohsm.domain.model import (
    Key,
    KeyFilter,
    KeyState,
    NoSuchVersion,
    VersionState,
    key_to_record,
)
from ferrohsm.store.keystore import MAX_PAGE, KeyStore, encode_page_token
from ferrohsm.store.records import RECORD_CONTEXT, RecordCodec, RecordFormat

if TYPE_CHECKING:  # fixtures come from conftest.py; only their types are imported
    from keystores import Backend, KeyFactory, RawRecords


def walk(store: KeyStore, filters: KeyFilter, limit: int,
         unreadable: list[str] | None = None) -> list[str]:
    """Every id the store lists for ``filters``, page by page, checking each page's shape; ids
    reported unreadable go to ``unreadable`` (and must not be there unless it is given)."""
    ids: list[str] = []
    token: str | None = None
    while True:
        page = store.list(filters, limit, token)
        covered = len(page.keys) + len(page.unreadable)
        assert covered <= limit
        assert covered or token is None, "a token must never lead to an empty page"
        ids += [k.id for k in page.keys]
        if unreadable is None:
            assert not page.unreadable
        else:
            unreadable += page.unreadable
        if page.next_page_token is None:
            return ids
        assert covered == limit, "a page with a token must be full"
        token = page.next_page_token


# ---- create / get / resolve ----------------------------------------------------------------

def test_create_returns_revision_one_and_round_trips(store: KeyStore, factory: KeyFactory) -> None:
    key = factory.key(name="payments", tags=("prod", "pci"), description="ünïcode ✓\nline 2")
    created = store.create(replace(key, revision=7))
    assert created == replace(key, revision=1)
    assert store.get(key.id) == created
    assert store.get_by_name("payments") == created
    assert store.get(key.id).versions[0].sealed == factory.sealed("v1")


def test_resolve_by_id_or_name(store: KeyStore, factory: KeyFactory) -> None:
    named = store.create(factory.key(name="release-signing", algorithm="ec-p256", usage="sign"))
    anonymous = store.create(factory.key())
    assert store.resolve(named.id) == named
    assert store.resolve("release-signing") == named
    assert store.resolve(anonymous.id) == anonymous
    for missing in (factory.new_id(), "no-such-name", "", "../etc/passwd", "a/b", "x\x00y"):
        with pytest.raises(NotFound):
            store.resolve(missing)


def test_get_unknown_is_not_found(store: KeyStore, factory: KeyFactory) -> None:
    for ref in (factory.new_id(), "not-a-uuid", "../x", "/etc/passwd", "\x00", ""):
        with pytest.raises(NotFound):
            store.get(ref)
        with pytest.raises(NotFound):
            store.get_by_name(ref)


def test_names_are_unique(store: KeyStore, factory: KeyFactory) -> None:
    store.create(factory.key(name="shared"))
    with pytest.raises(NameTaken):
        store.create(factory.key(name="shared"))
    assert store.count() == 1
    store.create(factory.key(name="Shared"))  # names compare exactly, in every backend
    assert store.get_by_name("Shared").name == "Shared"


def test_many_keys_without_a_name(store: KeyStore, factory: KeyFactory) -> None:
    for _ in range(3):
        store.create(factory.key(name=None))
    assert store.count() == 3


def test_duplicate_id_is_a_conflict_not_a_name_clash(store: KeyStore, factory: KeyFactory) -> None:
    first = store.create(factory.key(name="one"))
    with pytest.raises(Conflict) as caught:
        store.create(factory.key(key_id=first.id, name="two"))
    assert type(caught.value) is Conflict
    with pytest.raises(NotFound):
        store.get_by_name("two")  # a failed create reserves nothing
    store.create(factory.key(name="two"))


# ---- listing -------------------------------------------------------------------------------

def _population(store: KeyStore, factory: KeyFactory) -> list[Key]:
    specs: list[dict[str, Any]] = [
        {"name": "alpha-1", "tags": ("prod", "pci")},
        {"name": "alpha-2", "usage": "wrap", "tags": ("prod",), "state": KeyState.REVOKED},
        {"name": "beta", "algorithm": "ec-p256", "usage": "sign"},
        {"algorithm": "rsa-2048", "usage": "sign", "tags": ("pci",),
         "state": KeyState.DESTROY_SCHEDULED},
        {"name": "Alpha-3", "algorithm": "ec-p384", "usage": "sign", "tags": ("dev",)},
        {"tags": ("dev", "prod"), "state": KeyState.DESTROYED},
        {"name": "gamma", "algorithm": "rsa-4096", "usage": "sign", "tags": ("pci", "dev"),
         "state": KeyState.REVOKED},
        {"name": "alphabet", "tags": ("prod",)},
        {"usage": "wrap"},
        {"name": "delta", "algorithm": "ec-p256", "usage": "sign", "tags": ("prod", "dev", "pci")},
    ]
    return [store.create(factory.key(**spec)) for spec in specs]


FILTERS = [
    KeyFilter(),
    KeyFilter(state=KeyState.ACTIVE), KeyFilter(state=KeyState.REVOKED),
    KeyFilter(state=KeyState.DESTROY_SCHEDULED), KeyFilter(state=KeyState.DESTROYED),
    KeyFilter(algorithm="aes-256-gcm"), KeyFilter(algorithm="ec-p256"),
    KeyFilter(algorithm="no-such-algorithm"),
    KeyFilter(usage="sign"), KeyFilter(usage="wrap"), KeyFilter(usage="encrypt"),
    KeyFilter(tag="prod"), KeyFilter(tag="pci"), KeyFilter(tag="dev"), KeyFilter(tag="absent"),
    KeyFilter(name_prefix="alpha"), KeyFilter(name_prefix="Alpha"), KeyFilter(name_prefix=""),
    KeyFilter(name_prefix="alpha-"), KeyFilter(name_prefix="zzz"), KeyFilter(name_prefix="%"),
    KeyFilter(state=KeyState.ACTIVE, tag="prod"),
    KeyFilter(state=KeyState.REVOKED, usage="sign"),
    KeyFilter(algorithm="aes-256-gcm", usage="encrypt", tag="prod"),
    KeyFilter(tag="pci", name_prefix="alpha"),
    KeyFilter(state=KeyState.ACTIVE, algorithm="ec-p256", usage="sign", tag="dev",
              name_prefix="d"),
]


@pytest.mark.parametrize("filters", FILTERS, ids=repr)
def test_list_and_count_match_the_model(store: KeyStore, factory: KeyFactory,
                                        filters: KeyFilter) -> None:
    keys = _population(store, factory)
    expected = sorted(k.id for k in keys if filters.matches(k))
    assert walk(store, filters, 1000) == expected
    assert walk(store, filters, 2) == expected
    assert store.count(filters) == len(expected)
    by_id = {k.id: k for k in keys}
    assert all(k == by_id[k.id] for k in store.list(filters, 1000).keys)


def test_count_without_filters(store: KeyStore, factory: KeyFactory) -> None:
    assert store.count() == 0
    keys = _population(store, factory)
    assert store.count() == store.count(None) == store.count(KeyFilter()) == len(keys)


def test_empty_store_lists_nothing(store: KeyStore) -> None:
    page = store.list(KeyFilter())
    assert page.keys == () and page.next_page_token is None


def test_pagination_walks_everything_once_in_id_order(store: KeyStore,
                                                      factory: KeyFactory) -> None:
    ids = [store.create(factory.key()).id for _ in range(23)]
    for limit in (1, 5, 7, 23, 24, MAX_PAGE):
        assert walk(store, KeyFilter(), limit) == sorted(ids) == ids


def test_page_tokens_are_stable_under_concurrent_inserts(store: KeyStore,
                                                         factory: KeyFactory) -> None:
    # Interleaved ids: half exist before the walk, half (some lower, some higher than the cursor)
    # are inserted between page reads, as another server with a skewed clock might.
    all_ids = [factory.new_id() for _ in range(40)]
    before, later = all_ids[::2], all_ids[1::2]
    for key_id in before:
        store.create(factory.key(key_id=key_id))
    seen: list[str] = []
    token: str | None = None
    while True:
        page = store.list(KeyFilter(), 3, token)
        seen += [k.id for k in page.keys]
        if later:
            store.create(factory.key(key_id=later.pop(0)))
            store.create(factory.key(key_id=later.pop()))
        if page.next_page_token is None:
            break
        token = page.next_page_token
    assert len(seen) == len(set(seen)), "a key was listed twice"
    assert seen == sorted(seen)
    assert [i for i in seen if i in set(before)] == before, "a pre-existing key was skipped"


def test_filtered_pagination_uses_the_same_tokens(store: KeyStore, factory: KeyFactory) -> None:
    tagged = [store.create(factory.key(tags=("t",) if i % 3 else ())).id for i in range(20)]
    expected = [i for n, i in enumerate(tagged) if n % 3]
    assert walk(store, KeyFilter(tag="t"), 4) == expected


@pytest.mark.parametrize("token", [
    "garbage!", "", "=", "a" * 7, base64.urlsafe_b64encode(b"k1:not-a-uuid").decode(),
    base64.urlsafe_b64encode(b"k2:01890a5d-ac96-774b-bcce-b302099a8057").decode(), "é",
    "k1.01890A5D-AC96-774B-BCCE-B302099A8057", "k1.01890a5d-ac96-774b-bcce-b302099a8057\n",
    "k2.01890a5d-ac96-774b-bcce-b302099a8057", " k1.01890a5d-ac96-774b-bcce-b302099a8057",
])
def test_invalid_page_token_is_bad_request(store: KeyStore, token: str) -> None:
    with pytest.raises(BadRequest):
        store.list(KeyFilter(), 10, token)


def test_a_token_for_an_unknown_id_is_valid(store: KeyStore, factory: KeyFactory) -> None:
    ids = [store.create(factory.key()).id for _ in range(3)]
    page = store.list(KeyFilter(), 10, encode_page_token(ids[0]))
    assert [k.id for k in page.keys] == ids[1:]


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE + 1, True, 1.5, "10", None])
def test_limit_bounds(store: KeyStore, limit: object) -> None:
    with pytest.raises(BadRequest):
        store.list(KeyFilter(), limit)  # type: ignore[arg-type]  # wrong types are the point


def test_limit_extremes_are_accepted(store: KeyStore, factory: KeyFactory) -> None:
    for _ in range(2):
        store.create(factory.key())
    assert len(store.list(KeyFilter(), 1).keys) == 1
    assert len(store.list(KeyFilter(), MAX_PAGE).keys) == 2


# ---- versions, state, purge ----------------------------------------------------------------

def test_versions_primary_state_and_purge(store: KeyStore, factory: KeyFactory) -> None:
    key = store.create(factory.key(name="rotating"))
    key = store.append_version(key, factory.sealed("v2"), factory.later)
    assert (key.revision, len(key.versions), key.versions[1].sealed) == (2, 2, factory.sealed("v2"))
    key = store.set_primary(key, 2, factory.later)
    assert key.primary_version == 2 and key.revision == 3
    key = store.purge_version(key, 1, factory.later)
    purged = key.versions[0]
    assert purged.sealed is None and purged.state is VersionState.DESTROYED
    assert purged.version == 1 and purged.created_at == factory.now
    key = store.set_state(key, KeyState.REVOKED, factory.later)
    assert store.get(key.id) == key == store.get_by_name("rotating")
    assert key.revision == 5 and key.updated_at == factory.later
    assert store.get(key.id).versions[1].sealed == factory.sealed("v2")
    assert store.count(KeyFilter(state=KeyState.REVOKED)) == 1
    with pytest.raises(NoSuchVersion, match="no version 3"):
        store.set_primary(key, 3, factory.later)


def test_complete_destroy_keeps_metadata(store: KeyStore, factory: KeyFactory) -> None:
    key = store.create(factory.key(name="doomed"))
    key = store.update(lc.schedule_destroy(key, factory.now, "bob", timedelta(0)))
    key = store.update(lc.complete_destroy(key, factory.later, "bob"))
    stored = store.get_by_name("doomed")
    assert stored == key and stored.state is KeyState.DESTROYED
    assert all(v.sealed is None for v in stored.versions)
    assert [h.action for h in stored.history] == ["create", "destroy", "destroy_complete"]


# ---- compare-and-swap ----------------------------------------------------------------------

def test_second_writer_with_the_same_revision_is_stale(store: KeyStore,
                                                       factory: KeyFactory) -> None:
    key = store.create(factory.key())
    alice, bob = store.get(key.id), store.get(key.id)
    won = store.update(lc.revoke(alice, factory.later, "alice"))
    with pytest.raises(StaleRevision):
        store.update(lc.rotate(bob, factory.sealed("v2"), factory.later, "bob"))
    assert store.get(key.id) == won and won.revision == 2


def test_update_cannot_rename_or_invent_keys(store: KeyStore, factory: KeyFactory) -> None:
    key = store.create(factory.key(name="fixed"))
    with pytest.raises(BadRequest):
        store.update(replace(key, name="renamed"))
    with pytest.raises(NotFound):
        store.update(factory.key())
    assert store.get(key.id) == key


def test_concurrent_read_modify_write_loses_nothing(store: KeyStore, factory: KeyFactory) -> None:
    key = store.create(factory.key())
    threads, rounds = 6, 5
    stale: list[int] = []
    same_start = threading.Barrier(threads)  # round one: everybody holds the same revision

    def worker(n: int) -> None:
        done = 0
        while done < rounds:
            current = store.get(key.id)
            if done == 0 and n not in stale:
                same_start.wait()
            try:
                store.update(lc.rotate(current, factory.sealed(f"t{n}"), factory.later, f"t{n}"))
                done += 1
            except StaleRevision:
                stale.append(n)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    final = store.get(key.id)
    assert len(stale) >= threads - 1, "the first round must have collided"
    assert len(final.versions) == 1 + threads * rounds
    assert len(final.history) == 1 + threads * rounds
    assert final.revision == 1 + threads * rounds
    assert final.primary_version == len(final.versions)


# ---- delete (undo of a create) ------------------------------------------------------------

def test_delete_removes_the_record_and_frees_the_name(store: KeyStore,
                                                      factory: KeyFactory) -> None:
    keep = store.create(factory.key(name="keep", tags=("x",)))
    gone = store.create(factory.key(name="gone", tags=("x",)))
    store.delete(gone.id)
    with pytest.raises(NotFound):
        store.get(gone.id)
    with pytest.raises(NotFound):
        store.delete(gone.id)
    assert walk(store, KeyFilter(tag="x"), 10) == [keep.id] and store.count() == 1
    store.create(factory.key(name="gone"))


# ---- meta ----------------------------------------------------------------------------------

def test_meta_blobs(store: KeyStore) -> None:
    assert store.get_meta("check-value") is None
    store.put_meta("check-value", b"\x00\xffone")
    store.put_meta("other_1", b"")
    assert store.get_meta("check-value") == b"\x00\xffone"
    store.put_meta("check-value", b"two")
    assert store.get_meta("check-value") == b"two" and store.get_meta("other_1") == b""
    for bad in ("", "../x", "UPPER", "a/b", "x" * 65, "a\n", "a.b"):
        with pytest.raises(BadRequest):
            store.put_meta(bad, b"v")
        with pytest.raises(BadRequest):
            store.get_meta(bad)


# ---- persistence ---------------------------------------------------------------------------

def test_everything_survives_a_reopen(backend: Backend, factory: KeyFactory) -> None:
    if not backend.persistent:
        pytest.skip(f"{backend.kind} keeps nothing across restarts by design")
    store = backend.open()
    keys = _population(store, factory)
    rotated = store.append_version(keys[0], factory.sealed("v2"), factory.later)
    store.put_meta("check-value", b"cv")
    store.close()
    store.close()  # idempotent
    again = backend.open()
    assert again.get(rotated.id) == rotated
    assert again.get_by_name("beta") == keys[2]
    assert again.count() == len(keys) and again.get_meta("check-value") == b"cv"
    assert walk(again, KeyFilter(tag="prod"), 2) == sorted(
        k.id for k in keys if "prod" in k.tags)
    with pytest.raises(NameTaken):
        again.create(factory.key(name="alpha-1"))
    assert again.update(rotated).revision == rotated.revision + 1


# ---- all-or-nothing writes under injected faults -------------------------------------------

def test_failed_writes_change_nothing(backend: Backend, factory: KeyFactory) -> None:
    store = backend.open()
    key = store.create(factory.key(name="stable", tags=("prod",)))
    store.put_meta("check-value", b"old")
    store.fail_writes = True  # type: ignore[attr-defined]  # each backend's fault hook, not the port
    with pytest.raises(StoreError) as caught:
        store.create(factory.key(name="newcomer", tags=("prod",)))
    assert "injected" in str(caught.value) or "write" in str(caught.value)
    with pytest.raises(StoreError):
        store.update(lc.rotate(key, factory.sealed("v2"), factory.later, "alice"))
    with pytest.raises(StoreError):
        store.put_meta("check-value", b"new")
    _assert_unchanged(store, key)
    store.fail_writes = False  # type: ignore[attr-defined]  # each backend's fault hook, not the port
    store.create(factory.key(name="newcomer"))  # nothing was left half-reserved
    assert store.update(key).revision == 2
    if backend.persistent:
        store.close()
        again = backend.open()
        assert again.get(key.id).revision == 2 and again.count() == 2


def _assert_unchanged(store: KeyStore, key: Key) -> None:
    assert store.get(key.id) == key and store.get_by_name("stable") == key
    assert store.count() == 1 and store.count(KeyFilter(tag="prod")) == 1
    assert [k.id for k in store.list(KeyFilter()).keys] == [key.id]
    assert store.get_meta("check-value") == b"old"
    with pytest.raises(NotFound):
        store.get_by_name("newcomer")


def test_errors_and_health_never_show_sealed_bytes(backend: Backend,
                                                   factory: KeyFactory) -> None:
    store = backend.open()
    key = store.create(factory.key(name="secretive"))
    sealed_b64 = base64.b64encode(factory.sealed("v1")).decode()
    store.fail_writes = True  # type: ignore[attr-defined]  # each backend's fault hook, not the port
    with pytest.raises(StoreError) as caught:
        store.update(lc.revoke(key, factory.later, "alice"))
    for text in (str(caught.value), repr(store.describe())):
        assert sealed_b64[:16] not in text and "sealed" not in text
    assert store.describe()["backend"] == store.name == backend.kind


def test_bulk_create_is_all_or_nothing(store: KeyStore, factory: KeyFactory) -> None:
    existing = store.create(factory.key(name="taken"))
    batch = [factory.key(name=f"bulk-{n}") for n in range(5)]
    with pytest.raises(NameTaken):
        store.bulk_create([*batch, factory.key(name="taken")])
    assert store.count() == 1
    store.bulk_create(batch)
    assert walk(store, KeyFilter(name_prefix="bulk-"), 2) == sorted(k.id for k in batch)
    assert store.get(batch[0].id).revision == 1 and store.get(existing.id) == existing


# ---- record integrity ----------------------------------------------------------------------

def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _split(stored: bytes) -> tuple[dict[str, Any], bytes]:
    """A stored record's envelope (format, mac) and the exact record bytes it authenticates."""
    envelope = json.loads(stored)
    return envelope, _canonical(envelope["record"])


def _edit(raw: RawRecords, key_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Change fields of the stored record and write it back canonically, the MAC untouched."""
    envelope = json.loads(raw.read(key_id))
    change(envelope["record"])
    raw.write(key_id, _canonical(envelope))


def test_records_are_stored_with_a_mac_over_the_canonical_record(
        store: KeyStore, raw: RawRecords, factory: KeyFactory) -> None:
    key = store.create(factory.key(name="stored", tags=("pci",)))
    stored = raw.read(key.id)
    envelope, record = _split(stored)
    assert stored == _canonical(envelope), "the stored text is canonical JSON as a whole"
    assert envelope["format"] == 2 and json.loads(record) == key_to_record(key)
    assert envelope["mac"] == RECORD_MAC.tag(RECORD_CONTEXT, record).hex()


def _swap_in_sealed(other: bytes) -> Callable[[dict[str, Any]], None]:
    def change(record: dict[str, Any]) -> None:
        record["versions"][0]["sealed"] = json.loads(other)["record"]["versions"][0]["sealed"]
    return change


TAMPERING: dict[str, Callable[[dict[str, Any]], None]] = {
    "state": lambda r: r.update(state="active"),
    "tags": lambda r: r.update(tags=[]),
    "usage": lambda r: r.update(usage="wrap"),
    "description": lambda r: r.update(description="edited"),
    "version-state": lambda r: r["versions"][0].update(state="archived"),
    "revision": lambda r: r.update(revision=r["revision"] + 1),
    "audit-binding": lambda r: r.update(audit_seq=1),
}


@pytest.mark.parametrize("field", sorted(TAMPERING))
def test_an_edited_field_fails_that_key_only(store: KeyStore, raw: RawRecords,
                                             factory: KeyFactory, field: str) -> None:
    victim = store.create(factory.key(name="victim", tags=("pci",), state=KeyState.REVOKED))
    other = store.create(factory.key(name="other"))
    _edit(raw, victim.id, TAMPERING[field])
    _assert_refused(store, victim, other, "mac_mismatch")


def _assert_refused(store: KeyStore, victim: Key, other: Key, problem: str) -> None:
    """The victim is refused everywhere (get, name, update, listing), other keys are not."""
    lookups: tuple[Callable[[], Key], ...] = (
        lambda: store.get(victim.id), lambda: store.resolve("victim"),
        lambda: store.update(replace(victim, description="x")))
    for lookup in lookups:
        with pytest.raises(IntegrityError) as caught:
            lookup()
        assert victim.id in caught.value.message and caught.value.code == "integrity_error"
        assert caught.value.details["problem"] == problem
    assert store.get(other.id) == other and store.resolve("other") == other
    unreadable: list[str] = []
    assert walk(store, KeyFilter(), 1, unreadable) == [other.id]
    assert unreadable == [victim.id]
    scan = store.check_records()
    assert scan.checked == 2 and [(f.key_id, f.problem) for f in scan.faults] == [
        (victim.id, problem)]


def test_another_keys_sealed_blob_swapped_in_fails(store: KeyStore, raw: RawRecords,
                                                   factory: KeyFactory) -> None:
    victim = store.create(factory.key(name="victim"))
    other = store.create(replace(factory.key(name="other"), versions=(replace(
        factory.key().versions[0], sealed=factory.sealed("other")),)))
    _edit(raw, victim.id, _swap_in_sealed(raw.read(other.id)))
    _assert_refused(store, victim, other, "mac_mismatch")


def test_a_removed_mac_fails(store: KeyStore, raw: RawRecords, factory: KeyFactory) -> None:
    victim, other = store.create(factory.key(name="victim")), store.create(factory.key(name="other"))
    raw.write(victim.id, _split(raw.read(victim.id))[1])  # the bare record, as format 1 stored it
    _assert_refused(store, victim, other, "mac_missing")


def test_another_records_mac_copied_in_fails(store: KeyStore, raw: RawRecords,
                                             factory: KeyFactory) -> None:
    victim, other = store.create(factory.key(name="victim")), store.create(factory.key(name="other"))
    envelope = json.loads(raw.read(victim.id))
    envelope["mac"] = json.loads(raw.read(other.id))["mac"]
    raw.write(victim.id, _canonical(envelope))
    _assert_refused(store, victim, other, "mac_mismatch")


def test_a_whole_record_copied_over_another_key_fails(store: KeyStore, raw: RawRecords,
                                                      factory: KeyFactory) -> None:
    victim, other = store.create(factory.key(name="victim")), store.create(factory.key(name="other"))
    raw.write(victim.id, raw.read(other.id))  # authentic, but another key's
    _assert_refused(store, victim, other, "wrong_key")


def test_an_older_copy_put_back_is_not_served_once_a_newer_one_was(
        store: KeyStore, raw: RawRecords, factory: KeyFactory) -> None:
    """An authentic record put back after a change (a revoked key active again): its MAC is
    good, but a key's audit binding only grows, so a process that served the newer record
    refuses the older one, by id and by name, and so does a change built on it; other keys
    are served."""
    victim, other = store.create(factory.key(name="victim")), store.create(factory.key(name="other"))
    bound = store.update(replace(store.resolve(victim.id), audit_seq=7, audit_hash="a" * 64))
    old = raw.read(victim.id)
    revoked = store.update(replace(bound, state=KeyState.REVOKED, audit_seq=9, audit_hash="b" * 64))
    assert store.resolve("victim") == revoked  # served: the newest binding is 9
    newer = raw.read(victim.id)
    raw.write(victim.id, old)  # the record from before the revocation, authentic once
    for ref in (victim.id, "victim"):
        with pytest.raises(IntegrityError) as caught:
            store.resolve(ref)
        assert caught.value.details["problem"] == "older_copy"
        assert victim.id in caught.value.message and "seq 7" in caught.value.message
    assert store.resolve(other.id) == other
    # another process, which never served the revocation, changes the copy: bound to a later
    # change (10) but at the revision the revocation already took: made from an older copy
    laundered = replace(store.get(victim.id), description="laundered", audit_seq=10,
                        audit_hash="d" * 64, revision=revoked.revision)
    raw.write(victim.id, RecordCodec(RECORD_MAC).encode(laundered))
    with pytest.raises(IntegrityError, match="made from one"):
        store.resolve(victim.id)
    raw.write(victim.id, newer)  # the record as the store wrote it, back again
    later = store.update(replace(store.resolve(victim.id), audit_seq=11, audit_hash="c" * 64))
    assert store.resolve(victim.id) == later  # a genuine later change is served


def test_a_bad_record_is_refused_again_after_a_reopen(backend: Backend, raw: RawRecords,
                                                      factory: KeyFactory) -> None:
    store = backend.open()
    victim, other = store.create(factory.key(name="victim")), store.create(factory.key(name="other"))
    _edit(raw, victim.id, TAMPERING["description"])
    store.close()
    _assert_refused(backend.open(), victim, other, "mac_mismatch")


def test_a_clean_store_checks_clean(store: KeyStore, factory: KeyFactory) -> None:
    keys = _population(store, factory)
    scan = store.check_records()
    assert scan.checked == len(keys) and scan.faults == ()
    assert store.record_census() == (len(keys), 0)


def test_get_of_a_cached_key_does_not_decode_again(backend: Backend, factory: KeyFactory,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The encrypt hot path: a key already decoded (and checked) is served as it is."""
    if backend.kind == "remote":
        pytest.skip("the remote store caches nothing: every get is a vault read and a check")
    store = backend.open()
    key = store.create(factory.key(name="hot"))
    assert store.get(key.id) == key

    def no_decoding(self: RecordCodec, key_id: str, data: bytes | str) -> Key:
        raise AssertionError("decoded a key that was already decoded")

    monkeypatch.setattr(RecordCodec, "decode", no_decoding)
    assert store.get(key.id) == key and store.resolve(key.id) == key


def test_legacy_records_are_authenticated_once(store: KeyStore, raw: RawRecords,
                                               factory: KeyFactory) -> None:
    """Records written before records had a MAC: refused until the migration gives them one."""
    keys = [store.create(factory.key(name=f"old-{n}", tags=("pci",))) for n in range(3)]
    for key in keys[:2]:
        raw.write(key.id, _canonical(key_to_record(key)))  # format 1: the bare record
    assert store.record_census() == (1, 2)
    with pytest.raises(IntegrityError, match="no MAC"):
        store.get(keys[0].id)
    assert store.authenticate_legacy_records() == 2
    assert store.record_census() == (3, 0) and store.authenticate_legacy_records() == 0
    assert [store.get(k.id) for k in keys] == keys  # revisions untouched by the rewrite
    assert store.check_records().faults == ()


def test_the_migration_leaves_bad_macs_alone(store: KeyStore, raw: RawRecords,
                                             factory: KeyFactory) -> None:
    victim = store.create(factory.key(name="victim"))
    _edit(raw, victim.id, TAMPERING["description"])
    assert store.authenticate_legacy_records() == 0
    with pytest.raises(IntegrityError, match="MAC does not match"):
        store.get(victim.id)


def test_the_format_marker_is_authenticated(backend: Backend) -> None:
    store = backend.open()
    born = store.record_format()
    assert born is (RecordFormat.AUTHENTICATED if backend.kind == "memory" else None)
    store.set_record_format(RecordFormat.MIGRATING)
    assert store.record_format() is RecordFormat.MIGRATING
    store.set_record_format(RecordFormat.AUTHENTICATED)
    assert store.record_format() is RecordFormat.AUTHENTICATED
    other_master = RecordCodec(type(RECORD_MAC).derive(bytes(32)))
    blob = store.get_meta("key_record_format")
    assert blob is not None and blob.startswith(b"ferrohsm key records: format=2 "
                                                b"state=authenticated|")
    for forged in (b"ferrohsm key records: format=2 state=authenticated", b"migrating",
                   other_master.marker(RecordFormat.MIGRATING)):
        store.put_meta("key_record_format", forged)
        with pytest.raises(IntegrityError, match="format marker"):
            store.record_format()


# ---- rewriting every record (a master-key rekey: custody/rekey.py) --------------------------

def test_rewrite_records_replaces_what_the_callback_returns(store: KeyStore,
                                                            factory: KeyFactory) -> None:
    keys = [store.create(factory.key(name=f"rw-{i}")) for i in range(3)]
    codec = RecordCodec(RECORD_MAC)
    seen: list[str] = []
    applied: list[str] = []

    def rewrite(key_id: str, data: bytes) -> bytes | None:
        seen.append(key_id)
        if key_id == keys[1].id:
            return None  # left alone
        key = codec.decode(key_id, data)
        return codec.encode(replace(key, description="rewritten"))

    assert store.rewrite_records(rewrite, applied.append) == 2
    assert seen == sorted(k.id for k in keys)
    assert applied == sorted(k.id for k in keys if k.id != keys[1].id)
    assert store.get(keys[0].id).description == "rewritten"
    assert store.get(keys[1].id) == keys[1]
    assert store.get(keys[2].id).revision == keys[2].revision  # the revision does not move
    with pytest.raises(IntegrityError):  # a record the store's own check refuses is not written
        store.rewrite_records(lambda key_id, data: data.replace(b"rewritten", b"forged!!!"))
    assert store.get(keys[0].id).description == "rewritten"



def test_a_rewrite_that_bumps_the_revision_leaves_the_key_updatable(store: KeyStore,
                                                                    factory: KeyFactory) -> None:
    """A rekey binds each rewritten record to its audit intent (revision + 1): the store's own
    compare-and-swap must follow, or the key refuses every later change."""
    key = store.create(factory.key(name="rw-bump"))
    codec = RecordCodec(RECORD_MAC)
    assert store.rewrite_records(lambda key_id, data: codec.encode(
        replace(codec.decode(key_id, data), revision=key.revision + 1))) == 1
    current = store.get(key.id)
    assert current.revision == key.revision + 1
    updated = store.update(replace(current, description="after the rewrite"))
    assert updated.revision == key.revision + 2
    assert store.get(key.id).description == "after the rewrite"
