"""Key lifecycle as tables (h11 style): what each state allows, and where each move leads.

Every function here is pure: it takes a Key and ``now`` and returns a new Key, or raises a domain
error and changes nothing. Persisting the result (compare-and-swap on ``revision``) is the store's
job; generating and sealing new material is the crypto layer's.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from enum import StrEnum

from .errors import BadRequest, Conflict, Gone, InvalidTransition
from .model import Key, KeyState, KeyVersion, Origin, VersionState


class Move(StrEnum):
    """Lifecycle moves that change a key's state or versions."""

    UPDATE = "update"
    ROTATE = "rotate"
    ROLLBACK = "rollback"
    REVOKE = "revoke"
    SCHEDULE_DESTROY = "destroy"
    CANCEL_DESTROY = "cancel_destroy"
    DESTROY = "destroy_complete"
    ARCHIVE_VERSION = "archive_version"
    DESTROY_VERSION = "destroy_version"


class Use(StrEnum):
    """Cryptographic uses of key material."""

    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    SIGN = "sign"
    VERIFY = "verify"
    WRAP = "wrap"
    UNWRAP = "unwrap"


# Protect operations create new protected data and need the primary version of an active key;
# process operations read existing data and work on any non-destroyed version, so a revoked key
# never strands data that was encrypted or signed before the revocation.
PROTECT = frozenset({Use.ENCRYPT, Use.SIGN, Use.WRAP})
PROCESS = frozenset({Use.DECRYPT, Use.VERIFY, Use.UNWRAP})
USAGE_OF_USE = {Use.ENCRYPT: "encrypt", Use.DECRYPT: "encrypt", Use.SIGN: "sign",
                Use.VERIFY: "sign", Use.WRAP: "wrap", Use.UNWRAP: "wrap"}

_KEEP = None  # sentinel in TRANSITIONS: "restore previous_state"

S = KeyState
TRANSITIONS: dict[tuple[KeyState, Move], KeyState | None] = {
    (S.ACTIVE, Move.UPDATE): S.ACTIVE,
    (S.REVOKED, Move.UPDATE): S.REVOKED,
    (S.DESTROY_SCHEDULED, Move.UPDATE): S.DESTROY_SCHEDULED,
    (S.ACTIVE, Move.ROTATE): S.ACTIVE,
    (S.ACTIVE, Move.ROLLBACK): S.ACTIVE,
    (S.ACTIVE, Move.ARCHIVE_VERSION): S.ACTIVE,
    (S.REVOKED, Move.ARCHIVE_VERSION): S.REVOKED,
    (S.ACTIVE, Move.DESTROY_VERSION): S.ACTIVE,
    (S.REVOKED, Move.DESTROY_VERSION): S.REVOKED,
    (S.ACTIVE, Move.REVOKE): S.REVOKED,
    (S.ACTIVE, Move.SCHEDULE_DESTROY): S.DESTROY_SCHEDULED,
    (S.REVOKED, Move.SCHEDULE_DESTROY): S.DESTROY_SCHEDULED,
    (S.DESTROY_SCHEDULED, Move.CANCEL_DESTROY): _KEEP,
    (S.DESTROY_SCHEDULED, Move.DESTROY): S.DESTROYED,
}

# Which uses each key state permits. A destroyed key answers 410 rather than 409 (see check_use).
PERMITS: dict[KeyState, frozenset[Use]] = {
    S.ACTIVE: PROTECT | PROCESS,
    S.REVOKED: PROCESS,
    S.DESTROY_SCHEDULED: frozenset(),
    S.DESTROYED: frozenset(),
}
VERSION_PERMITS: dict[VersionState, frozenset[Use]] = {
    VersionState.ENABLED: PROTECT | PROCESS,
    VersionState.ARCHIVED: PROCESS,
    VersionState.DESTROYED: frozenset(),
}


