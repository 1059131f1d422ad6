"""Record first: how a change of a key is tied to its audit records. Pure.

Every change of a key takes three steps (service/changes.py): an INTENT audit record, made
durable first; the store write, compare-and-swap, of a record bound to that intent
(``Key.audit_seq`` and ``Key.audit_hash`` name the intent record); then the SUCCESS record, or
ROLLED_BACK when the write did not happen. Both settlements name the intent's seq
(``intent_seq``).

The intent says what the stored record will be, never what secrets it holds:

* ``intent_digest``: SHA-256 of the canonical bytes of the record as the store will hold it,
  its binding left out (``record_digest``). Sealed blobs go into the hash; nothing unsealed
  exists here.
* ``target_revision``: the revision the store will give it.
* ``from_seq``: the binding of the record the change was computed from (0 for a creation, or
  for a record written before bindings existed). A change that builds on an earlier one shows,
  in the log alone, that the earlier one was applied.

So at start-up (integrity/reconcile.py) the store alone tells whether an unsettled intent was
applied, and a stored record that no confirmed change of its key explains is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .model import Key, key_to_record

INTENT = "intent"
ROLLED_BACK = "rolled_back"
SUCCESS = "success"

# Detail names.
INTENT_SEQ = "intent_seq"  # on a success / rolled_back record: the intent it settles
DIGEST = "intent_digest"
TARGET_REVISION = "target_revision"
FROM_SEQ = "from_seq"

# Start-up binding of a record that has none yet (written before bindings existed), or whose
# state an operator accepted (``--accept-unrecorded``); it takes the same three steps.
BIND_ACTION = "store.bound"

# The actions whose success records changed a key before intents existed: the start-up binding of
# an old data directory looks for the latest one of each key.
LEGACY_CHANGE_ACTIONS = frozenset({
    "key.create", "key.update", "key.rotate", "key.rollback", "key.revoke", "key.destroy",
    "key.cancel_destroy", "key.destroy_complete", "scheduler.rotate", "scheduler.archive"})


def planned(key: Key, revision: int) -> Key:
    """``key`` as the store will hold it at ``revision``, not yet bound to an intent."""
    return replace(key, revision=revision, audit_seq=0, audit_hash="")


def record_digest(key: Key) -> str:
    """Hex SHA-256 of the canonical JSON of ``key``'s record with its binding left out."""
    record = key_to_record(key)
    record["audit_seq"], record["audit_hash"] = 0, ""  # as replace() would, without validation
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def intent_details(target: Key, from_seq: int) -> dict[str, Any]:
    """The details of the intent record of writing ``target`` (see ``planned``)."""
    return {DIGEST: record_digest(target), TARGET_REVISION: target.revision, FROM_SEQ: from_seq}


def bind(key: Key, seq: int, digest: str) -> Key:
    """``key`` bound to the audit record ``seq`` whose hash is ``digest``."""
    return replace(key, audit_seq=seq, audit_hash=digest)


def is_bound_to(key: Key, seq: int, digest: str) -> bool:
    return key.audit_seq == seq and key.audit_hash == digest


# Changes that start a key's line of changes over: an operator's --accept-unrecorded binding,
# and a restore from a backup archive (in a new log, by design).
STARTS_OVER = frozenset({BIND_ACTION, "key.restore"})


def forks(line: Mapping[int, tuple[int, str]]) -> list[tuple[int, int, int, bool]]:
    """A key's confirmed changes (intent seq -> what it built on, its action) form one line in
    the order of their intents: each builds on the one before (a change that lost a race is
    rolled back, never confirmed). One built on an OLDER change was made to an older copy of the
    record put back after a later change. Each such change: (its seq, what it built on, the
    change before it, whether a later change started the line over and so accepted it)."""
    found: list[tuple[int, int, int, bool]] = []
    previous = 0
    for seq in sorted(line):
        from_seq, action = line[seq]
        if action in STARTS_OVER:
            found = [(f, b, p, True) for f, b, p, _ in found]
        elif previous and from_seq < previous:
            found.append((seq, from_seq, previous, False))
        previous = seq
    return found
