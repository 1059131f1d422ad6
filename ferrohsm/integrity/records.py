"""Start-up check of the key records: migrate a store written before records were authenticated
(once), then decode every record and audit each one that fails. app.py runs it before serving,
once the master-key check value has passed and the audit log is open.

A record that fails is not repaired and does not stop the server: its key is refused on every
request (integrity_error, audited by the service's refusal path) and every other key is served.
At start-up each bad key gets one ``store.integrity`` record naming the key and what failed (no
MAC, a MAC that does not match, another key's record, an unreadable file), never the contents.

The format marker (a MAC'd meta blob, store/records.py) decides whether records without a MAC
may still be migrated. The migration trusts what it reads (trust on first use), so stripping
MACs and the marker must never make a migrated store look unmigrated. The durable evidence is the
audit log: the migration writes ``store.migrated`` (how many records) BEFORE it sets the marker
to AUTHENTICATED, and a marker that is not AUTHENTICATED is believed only if no such record
exists. Every way through, including a kill at any point:

================  =====================  =================================================
marker            store.migrated logged  at start-up
================  =====================  =================================================
AUTHENTICATED     (not read)             check only
fails its MAC     (not read)             audit it; check (records without a MAC fail)
MIGRATING         yes                    killed after the audit record: set AUTHENTICATED
none              yes                    marker removed: audit it, set AUTHENTICATED
none              no, MAC'd AND bare     marker removed (a migration starts with MIGRATING):
                                         audit it, set AUTHENTICATED; the bare ones fail
MIGRATING / none  no                     migrate: MIGRATING, MAC each bare record (each
                                         rewrite atomic), store.migrated, AUTHENTICATED
================  =====================  =================================================

A fresh store takes the last row with zero records, so its evidence exists from the start too.
What this cannot see: an audit log that lost its ``store.migrated`` record (truncated, or pruned
by retention) together with a marker removed and MACs stripped from every record. Truncation is
for the audit log's own checkpoints to catch; replaying an older authenticated copy of a record
is caught by binding records to the audit log (Key.audit_seq / audit_hash), not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..audit.chain import AuditEvent, DetailValue
from ..audit.sinkbase import AuditSink
from ..domain.errors import IntegrityError
from ..domain.model import SYSTEM_CONTEXT
from ..store.keystore import KeyStore
from ..store.records import RECORD_FORMAT_VERSION, RecordFormat

MIGRATED = "store.migrated"
INTEGRITY = "store.integrity"
_READ_BATCH = 1000


@dataclass(frozen=True, slots=True)
class RecordReport:
    """What the start-up check found: for health output, never record contents."""

    checked: int
    failed: tuple[str, ...]  # key ids
    migrated: int | None  # records given a MAC by this start-up, None when no migration ran


def check_key_records(store: KeyStore, audit: AuditSink) -> RecordReport:
    """Settle the record format (migrating once if needed), then check every record."""
    migrated = _settle_format(store, audit)
    scan = store.check_records()
    for fault in scan.faults:
        _record(audit, INTEGRITY, "error", f"start-up check: {fault.message}",
                key_id=fault.key_id, check="key_record", problem=fault.problem)
    return RecordReport(scan.checked, tuple(f.key_id for f in scan.faults), migrated)


def _settle_format(store: KeyStore, audit: AuditSink) -> int | None:
    """Make the marker say AUTHENTICATED; the number of records migrated, if a migration ran."""
    try:
        state = store.record_format()
    except IntegrityError as exc:
        _record(audit, INTEGRITY, "error", f"start-up check: {exc.message}; every key record "
                "must carry a valid MAC", check="format_marker", problem="mac_mismatch")
        return None
    if state is RecordFormat.AUTHENTICATED:
        return None
    if _migration_logged(audit):
        if state is None:
            _marker_removed(audit, "although the audit log records the store's migration")
        store.set_record_format(RecordFormat.AUTHENTICATED)
        return None
    with_mac, without = store.record_census()
    if state is None and with_mac and without:
        _marker_removed(audit, "although key records carry MACs")
        store.set_record_format(RecordFormat.AUTHENTICATED)
        return None
    return _migrate(store, audit, state, with_mac + without)


def _migrate(store: KeyStore, audit: AuditSink, state: RecordFormat | None, total: int) -> int:
    """Each step is durable before the next, so a kill anywhere resumes (see the table)."""
    if state is None:
        store.set_record_format(RecordFormat.MIGRATING)
    rewritten = store.authenticate_legacy_records()
    _record(audit, MIGRATED, "success",
            f"key records authenticated (format {RECORD_FORMAT_VERSION}): {total} records, "
            f"{rewritten} given a MAC now", records=total, rewritten=rewritten,
            format=RECORD_FORMAT_VERSION)
    store.set_record_format(RecordFormat.AUTHENTICATED)
    return rewritten


def _marker_removed(audit: AuditSink, why: str) -> None:
    _record(audit, INTEGRITY, "error", f"start-up check: the key store's record-format marker "
            f"is missing {why}; key records without a MAC are refused",
            check="format_marker", problem="missing")


def _migration_logged(audit: AuditSink) -> bool:
    """Whether the audit log holds a ``store.migrated`` record (read only when the marker is
    not AUTHENTICATED: a store's first start, a migration, or tampering)."""
    after = 0
    while batch := audit.read(after, _READ_BATCH):
        if any(record.get("action") == MIGRATED for record in batch):
            return True
        after = int(batch[-1]["seq"])
    return False


def _record(audit: AuditSink, action: str, outcome: str, message: str,
            key_id: str | None = None, **details: DetailValue) -> None:
    """A durable system record; AuditUnavailable stops start-up (nothing is served unaudited)."""
    audit.append(AuditEvent.from_context(SYSTEM_CONTEXT, action, outcome, message,
                                         key_id=key_id, details=details))
