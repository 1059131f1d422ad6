"""A key version's AES-GCM encryptions are bounded across processes and restarts
(engine/gcmbudget.py): random 96-bit nonces are safe for 2**32 encryptions per key (NIST SP
800-38D), so every process claims blocks of the count in the key record before (or, within its
grace, just after) it spends them, warns at a quarter and refuses at the bound until the key is
rotated. Here with small bounds, over real stores and a real audit sink."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace

import pytest
from servicekit import RecordingAudit

from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain.errors import Conflict, Recorded, Unavailable
from ferrohsm.domain.model import (
    GCM_LIMIT,
    Principal,
    RequestContext,
    Role,
    key_from_record,
    key_to_record,
    key_view,
)
from ferrohsm.engine.gcmbudget import Limits
from ferrohsm.engine.keycache import MaterialCache
from ferrohsm.engine.keyengine import GCM_WARN_AT, KeyEngine
from ferrohsm.service import KeyService
from ferrohsm.service.keys import RESERVE_ACTION
from ferrohsm.store.keystore import KeyStore
from ferrohsm.store.memory import MemoryStore

ADMIN = RequestContext(Principal("alice", Role.ADMINISTRATOR), request_id="r-admin")
SERVICE = RequestContext(Principal("svc", Role.SERVICE), request_id="r-service")
SMALL = Limits(limit=8, warn_at=5, grace=4, first_block=2, max_block=4, no_grace_within=2)


def node(store: KeyStore, audit: RecordingAudit, limits: Limits = SMALL,
         cache_entries: int = 16) -> KeyService:
    """One process's service over a shared store: its own engine, so its own count."""
    engine = KeyEngine(Sealer(bytes(range(32))), MaterialCache(cache_entries, 60.0))
    engine.budget.limits = limits
    return KeyService(store, engine, audit)


def reserved(service: KeyService, name: str) -> int:
    return service.store.get_by_name(name).versions[0].encryptions_reserved


def test_the_shipped_bounds_are_nists() -> None:
    assert (GCM_LIMIT, GCM_WARN_AT) == (2**32, 2**30)
    assert Limits().limit == GCM_LIMIT and Limits().grace < Limits().no_grace_within


@pytest.mark.parametrize("cache_entries", [16, 0])
def test_a_version_warns_once_is_refused_at_the_bound_and_a_rotation_frees_the_key(
        caplog: pytest.LogCaptureFixture, cache_entries: int) -> None:
    """Also with no material cache: the count is the key record's, not the cached key's."""
    audit = RecordingAudit()
    service = node(MemoryStore(RecordMac.derive(bytes(32))), audit, cache_entries=cache_entries)
    key = service.create_key(ADMIN, algorithm="aes-256-gcm", usage="encrypt", name="busy")
    with caplog.at_level(logging.WARNING, logger="ferrohsm.keys"):
        tokens = [service.encrypt(SERVICE, "busy", b"x")["ciphertext"] for _ in range(6)]
        tokens += [service.data_key(SERVICE, "busy")["ciphertext"] for _ in range(2)]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and f"key {key.id} version 1 has 8 AES-GCM" in warnings[0]
    with pytest.raises(Conflict, match="has made the 8 AES-GCM encryptions") as refused:
        service.encrypt(SERVICE, "busy", b"x")
    assert isinstance(refused.value, Recorded) and refused.value.status == 409
    assert (audit.events[-1].action, audit.events[-1].outcome) == ("crypto.encrypt", "error")
    with pytest.raises(Conflict):  # a data key is an encryption too
        service.data_key(SERVICE, "busy")
    assert reserved(service, "busy") == 8
    claims = [e for e in audit.events if e.action == RESERVE_ACTION and e.outcome == "success"]
    assert [(e.details["encryptions_reserved"], e.details["encryptions_reserved_total"])
            for e in claims] == [(4, 4), (4, 8)]
    assert {e.actor for e in claims} == {"system"} and all(
        e.details["reserved_version"] == 1 for e in claims)
    history = [h.action for h in service.store.get_by_name("busy").history]
    assert RESERVE_ACTION not in history  # nobody changed what the key is
    assert service.decrypt(SERVICE, "busy", tokens[0])["plaintext"] == b"x"  # still opens
    service.rotate(ADMIN, "busy")
    fresh = service.encrypt(SERVICE, "busy", b"y")
    assert fresh["key_version"] == 2
    assert service.decrypt(SERVICE, "busy", fresh["ciphertext"])["plaintext"] == b"y"


