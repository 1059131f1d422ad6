"""Taking a backup: read every key record, meta blob and approval through the ports.

Runs against a stopped server's data (``ferrohsm backup``, like a snapshot of a stopped node):
the filesystem store and the file audit sink hold locks, so a running server makes it refuse.
Key records are re-encoded by the store's own codec, which gives the bytes the store holds (the
sealed blobs untouched, the record MAC under the master key's record-MAC key).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from ..audit.chain import AuditEvent, DetailValue
from ..audit.sinkbase import AuditSink
from ..crypto.archive import BackupKey
from ..crypto.recordmac import RecordMac
from ..domain.approval import Approval, to_record
from ..domain.errors import IntegrityError
from ..store.approvalstore import ApprovalStore
from ..store.keystore import KeyStore
from ..store.records import FORMAT_META, RecordCodec
from . import archive

CHECK_VALUE = "master_key_check"  # app.CHECK_VALUE: the master key's sealed check value
CARRIED_META = (FORMAT_META,)  # meta blobs restored as they are (the check value goes last)
SYSTEM = "system"


@dataclass(frozen=True)
class Written:
    data: bytes
    header: dict[str, Any]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


BINDING_CONTEXT = b"ferrohsm backup contents v1"


def contents_mac(master_key: bytes, header: dict[str, Any], body: dict[str, Any]) -> str:
    """A MAC under the master key's record-MAC key over the whole contents and the header's
    own fields: whoever holds only a separate backup key can decrypt and re-seal an archive,
    but cannot drop, reorder, edit or mix in records from another archive unseen.

    The members added since the first archives (``ADDED_HEADER``, ``ADDED_BODY``) are covered
    by name when present and left out when absent, so an older archive's MAC is computed as
    it was written; adding or dropping one changes what is covered, so the MAC fails."""
    covered = {"header": {k: header.get(k) for k in HEADER_FIELDS}
               | {k: header[k] for k in ADDED_HEADER if k in header},
               **{k: body.get(k) for k in ("keys", "meta", "approvals", "audit_head")},
               **{k: body[k] for k in ADDED_BODY if k in body}}
    return RecordMac.derive(master_key).tag(BINDING_CONTEXT, archive.canonical(covered)).hex()


HEADER_FIELDS = ("created_at", "source_store", "key_count", "approval_count", "audit_head",
                 "check_value")
REVOKED = "revoked_tokens"  # body: jti -> until (epoch seconds), the revocations in force
REVOKED_COUNT = "revoked_token_count"  # header: how many
ADDED_HEADER = (REVOKED_COUNT,)  # absent from archives written before revocations were carried
ADDED_BODY = (REVOKED,)


class RevocationSource(Protocol):
    """What a backup reads of the revoked-token list (auth.denylist's RevocationList: the file
    deny-list or the PostgreSQL table): a restored server must keep refusing the tokens
    revoked before the archive was taken."""

    def entries(self, now: float) -> dict[str, float]: ...


class Revocations(Protocol):
    """What a restore writes into the target's revoked-token list."""

    def revoke_all(self, entries: dict[str, float], now: float) -> None: ...


def all_approvals(approvals: ApprovalStore | None, now: datetime,
                  current: Callable[[Approval], bool]) -> list[dict[str, Any]]:
    """Every approval record, refusing the backup if one is an older copy put back
    (``current``: the running server's or the log's newest revisions): restored, an executed
    approval would be redeemable again."""
    if approvals is None:
        return []
    found: list[dict[str, Any]] = []
    stale: list[str] = []
    after: str | None = None
    while True:
        page = approvals.list(None, now, 1000, after)
        if not page:  # not a short page: a record that fails its MAC is left out of one
            break
        for approval in page:
            if current(approval):
                found.append(to_record(approval))
            else:
                stale.append(approval.id)
        after = page[-1].id
    refuse_unreadable("approval", stale)
    return found


def refuse_unreadable(kind: str, ids: list[str]) -> None:
    """No archive that leaves out, or carries an older copy of, a record the server refuses:
    restored, the first would be lost without a word, the second obeyed again."""
    if ids:
        named = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        raise IntegrityError(f"backup refused: {len(ids)} {kind} record(s) fail their integrity "
                             f"check (edited, or an older copy put back): {named}. The server "
                             "refuses them too (see its log); nothing was written")


