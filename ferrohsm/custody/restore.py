"""Restoring an archive into an EMPTY store: verify everything first, then write record first.

What the restored server's audit log is: a NEW log (the target's audit key may differ), whose
first record, ``system.restored``, names the archive (its SHA-256) and the source log's head
(seq, hash, newest signed checkpoint): the predecessor log, which stays the evidence of
everything before the backup. Each key then enters the store as a ``key.restore`` change, record
first like every change (domain/binding.py): an intent naming the digest of the record to be
written and the key's original binding (``original_seq``/``original_hash`` in the source log),
the store write of the record bound to that intent, then its success. So the restored store
passes the unchanged start-up checks: every record is bound to the latest confirmed change of its
key in the new log (integrity/reconcile.py), and ``key.restore`` counts as a creation for the
store-loss check (integrity/logscan.py). Nothing is relaxed for data that was not restored.
The archive's token revocations still in force are recorded in the new log (``token.revoke``,
naming the archive), then written to the target's revoked-token list: the restored server keeps
refusing tokens revoked before the backup, and rebuilds that list from its log like its own.
Tokens revoked in the source after the backup are not known here: restore says so.

Crash safety: the meta blob ``restore_state`` is set to ``in-progress`` before the first write
and to ``done`` after the last record; while it says ``in-progress`` the server refuses to start
(``refuse_interrupted``) and ``ferrohsm restore`` accepts the target again: it deletes what the
interrupted run wrote (the keys and approvals; its audit log is moved aside, not deleted) and
starts over. No half-restored store is ever served.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ..audit.chain import AuditEvent, DetailValue
from ..audit.sinkbase import AuditSink
from ..crypto.archive import BackupKey
from ..crypto.recordmac import RecordMac
from ..crypto.seal import Sealer
from ..domain import binding
from ..domain.approval import Approval, from_record
from ..domain.errors import FerroError
from ..domain.model import PLAIN_TEXT_RE, Key
from ..store.approvalstore import ApprovalStore
from ..store.keystore import KeyStore
from ..store.records import RecordCodec
from . import archive, snapshot
from .archive import ArchiveRefused
from .snapshot import CHECK_VALUE, SYSTEM, contents_mac

RESTORE_META = "restore_state"
IN_PROGRESS = b"in-progress"
DONE = b"done"
RESTORE_ACTION = "key.restore"
BATCH = 500


class TargetNotEmpty(FerroError):
    code, status = "target_not_empty", 409


@dataclass(frozen=True)
class Verified:
    """An archive whose every byte, record MAC and check value passed."""

    header: dict[str, Any]
    keys: tuple[Key, ...]
    meta: dict[str, bytes]
    approvals: tuple[Approval, ...]
    audit_head: dict[str, Any]
    check_value: bytes
    revoked_tokens: dict[str, float] = field(default_factory=dict)  # none in older archives


def verify_under(data: bytes, master_key: bytes, key: BackupKey) -> Verified:
    """``verify`` with the sealer and record codec of ``master_key`` (the target's), then the
    MAC that binds the whole contents to the master key (snapshot.contents_mac)."""
    header = archive.read_header(data)[0]
    named = header.get("backup_key")
    if (isinstance(named, dict) and named.get("kind") == key.kind == "derived"
            and named.get("id") != key.key_id and _check_value_opens(header, master_key)):
        raise ArchiveRefused(  # not "wrong master key": the header's own check value says so
            "the backup archive's header was altered: its master-key check value opens under "
            f"this master key, whose backup key is {key.key_id}, but it names backup key "
            f"{str(named.get('id'))[:40]}")
    opened = archive.read(data, key)
    got = verify(opened, Sealer(master_key), RecordCodec(RecordMac.derive(master_key)))
    body = opened.body
    stated = body.get("binding")
    if not isinstance(stated, str) or not hmac.compare_digest(
            stated, contents_mac(master_key, got.header, body)):
        raise ArchiveRefused("the archive's record set fails its check under the master key "
                             "(records edited, dropped, reordered or mixed in from another "
                             "archive)")
    return got


def _check_value_opens(header: dict[str, Any], master_key: bytes) -> bool:
    try:
        Sealer(master_key).verify_check_value(base64.b64decode(header["check_value"],
                                                               validate=True))
    except (FerroError, KeyError, TypeError, ValueError, binascii.Error):
        return False
    return True


def verify(got: archive.Archive, sealer: Sealer, codec: RecordCodec) -> Verified:
    """Everything restore will write, checked before anything is: ArchiveRefused otherwise."""
    header, body = got.header, got.body
    try:
        check = base64.b64decode(header["check_value"], validate=True)
        sealer.verify_check_value(check)
    except FerroError:
        raise ArchiveRefused("wrong master key: the archive's keys are sealed under a master key "
                             "other than this one (its check value does not open)") from None
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise ArchiveRefused("the backup archive has no valid master-key check value") from None
    try:
        keys = tuple(_decode_record(codec, r) for r in body["keys"])
        meta = {str(n): base64.b64decode(v, validate=True) for n, v in body["meta"].items()}
        approvals = tuple(from_record(r) for r in body["approvals"])
        head = dict(body["audit_head"])
    except FerroError as exc:
        raise ArchiveRefused(f"a key record in the archive fails its check: {exc.message}") \
            from None
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
        raise ArchiveRefused("the backup archive's body is not valid") from None
    if len(keys) != header.get("key_count") or len({k.id for k in keys}) != len(keys):
        raise ArchiveRefused("the backup archive's key records do not match its header")
    return Verified(header, keys, meta, approvals, head, check, _revoked(header, body))


def _revoked(header: dict[str, Any], body: dict[str, Any]) -> dict[str, float]:
    """The archive's token revocations (jti -> until): none in an archive written before they
    were carried (neither the member nor its count), else exactly as many as the header says."""
    if snapshot.REVOKED not in body and snapshot.REVOKED_COUNT not in header:
        return {}
    listed, count = body.get(snapshot.REVOKED), header.get(snapshot.REVOKED_COUNT)
    if not isinstance(listed, dict) or not all(
            _valid_jti(jti) and isinstance(until, (int, float)) and not isinstance(until, bool)
            and not math.isnan(until) for jti, until in listed.items()):
        raise ArchiveRefused("the backup archive's token revocations are not valid")
    if type(count) is not int or count != len(listed):
        raise ArchiveRefused("the backup archive's token revocations do not match its header")
    return {jti: float(until) for jti, until in listed.items()}


def revocations_as_taken(header: dict[str, Any]) -> str:
    """What a restore cannot bring back, said with it (CLI output): the archive carries the
    token revocations in force when it was taken, not those made in the source since."""
    if "revoked_token_count" not in header:  # an archive of an older build
        return ("This archive (from an older FerroHSM) carries NO token revocations: every token "
                "revoked in the source is accepted here until it expires. Revoke them again "
                "(ferrohsm token revoke), or rotate the JWT secret (FERROHSM_JWT_HS256_SECRET)")
    return (f"Tokens revoked in the source after the archive was taken ({taken_at(header)}) are "
            "NOT revoked here: revoke them again (ferrohsm token revoke), or rotate the JWT "
            "secret (FERROHSM_JWT_HS256_SECRET) if unsure which were")


def _valid_jti(jti: object) -> bool:
    """auth.denylist.valid_jti (custody does not import auth): 1-128 plain-text characters."""
    return isinstance(jti, str) and 0 < len(jti) <= 128 and PLAIN_TEXT_RE.fullmatch(jti) is not None


def taken_at(header: dict[str, Any]) -> str:
    """When the archive was taken (its header's ``created_at``)."""
    created = header.get("created_at")
    return created if isinstance(created, str) and created else "an unknown time"


def state_as_taken(header: dict[str, Any]) -> str:
    """What a restore brings back, said with it (CLI output and audit record): an archive
    holds each key as it was when it was taken, so a key destroyed since (crypto-shredded) is
    back, usable. The restoring host cannot know what happened since (the source's log after
    the archive is not in it), so this is said every time, not only when it happened."""
    return (f"the keys are as they were when the archive was taken ({taken_at(header)}): a key "
            "destroyed or changed in the source since then is back as it was then")


def _decode_record(codec: RecordCodec, record: str) -> Key:
    """The record's MAC is verified (under this master key's record-MAC key) and its id too."""
    key_id = json.loads(record)["record"]["id"]
    return codec.decode(str(key_id), record.encode("ascii"))


# ---- the target ---------------------------------------------------------------------------

def refuse_interrupted(store: KeyStore) -> str | None:
    """Why a store must not be served: an interrupted restore (None when there was none)."""
    if store.get_meta(RESTORE_META) == IN_PROGRESS:
        return ("this store holds an interrupted restore (kill or crash during `ferrohsm "
                "restore`): run `ferrohsm restore FILE` again, which starts over")
    return None


def target_state(store: KeyStore, approvals: ApprovalStore | None, audit_present: bool) -> str:
    """``empty`` or ``interrupted``; TargetNotEmpty names what the target holds otherwise."""
    if store.get_meta(RESTORE_META) == IN_PROGRESS:
        return "interrupted"
    held = []
    if store.count():
        held.append(f"{store.count()} key(s)")
    if store.get_meta(CHECK_VALUE) is not None:
        held.append("a master-key check value")
    if approvals is not None and approvals.list(None, datetime.now(UTC), 1):
        held.append("approvals")
    if audit_present:
        held.append("an audit log")
    if held:
        raise not_empty(held)
    return "empty"


def not_empty(held: list[str]) -> TargetNotEmpty:
    return TargetNotEmpty("restore needs an empty data directory and store; this one holds "
                          f"{', '.join(held)}: choose a new --data-dir (and store)")


def wipe_interrupted(store: KeyStore, approvals: ApprovalStore | None) -> None:
    """Delete what an interrupted restore wrote (its marker says nothing else ever ran)."""
    for key in list(store.walk()):
        store.delete(key.id)
    if approvals is not None:
        for approval in approvals.list(None, datetime.now(UTC), 100000):
            approvals.delete(approval.id)


def begin(store: KeyStore) -> None:
    store.put_meta(RESTORE_META, IN_PROGRESS)


def finish(store: KeyStore) -> None:
    store.put_meta(RESTORE_META, DONE)


# ---- writing, record first ------------------------------------------------------------------

def apply(got: Verified, digest: str, store: KeyStore, approvals: ApprovalStore | None,
          sink: AuditSink, revocations: snapshot.Revocations) -> int:
    """Write the verified archive into the (empty, marked) target, its revoked-token list
    and its new audit log; how many token revocations were written (those still in force)."""
    head = got.audit_head
    sink.append(_event("system.restored", binding.SUCCESS,
                       f"restore from backup archive {digest[:16]}… begun: predecessor audit "
                       f"log head seq {head.get('seq')}; {state_as_taken(got.header)}", None,
                       None,
                       archive_sha256=digest, predecessor_seq=int(head.get("seq") or 0),
                       predecessor_hash=str(head.get("hash") or ""),
                       **_checkpoint_details(head.get("checkpoint")),
                       key_count=len(got.keys), archive_created_at=str(
                           got.header.get("created_at"))))
    for start in range(0, len(got.keys), BATCH):
        _restore_batch(got.keys[start:start + BATCH], digest, store, sink)
    for name, value in got.meta.items():
        store.put_meta(name, value)
    if approvals is not None:
        for approval in got.approvals:
            approvals.create(approval)
    revoked = restore_revocations(got, digest, revocations, sink)
    store.put_meta(CHECK_VALUE, got.check_value)
    sink.append(_event("system.restore_completed", binding.SUCCESS,
                       f"restore complete: {len(got.keys)} key(s), {len(got.approvals)} "
                       f"approval(s), {revoked} token revocation(s) as of "
                       f"{taken_at(got.header)} (tokens revoked in the source since are not "
                       "revoked here)", None, None, archive_sha256=digest,
                       key_count=len(got.keys), approval_count=len(got.approvals),
                       revoked_token_count=revoked))
    return revoked


def restore_revocations(got: Verified, digest: str, revocations: snapshot.Revocations,
                        sink: AuditSink) -> int:
    """The archive's revocations still in force go on the target's list (the file or the
    PostgreSQL table the restored server reads), merged with what it holds: an entry only
    ever lengthens, so a restore run again after a crash writes the same list. Recorded first,
    as ``token.revoke`` records of the new log, like every revocation (service/tokens.py): the
    log is what start-up rebuilds a lost or edited deny-list from, so no entry is without one."""
    now = time.time()
    live = {jti: until for jti, until in got.revoked_tokens.items() if until > now}
    items = sorted(live.items())
    for start in range(0, len(items), BATCH):
        sink.append_group([_event(
            "token.revoke", binding.SUCCESS, f"token {jti} revoked (carried from backup archive "
            f"{digest[:16]}…: revoked in the source before it was taken)", None, None, jti=jti,
            until=math.ceil(until) if math.isfinite(until) else None, archive_sha256=digest)
            for jti, until in items[start:start + BATCH]])
    revocations.revoke_all(live, now)
    return len(live)


def _checkpoint_details(checkpoint: object) -> dict[str, DetailValue]:
    """The predecessor log's newest signed checkpoint, by its public fields."""
    if not isinstance(checkpoint, dict):
        return {}
    return {f"predecessor_checkpoint_{name}": str(checkpoint.get(name))[:200]
            for name in ("log_id", "seq", "head_hash", "ts", "key_fingerprint", "sig") if name in checkpoint}


def _restore_batch(keys: tuple[Key, ...], digest: str, store: KeyStore,
                   sink: AuditSink) -> None:
    targets = [binding.planned(k, 1) for k in keys]
    intents = sink.append_group([
        _event(RESTORE_ACTION, binding.INTENT, "intent: restore the key from a backup archive",
               t.id, t.primary_version, **binding.intent_details(t, 0),
               original_seq=k.audit_seq, original_hash=k.audit_hash, archive_sha256=digest)
        for k, t in zip(keys, targets, strict=True)])
    bound = [binding.bind(t, int(i["seq"]), str(i["hash"]))
             for t, i in zip(targets, intents, strict=True)]
    try:
        store.bulk_create(replace(b, revision=1) for b in bound)
    except FerroError as exc:
        sink.append_group([_event(RESTORE_ACTION, binding.ROLLED_BACK,
                                  f"not applied: {exc.message}", b.id, b.primary_version,
                                  **{binding.INTENT_SEQ: b.audit_seq}) for b in bound])
        raise
    sink.append_group([_event(RESTORE_ACTION, binding.SUCCESS, "restored from a backup archive",
                              b.id, b.primary_version, **{binding.INTENT_SEQ: b.audit_seq})
                       for b in bound])


def _event(action: str, outcome: str, message: str, key_id: str | None,
           version: int | None, **details: DetailValue) -> AuditEvent:
    return AuditEvent(actor=SYSTEM, role=SYSTEM, action=action, outcome=outcome,
                      message=message, key_id=key_id, key_version=version, details=details)