def target_state(key: Key, move: Move) -> KeyState:
    """Where ``move`` leads from the key's state; InvalidTransition when the table has no entry."""
    if key.state is KeyState.DESTROYED:
        raise Gone(f"key {key.id} was destroyed")
    try:
        target = TRANSITIONS[(key.state, move)]
    except KeyError:
        raise InvalidTransition(f"cannot {move.value.replace('_', ' ')} a key in state "
                                f"{key.state.value}") from None
    if target is _KEEP:
        return key.previous_state or KeyState.ACTIVE
    return target


def check_key_use(key: Key, use: Use) -> None:
    """The key-level half of ``check_use`` (state and usage), for a check made before the
    version is known: before an approval is asked for, or spent on, a use that cannot run."""
    if key.state is KeyState.DESTROYED:
        raise Gone(f"key {key.id} was destroyed")
    if key.usage != USAGE_OF_USE[use]:
        raise Conflict(f"key {key.id} has usage {key.usage}; {use.value} needs usage "
                       f"{USAGE_OF_USE[use]}")
    if use not in PERMITS[key.state]:
        raise Conflict(f"key {key.id} is {key.state.value}: {use.value} is not allowed")


def check_use(key: Key, use: Use, version: int | None = None) -> KeyVersion:
    """The version ``use`` must run with, or the reason it may not run at all.

    Protect uses always take the primary version (``version`` must be None or equal it); process
    uses take the version the data names.
    """
    check_key_use(key, use)
    number = key.primary_version if version is None else version
    if use in PROTECT and number != key.primary_version:
        raise BadRequest("protect operations always use the primary version")
    chosen = key.version(number)
    if chosen.state is VersionState.DESTROYED:
        raise Gone(f"version {number} of key {key.id} was destroyed")
    if use not in VERSION_PERMITS[chosen.state]:
        raise Conflict(f"version {number} of key {key.id} is {chosen.state.value}: "
                       f"{use.value} is not allowed")
    return chosen


def new_key(*, key_id: str, name: str | None, description: str, algorithm: str, usage: str,
            tags: tuple[str, ...], sealed: bytes, now: datetime, actor: str,
            origin: Origin = Origin.GENERATED) -> Key:
    first = KeyVersion(1, VersionState.ENABLED, now, sealed, origin)
    key = Key(id=key_id, name=name, description=description, algorithm=algorithm, usage=usage,
              tags=tags, state=KeyState.ACTIVE, primary_version=1, versions=(first,),
              created_at=now, updated_at=now, created_by=actor)
    imported = " (imported)" if origin is Origin.IMPORTED else ""
    return key.with_event(now, actor, "create", f"{algorithm} {usage}{imported}")


def update_description(key: Key, description: str, now: datetime, actor: str) -> Key:
    state = target_state(key, Move.UPDATE)
    return key.with_event(now, actor, "update", "description changed",
                          description=description, state=state)


def rotate(key: Key, sealed: bytes, now: datetime, actor: str) -> Key:
    """Append a version made from ``sealed`` material and make it primary; the id never changes."""
    state = target_state(key, Move.ROTATE)
    number = len(key.versions) + 1
    added = KeyVersion(number, VersionState.ENABLED, now, sealed)
    return key.with_event(now, actor, "rotate", f"version {number} is primary", state=state,
                          versions=(*key.versions, added), primary_version=number)


def import_version(key: Key, sealed: bytes, now: datetime, actor: str) -> Key:
    """``rotate`` with imported material: the new version (origin imported) becomes primary."""
    state = target_state(key, Move.ROTATE)
    number = len(key.versions) + 1
    added = KeyVersion(number, VersionState.ENABLED, now, sealed, Origin.IMPORTED)
    return key.with_event(now, actor, "import", f"version {number} (imported) is primary",
                          state=state, versions=(*key.versions, added), primary_version=number)