def take_archive(store: KeyStore, approvals: ApprovalStore | None, audit: AuditSink,
                 master_key: bytes, key: BackupKey, source: str,
                 revocations: RevocationSource,
                 current: Callable[[Approval], bool]) -> Written:
    """The archive of everything the stores hold now, the token revocations still in force
    (an expired one is of no use), and the audit head it follows."""
    # The head first: a change the key records below miss then has a seq after it, so the
    # source log after the archive's audit head holds every change the archive lacks.
    seq, head_hash = audit.head()
    checkpoint = audit.make_checkpoint() if seq else None
    now = datetime.now(UTC)
    revoked = revocations.entries(now.timestamp())
    codec = RecordCodec(RecordMac.derive(master_key))
    check = store.get_meta(CHECK_VALUE)
    keys, unreadable = store.readable()
    refuse_unreadable("key", list(unreadable))
    records = [codec.encode(k).decode("ascii") for k in keys]
    meta = {name: base64.b64encode(value).decode() for name in CARRIED_META
            if (value := store.get_meta(name)) is not None}
    approval_records = all_approvals(approvals, now, current)
    header = {"created_at": now.isoformat().replace("+00:00", "Z"), "source_store": source,
              "key_count": len(records), "approval_count": len(approval_records),
              "audit_head": {"seq": seq, "hash": head_hash},
              "check_value": base64.b64encode(check).decode() if check is not None else None,
              REVOKED_COUNT: len(revoked),
              "ferrohsm_version": __import__("ferrohsm").__version__}
    body: dict[str, Any] = {"keys": records, "meta": meta, "approvals": approval_records,
                            "audit_head": {"seq": seq, "hash": head_hash,
                                           "checkpoint": checkpoint},
                            REVOKED: dict(sorted(revoked.items()))}
    body["binding"] = contents_mac(master_key, header, body)
    data = archive.write(header, body, key)
    return Written(data, archive.read_header(data)[0])


def details(written: Written) -> dict[str, DetailValue]:
    """What the ``system.backup`` record says of an archive (public: no key, no material)."""
    h = written.header
    return {"archive_sha256": written.digest, "key_count": h["key_count"],
            "approval_count": h["approval_count"],
            "revoked_token_count": int(h.get(REVOKED_COUNT) or 0),
            "audit_head_seq": h["audit_head"]["seq"],
            "audit_head_hash": h["audit_head"]["hash"],
            "backup_key": f"{h['backup_key']['kind']}:{h['backup_key']['id']}"}


def backup_event(written: Written, path: str) -> AuditEvent:
    """``system.backup`` on the source log (offline backup): which archive, of what, after
    which record."""
    h = written.header
    return AuditEvent(actor=SYSTEM, role=SYSTEM, action="system.backup", outcome="success",
                      message=f"backup archive written to {path}: {h['key_count']} key(s), "
                      f"{h['approval_count']} approval(s), {h.get(REVOKED_COUNT, 0)} token "
                      f"revocation(s), audit head seq "
                      f"{h['audit_head']['seq']}", details=details(written))


def refused_event(reason: str) -> AuditEvent:
    """``system.backup`` refused (offline backup): no archive was written, and why."""
    return AuditEvent(actor=SYSTEM, role=SYSTEM, action="system.backup", outcome="error",
                      message=reason, details={"error": IntegrityError.code})


def online(store: KeyStore, approvals: ApprovalStore | None, audit: AuditSink,
           master_key: Callable[[], bytes], key: Callable[[], BackupKey], source: str,
           revocations: RevocationSource, current: Callable[[Approval], bool]
           ) -> Callable[[], tuple[bytes, dict[str, DetailValue], dict[str, Any]]]:
    """``take`` for the online backup (service/backup.py), over the running server's ports
    (``revocations``: the server's revoked-token list). ``master_key`` is asked at each
    backup: an online rekey changes it while the server runs."""
    def take() -> tuple[bytes, dict[str, DetailValue], dict[str, Any]]:
        written = take_archive(store, approvals, audit, master_key(), key(), source,
                               revocations, current)
        return written.data, details(written), written.header
    return take