def test_the_count_survives_a_restart_and_is_shared_by_processes() -> None:
    """What the old per-process count could not do: a new process (a restart, another node)
    starts from the key record, and two processes together stay within the bound."""
    audit, store = RecordingAudit(), MemoryStore(RecordMac.derive(bytes(32)))
    first = node(store, audit)
    first.create_key(ADMIN, algorithm="aes-256-gcm", usage="encrypt", name="shared")
    a, b = first, node(store, audit)
    made = {"a": 0, "b": 0}
    for _ in range(10):
        for name, service in (("a", a), ("b", b)):
            try:
                service.encrypt(SERVICE, "shared", b"m")
                made[name] += 1
            except Conflict:
                pass
    assert made["a"] + made["b"] == 8 and min(made.values()) > 0
    assert reserved(a, "shared") == 8
    restarted = node(store, audit)
    with pytest.raises(Conflict, match="8 AES-GCM"):
        restarted.encrypt(SERVICE, "shared", b"m")
    on_loop = node(store, audit)  # the event loop hears the same 409 at once, not a 503
    with pytest.raises(Conflict, match="8 AES-GCM"):
        on_loop.encrypt(SERVICE._replace(tickets=[]), "shared", b"m")
    intents = [e for e in audit.events if e.action == RESERVE_ACTION and e.outcome == "intent"]
    assert sum(int(str(e.details["encryptions_reserved"])) for e in intents) == 8  # before applied


def test_from_the_event_loop_a_renewal_runs_on_the_reserving_thread() -> None:
    """The loop (a context with a ticket list) never runs a reservation itself: it encrypts
    within its grace, the reserving thread claims the block, and while one is late the loop's
    request is a 503 to retry, not a wait."""
    audit, store = RecordingAudit(), MemoryStore(RecordMac.derive(bytes(32)))
    service = node(store, audit, Limits(limit=1000, warn_at=900, grace=4, first_block=2,
                                        max_block=4, no_grace_within=2))
    service.create_key(ADMIN, algorithm="aes-256-gcm", usage="encrypt", name="loop")
    gate, inside, real = threading.Event(), [], service.reserve_encryptions

    def held(key_id: str, version: int, wanted: int) -> tuple[int, int]:
        inside.append(threading.current_thread().name)
        gate.wait(10)
        return real(key_id, version, wanted)
    service.engine.budget.reserver = held
    loop = SERVICE._replace(tickets=[])
    for _ in range(4):  # the grace: the second asks for a block, the thread waits at the gate
        service.encrypt(loop._replace(tickets=[]), "loop", b"m")
    with pytest.raises(Unavailable, match="being renewed"):
        service.encrypt(loop._replace(tickets=[]), "loop", b"m")
    for _ in range(500):
        if inside:
            break
        time.sleep(0.01)
    assert inside == ["ferrohsm-gcm-reserver"]
    gate.set()
    service.engine.budget.close()
    # what was used when the thread began (2 to 4: it asked at the second), and a block of 2
    assert 4 <= reserved(service, "loop") <= 6
    service.encrypt(loop._replace(tickets=[]), "loop", b"m")


def test_threads_together_never_pass_the_bound() -> None:
    audit, store = RecordingAudit(), MemoryStore(RecordMac.derive(bytes(32)))
    service = node(store, audit, Limits(limit=300, warn_at=300, grace=8, first_block=4,
                                        max_block=16, no_grace_within=8))
    service.create_key(ADMIN, algorithm="aes-256-gcm", usage="encrypt", name="threads")
    made, lock = [0], threading.Lock()

    def work() -> None:
        for _ in range(60):
            try:
                service.encrypt(SERVICE, "threads", b"m")
            except (Conflict, Unavailable):
                continue
            with lock:
                made[0] += 1
    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert made[0] == 300 and reserved(service, "threads") == 300


def test_a_revoked_key_reserves_nothing_and_a_failed_reservation_is_a_503() -> None:
    audit, store = RecordingAudit(), MemoryStore(RecordMac.derive(bytes(32)))
    service = node(store, audit)
    gone = service.create_key(ADMIN, algorithm="aes-256-gcm", usage="encrypt", name="gone")
    service.revoke(ADMIN, "gone")
    with pytest.raises(Conflict, match="revoked"):
        service.reserve_encryptions(gone.id, 1, 2)
    kept = service.create_key(ADMIN, algorithm="aes-256-gcm", usage="encrypt", name="kept")
    audit.ok = False  # the log refuses records: no reservation, and no encryption either
    with pytest.raises(Unavailable):
        service.reserve_encryptions(kept.id, 1, 2)
    assert reserved(service, "gone") == reserved(service, "kept") == 0


