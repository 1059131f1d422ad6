"""The lifecycle tables, walked exhaustively: every (state, move) and (state, use) pair."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.errors import BadRequest, Conflict, Gone, InvalidTransition
from ferrohsm.domain.model import Key, KeyState, NoSuchVersion, VersionState

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=2)


def make_key(state: KeyState = KeyState.ACTIVE, usage: str = "encrypt", versions: int = 2) -> Key:
    key = lc.new_key(key_id=str(uuid.uuid4()), name=None, description="", algorithm="aes-256-gcm",
                     usage=usage, tags=(), sealed=b"s1", now=NOW, actor="alice")
    for n in range(2, versions + 1):
        key = lc.rotate(key, f"s{n}".encode(), NOW, "alice")
    if state is KeyState.REVOKED:
        key = lc.revoke(key, NOW, "alice")
    elif state is KeyState.DESTROY_SCHEDULED:
        key = lc.schedule_destroy(key, NOW, "alice", timedelta(hours=24))
    elif state is KeyState.DESTROYED:
        key = lc.complete_destroy(lc.schedule_destroy(key, NOW, "alice", timedelta(0)), NOW, "a")
    assert key.state is state
    return key


def apply(move: lc.Move, key: Key) -> Key:
    """Run ``move`` with arguments that are valid apart from the state itself."""
    if move is lc.Move.UPDATE:
        return lc.update_description(key, "new", LATER, "bob")
    if move is lc.Move.ROTATE:
        return lc.rotate(key, b"new", LATER, "bob")
    if move is lc.Move.ROLLBACK:
        return lc.rollback(key, 1, LATER, "bob")
    if move is lc.Move.REVOKE:
        return lc.revoke(key, LATER, "bob", "compromised")
    if move is lc.Move.SCHEDULE_DESTROY:
        return lc.schedule_destroy(key, NOW, "bob", timedelta(hours=1))
    if move is lc.Move.CANCEL_DESTROY:
        return lc.cancel_destroy(key, NOW + timedelta(minutes=1), "bob")
    if move is lc.Move.DESTROY:
        return lc.complete_destroy(key, LATER, "bob")
    if move is lc.Move.ARCHIVE_VERSION:
        return lc.archive_version(key, 1, LATER, "bob")
    if move is lc.Move.DESTROY_VERSION:  # version 1: make_key's version 2 is primary
        return lc.destroy_version(key, 1, LATER, "bob")
    raise AssertionError(move)


@pytest.mark.parametrize("state,move", list(itertools.product(KeyState, lc.Move)))
def test_every_state_move_pair(state: KeyState, move: lc.Move) -> None:
    key = make_key(state)
    allowed = (state, move) in lc.TRANSITIONS
    if allowed:
        after = apply(move, key)
        expected = lc.TRANSITIONS[(state, move)] or key.previous_state
        assert after.state is expected
        assert after.id == key.id
        assert after.history[:len(key.history)] == key.history  # append-only
        assert len(after.history) == len(key.history) + 1
        assert after.history[-1].actor == "bob"
    else:
        with pytest.raises(Gone if state is KeyState.DESTROYED else InvalidTransition):
            apply(move, key)


@pytest.mark.parametrize("state,use", list(itertools.product(KeyState, lc.Use)))
def test_every_state_use_pair(state: KeyState, use: lc.Use) -> None:
    key = replace(make_key(state), usage=lc.USAGE_OF_USE[use])
    if state is KeyState.DESTROYED:
        with pytest.raises(Gone):
            lc.check_use(key, use)
    elif use in lc.PERMITS[state]:
        assert lc.check_use(key, use).version == key.primary_version
    else:
        with pytest.raises(Conflict):
            lc.check_use(key, use)


@pytest.mark.parametrize("vstate,use", list(itertools.product(VersionState, lc.Use)))
def test_every_version_state_use_pair(vstate: VersionState, use: lc.Use) -> None:
    key = replace(make_key(), usage=lc.USAGE_OF_USE[use])
    v1 = replace(key.versions[0], state=vstate, sealed=None if vstate is VersionState.DESTROYED
                 else b"s1")
    key = replace(key, versions=(v1, *key.versions[1:]))
    if use in lc.PROTECT:
        with pytest.raises(BadRequest):  # protect ops never pick an old version
            lc.check_use(key, use, version=1)
        return
    if vstate is VersionState.DESTROYED:
        with pytest.raises(Gone):
            lc.check_use(key, use, version=1)
    elif use in lc.VERSION_PERMITS[vstate]:
        assert lc.check_use(key, use, version=1).version == 1
    else:
        with pytest.raises(Conflict):
            lc.check_use(key, use, version=1)


def test_wrong_usage_is_conflict() -> None:
    with pytest.raises(Conflict):
        lc.check_use(make_key(usage="encrypt"), lc.Use.WRAP)


def test_unknown_version_is_a_conflict() -> None:
    """A version number the key never had: 409 (the API layer keeps decrypt's one opaque 400)."""
    with pytest.raises(NoSuchVersion, match="no version 9"):
        lc.check_use(make_key(), lc.Use.DECRYPT, version=9)


def test_rotation_keeps_id_and_appends() -> None:
    key = make_key(versions=1)
    rotated = lc.rotate(key, b"s2", LATER, "bob")
    assert rotated.id == key.id and rotated.primary_version == 2
    assert [v.version for v in rotated.versions] == [1, 2]
    assert rotated.versions[0] == key.versions[0]


def test_rollback_rules() -> None:
    key = make_key(versions=3)
    assert lc.rollback(key, 2, LATER, "bob").primary_version == 2
    with pytest.raises(Conflict):
        lc.rollback(key, 3, LATER, "bob")  # already primary
    archived = lc.archive_version(key, 1, LATER, "bob")
    with pytest.raises(Conflict):
        lc.rollback(archived, 1, LATER, "bob")
    with pytest.raises(NoSuchVersion):
        lc.rollback(key, 7, LATER, "bob")
    destroyed = lc.destroy_version(key, 1, LATER, "bob")
    with pytest.raises(Gone):  # 410, as every other use of a destroyed version
        lc.rollback(destroyed, 1, LATER, "bob")


def test_cancel_destroy_restores_previous_state() -> None:
    revoked = make_key(KeyState.REVOKED)
    scheduled = lc.schedule_destroy(revoked, NOW, "bob", timedelta(hours=24))
    assert lc.cancel_destroy(scheduled, NOW, "bob").state is KeyState.REVOKED
    with pytest.raises(InvalidTransition):
        lc.cancel_destroy(scheduled, NOW + timedelta(hours=25), "bob")


def test_destroy_waits_for_grace_and_erases_material() -> None:
    scheduled = lc.schedule_destroy(make_key(), NOW, "bob", timedelta(hours=24))
    with pytest.raises(InvalidTransition):
        lc.complete_destroy(scheduled, NOW + timedelta(hours=23), "bob")
    done = lc.complete_destroy(scheduled, NOW + timedelta(hours=24), "bob")
    assert all(v.sealed is None and v.state is VersionState.DESTROYED for v in done.versions)
    assert [v.created_at for v in done.versions] == [v.created_at for v in scheduled.versions]


def test_primary_cannot_be_archived() -> None:
    with pytest.raises(Conflict):
        lc.archive_version(make_key(), 2, LATER, "bob")


def test_negative_grace_refused() -> None:
    with pytest.raises(BadRequest):
        lc.schedule_destroy(make_key(), NOW, "bob", timedelta(hours=-1))