def rollback(key: Key, version: int, now: datetime, actor: str) -> Key:
    state = target_state(key, Move.ROLLBACK)
    chosen = key.version(version)
    if chosen.state is VersionState.DESTROYED:  # as every other use of a destroyed version
        raise Gone(f"version {version} is destroyed; only an enabled version can become primary")
    if chosen.state is not VersionState.ENABLED:
        raise Conflict(f"version {version} is {chosen.state.value}; only an enabled version "
                       "can become primary")
    if version == key.primary_version:
        raise Conflict(f"version {version} is already primary")
    return key.with_event(now, actor, "rollback", f"version {version} is primary", state=state,
                          primary_version=version)


def revoke(key: Key, now: datetime, actor: str, reason: str = "") -> Key:
    state = target_state(key, Move.REVOKE)
    return key.with_event(now, actor, "revoke", reason, state=state)


def schedule_destroy(key: Key, now: datetime, actor: str, grace: timedelta) -> Key:
    if grace < timedelta(0):
        raise BadRequest("destroy grace period cannot be negative")
    state = target_state(key, Move.SCHEDULE_DESTROY)
    when = now + grace
    return key.with_event(now, actor, "destroy", f"destroy after {when.isoformat()}",
                          state=state, destroy_after=when, previous_state=key.state)


def cancel_destroy(key: Key, now: datetime, actor: str) -> Key:
    state = target_state(key, Move.CANCEL_DESTROY)
    if key.destroy_after is not None and now >= key.destroy_after:
        raise InvalidTransition("the destroy grace period has ended")
    return key.with_event(now, actor, "cancel_destroy", f"back to {state.value}", state=state,
                          destroy_after=None, previous_state=None)


def complete_destroy(key: Key, now: datetime, actor: str) -> Key:
    """Erase every version's material; metadata and history stay for the auditors."""
    state = target_state(key, Move.DESTROY)
    if key.destroy_after is None or now < key.destroy_after:
        raise InvalidTransition("the destroy grace period has not ended")
    purged = tuple(replace(v, state=VersionState.DESTROYED, sealed=None) for v in key.versions)
    return key.with_event(now, actor, "destroy_complete", "material erased", state=state,
                          versions=purged, destroy_after=None, previous_state=None)


def archive_version(key: Key, version: int, now: datetime, actor: str) -> Key:
    """An archived version only processes old data (decrypt/verify/unwrap); never the primary."""
    state = target_state(key, Move.ARCHIVE_VERSION)
    chosen = key.version(version)
    if chosen.state is not VersionState.ENABLED:
        raise Conflict(f"version {version} is {chosen.state.value}")
    if version == key.primary_version:
        raise Conflict("the primary version cannot be archived; rotate first")
    versions = tuple(replace(v, state=VersionState.ARCHIVED) if v.version == version else v
                     for v in key.versions)
    return key.with_event(now, actor, "archive_version", ARCHIVED_DETAIL.format(version),
                          state=state, versions=versions)


ARCHIVED_DETAIL = "version {} archived"  # the history entry archived_at() looks for


def archived_at(key: Key, version: int) -> datetime | None:
    """When ``version`` was last archived, from the key's history (None: not known)."""
    detail = ARCHIVED_DETAIL.format(version)
    return next((h.at for h in reversed(key.history)
                 if h.action == "archive_version" and h.detail == detail), None)


def destroy_version(key: Key, version: int, now: datetime, actor: str) -> Key:
    """Erase one version's material at once; its metadata and the key's history stay. Never the
    primary (rotate or roll back first); a key scheduled for destruction loses all of them soon
    anyway, so it is refused (cancel the destruction first)."""
    state = target_state(key, Move.DESTROY_VERSION)
    chosen = key.version(version)
    if chosen.state is VersionState.DESTROYED:
        raise Gone(f"version {version} of key {key.id} was already destroyed")
    if version == key.primary_version:
        raise Conflict("the primary version cannot be destroyed; rotate or roll back first")
    versions = tuple(replace(v, state=VersionState.DESTROYED, sealed=None)
                     if v.version == version else v for v in key.versions)
    return key.with_event(now, actor, "destroy_version", f"version {version} material erased",
                          state=state, versions=versions)