def test_the_stored_record_keeps_its_bytes_until_a_reservation_and_is_checked() -> None:
    audit, store = RecordingAudit(), MemoryStore(RecordMac.derive(bytes(32)))
    service = node(store, audit)
    key = service.create_key(ADMIN, algorithm="aes-256-gcm", usage="encrypt", name="rec")
    record = key_to_record(key)
    assert "encryptions_reserved" not in json.dumps(record)  # older records: the same bytes
    assert key_view(key)["versions"][0]["encryptions_reserved"] == 0
    grown = replace(key, versions=(replace(key.versions[0], encryptions_reserved=12),))
    stored = key_to_record(grown)
    assert stored["versions"][0]["encryptions_reserved"] == 12
    assert key_from_record(stored) == grown
    for bad in (-1, True, 1.5, GCM_LIMIT + 1, "12"):
        stored["versions"][0]["encryptions_reserved"] = bad
        with pytest.raises(ValueError, match="encryptions_reserved"):
            key_from_record(stored)
    signing = service.create_key(ADMIN, algorithm="ec-p256", usage="sign", name="sig")
    assert "encryptions_reserved" not in key_view(signing)["versions"][0]


def test_an_engine_alone_counts_in_its_process() -> None:
    """Without a service (a tool, a test) there is no record to reserve in: the bound is
    counted in the process, from what the record says was reserved."""
    audit, store = RecordingAudit(), MemoryStore(RecordMac.derive(bytes(32)))
    service = node(store, audit)
    key = service.create_key(ADMIN, algorithm="aes-256-gcm", usage="encrypt", name="alone")
    engine = KeyEngine(Sealer(bytes(range(32))), MaterialCache(16, 60.0))
    engine.budget.limits = SMALL
    used = replace(key, versions=(replace(key.versions[0], encryptions_reserved=6),))
    engine.encrypt(used, b"m", None)
    engine.encrypt(used, b"m", None)
    with pytest.raises(Conflict):
        engine.encrypt(used, b"m", None)


def test_keys_show_has_the_reserved_count_for_keys_that_have_one() -> None:
    from ferrohsm.cli.output import key_detail, reserved_text
    assert [reserved_text(n) for n in (0, 98_321, 2**30, 2**32, None)] == [
        "0 (0% of 2^32)", "98,321 (0.0023% of 2^32)", "1,073,741,824 (25% of 2^32)",
        "4,294,967,296 (100% of 2^32)", "-"]
    version = {"version": 1, "state": "enabled", "created_at": "2026-12-07T00:00:00Z",
               "origin": "generated"}
    gcm = {"id": "k", "state": "active", "primary_version": 1,
           "versions": [{**version, "encryptions_reserved": 98_321}]}
    lines = key_detail(gcm, False).splitlines()
    assert lines[-2].endswith("ENCRYPTIONS RESERVED") and lines[-1].endswith("98,321 (0.0023% of 2^32)")
    signing = {**gcm, "versions": [version]}
    assert "ENCRYPTIONS" not in key_detail(signing, False)


def test_a_reservation_refused_for_the_keys_state_does_not_end_the_version(
        caplog: pytest.LogCaptureFixture) -> None:
    """Another node scheduled the key's destruction while this process renewed its block: the
    renewal fails and is tried again later; only a spent budget is final (a cancelled
    destruction makes the key usable again)."""
    audit, store = RecordingAudit(), MemoryStore(RecordMac.derive(bytes(32)))
    service, other = node(store, audit), node(store, audit)
    key = service.create_key(ADMIN, algorithm="aes-256-gcm", usage="encrypt", name="later")
    service.encrypt(SERVICE, "later", b"m")
    slot = service.engine.budget._slots[(key.id, 1)]
    other.schedule_destroy(ADMIN, "later")
    with caplog.at_level(logging.WARNING, logger="ferrohsm.keys"):
        service.engine.budget.renew(slot)
    assert not slot.final and "could not reserve" in caplog.text and "destroy" in caplog.text
    other.cancel_destroy(ADMIN, "later")
    slot.failed_at = 0.0  # as after RETRY_AFTER
    for _ in range(3):
        service.encrypt(SERVICE, "later", b"m")
    assert reserved(service, "later") == 8  # renewed twice: the used two and a block, then 4


def test_a_late_renewal_says_when_to_come_back_and_reservations_are_bookkeeping() -> None:
    """The 503 of a renewal the event loop may not wait for carries Retry-After, natively and
    on the Vault surface; ``audit report`` does not count reservations as anybody's activity
    (a system task at any hour)."""
    from ferrohsm.api.http import error_response
    from ferrohsm.api.transit.envelope import error as vault_error
    from ferrohsm.audit.report import BOOKKEEPING
    from ferrohsm.engine.gcmbudget import Renewing
    late = Renewing("being renewed")
    for response in (error_response(late, "r"), vault_error(late)):
        assert response.status == 503 and ("Retry-After", "1") in response.headers
    assert RESERVE_ACTION in BOOKKEEPING
