"""A key version's AES-GCM encryptions are bounded (engine/keyengine.py): random 96-bit nonces
are safe for 2**32 encryptions per key (NIST SP 800-38D), so the engine warns at a quarter of
that and refuses at the bound until the key is rotated. Here with small thresholds."""

from __future__ import annotations

import logging
import os

import pytest
from servicekit import RecordingAudit

from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain.errors import Conflict, Recorded
from ferrohsm.domain.model import Principal, RequestContext, Role
from ferrohsm.engine.keycache import MaterialCache
from ferrohsm.engine.keyengine import GCM_LIMIT, GCM_WARN_AT, KeyEngine
from ferrohsm.service import KeyService
from ferrohsm.store.memory import MemoryStore

ADMIN = RequestContext(Principal("alice", Role.ADMINISTRATOR), request_id="r-admin")
SERVICE = RequestContext(Principal("svc", Role.SERVICE), request_id="r-service")


def test_the_shipped_bounds_are_nists() -> None:
    assert (GCM_LIMIT, GCM_WARN_AT) == (2**32, 2**30)


@pytest.mark.parametrize("cache_entries", [16, 0])
def test_a_version_warns_once_is_refused_at_the_bound_and_a_rotation_frees_the_key(
        caplog: pytest.LogCaptureFixture, cache_entries: int) -> None:
    """Also with no material cache: the count is the engine's, not the cached key's (whose
    entry expires, and with it, in a first version, the count)."""
    audit = RecordingAudit()
    engine = KeyEngine(Sealer(os.urandom(32)), MaterialCache(cache_entries, 60.0))
    engine.warn_at, engine.refuse_at = 5, 8
    service = KeyService(MemoryStore(RecordMac.derive(bytes(32))), engine, audit)
    key = service.create_key(ADMIN, algorithm="aes-256-gcm", usage="encrypt", name="busy")
    with caplog.at_level(logging.WARNING, logger="ferrohsm.keys"):
        tokens = [service.encrypt(SERVICE, "busy", b"x")["ciphertext"] for _ in range(6)]
        tokens += [service.data_key(SERVICE, "busy")["ciphertext"] for _ in range(2)]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and f"key {key.id} version 1 has made 5" in warnings[0]
    with pytest.raises(Conflict, match="has made 8 AES-GCM encryptions") as refused:
        service.encrypt(SERVICE, "busy", b"x")
    assert isinstance(refused.value, Recorded) and refused.value.status == 409
    assert (audit.events[-1].action, audit.events[-1].outcome) == ("crypto.encrypt", "error")
    with pytest.raises(Conflict):  # a data key is an encryption too
        service.data_key(SERVICE, "busy")
    assert service.decrypt(SERVICE, "busy", tokens[0])["plaintext"] == b"x"  # still opens
    service.rotate(ADMIN, "busy")
    fresh = service.encrypt(SERVICE, "busy", b"y")
    assert fresh["key_version"] == 2
    assert service.decrypt(SERVICE, "busy", fresh["ciphertext"])["plaintext"] == b"y"
