"""Refuse to serve when the key store, the audit log and the checkpoints disagree.

Run by app.py in two steps around opening the audit sink (which itself refuses a log shorter
than the last checkpoint in its own ``checkpoints.jsonl``):

``before_audit`` (nothing has been written yet)
  * the audit log is missing or empty while the key store holds keys: the audit directory was
    deleted or replaced. Opening the sink would start a fresh chain beside the old keys and hide
    that, so refuse unless ``accept_audit_loss``.
  * the audit log is missing or empty while the witness file holds checkpoints: same, witnessed.
  * the audit log has records but its ``checkpoints.jsonl`` is missing or empty: the sink writes
    one from the first record on, so it was deleted (typically with the log's tail, which the
    sink could then no longer see). Refuse unless ``accept_audit_loss``. One exception: a log
    holding only its genesis record beside a new store and an empty witness is a first start
    killed between that record and its first checkpoint (the sink writes it as it opens).

``after_audit`` (the sink is open; its head and log id are known)
  * the newest checkpoint in the witness file is signed by this log's key, names this log, is not
    beyond the head, and the record at its seq has its hash. With several writers of one log
    (``processes = N``, nodes on one database) the head is read after the checkpoint
    (``catch_up``), so one that another live writer signed meanwhile never looks like a cut log. A log cut back together with its
    local ``checkpoints.jsonl`` passes the sink's own check but not this one.
  * a key record bound to an audit seq the log does not have (``audit_seq`` on a key, once the
    store carries it): the log is behind the store.
  * store loss: every key the log records as created (a successful ``key.create``) must still be
    in the store. Missing keys stop start-up, naming them (up to ``MAX_NAMED``), unless
    ``accept_store_loss``: then each gets a ``key.lost`` record (so the next start-up knows the
    loss was accepted) and one ``integrity.store_loss_accepted`` record sums it up.

Every acceptance of a degraded state is itself an audit record. Nothing here reads or writes a
secret, and messages carry only key ids, seqs, hashes and paths.

Cost: the store-loss check reads the whole log (logscan.py) and looks up every key it created.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..audit.anchor import newest_checkpoint
from ..audit.chain import AuditEvent
from ..audit.sinkbase import ChainedSink
from ..domain.errors import FerroError, IntegrityError, NotFound
from ..store.keystore import KeyStore
from .logscan import AuditLocation, created_keys

log = logging.getLogger("ferrohsm.integrity")

MAX_NAMED = 20
LOST_ACTION = "key.lost"
STORE_LOSS_ACTION = "integrity.store_loss_accepted"
AUDIT_LOSS_ACTION = "integrity.audit_loss_accepted"
SYSTEM = "system"


# Whether key records carry the audit seq of their last change (added separately): until they do,
# there is nothing to compare a key with.


class StartupRefused(FerroError):
    """The stored state is inconsistent: the server does not start (fail closed)."""

    code, status = "integrity_refused", 500


def named(ids: list[str]) -> str:
    """Up to MAX_NAMED ids, and how many more."""
    shown = ", ".join(ids[:MAX_NAMED])
    more = len(ids) - MAX_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


@dataclass
class StartupChecks:
    """What app.py knows about the data directory, for the two steps of the module docstring."""

    store: KeyStore
    audit: AuditLocation
    witness_file: str = ""  # a file witness, read back; "" when none (or syslog / https)
    store_is_persistent: bool = True  # the memory store forgets everything by design
    store_is_new: bool = False  # no keys and no master-key check value (app.check_master_key)
    accept_store_loss: bool = False
    accept_audit_loss: bool = False
    _audit_loss: str = ""
    _new_log: bool = False

    def before_audit(self) -> None:
        """Refuse (or note, when accepted) a missing audit log beside keys or a witness, and a
        log without its checkpoints."""
        with self.audit.settled():  # not in the middle of another process's opening
            present, has_checkpoints = self.audit.present(), self.audit.has_checkpoints()
        if present:
            if not has_checkpoints and not self._first_start_cut_short():
                self._degraded(f"the audit log in {self.audit.directory} has records but its "
                               "signed checkpoints (checkpoints.jsonl) are missing or empty: "
                               "they were deleted, perhaps together with the log's last records")
            return
        keys = self.store.count() if self.store_is_persistent else 0
        witnessed = _newest_witnessed(self.witness_file)
        if not keys and witnessed is None:
            self._new_log = True  # a new installation: its witness has nothing yet, rightly
            return
        situation = (f"the audit log in {self.audit.directory} is missing or empty, but "
                     + (f"the key store holds {keys} key(s)" if keys else "")
                     + (" and " if keys and witnessed else "")
                     + (f"the witness {self.witness_file} holds checkpoints up to seq "
                        f"{witnessed.get('seq')}" if witnessed else ""))
        self._new_log = True
        self._degraded(f"{situation}: the audit log was deleted or replaced")

    def _first_start_cut_short(self) -> bool:
        """A log that holds only the record that created it, beside a new store (no keys, no
        check value: neither is written before the first start's checks passed) and a witness
        with nothing: the first start was killed before its first checkpoint. Nothing can have
        been lost (nothing is appended before that checkpoint): the sink writes it now. Not
        for the memory store: it is new at every start."""
        if not (self.store_is_persistent and self.store_is_new and self.audit.holds_only_genesis()
                and _newest_witnessed(self.witness_file) is None):
            return False
        log.warning("integrity: the audit log in %s holds only the record that created it and "
                    "no checkpoint yet: its first start was interrupted; going on",
                    self.audit.directory)
        self._new_log = True  # as a new installation: its witness has nothing yet, rightly
        return True

    def _degraded(self, situation: str) -> None:
        if not self.accept_audit_loss:
            raise StartupRefused(f"{situation}. Restore the audit directory from a backup; or, "
                                 "to go on with what is there, start once with "
                                 "--accept-audit-loss (recorded in the audit log)")
        log.warning("integrity: %s; accepted by --accept-audit-loss", situation)
        self._audit_loss = situation

    @property
    def audit_loss_accepted(self) -> bool:
        """Whether a lost or cut audit log was accepted: the key records' bindings to the old
        log then explain nothing, and start-up binds them anew, each change recorded."""
        return bool(self._audit_loss)

    def after_audit(self, sink: ChainedSink) -> None:
        """The checks that need the open log; then record what was accepted."""
        if self._audit_loss:
            sink.append(_system(AUDIT_LOSS_ACTION, f"{self._audit_loss}; accepted "
                                "(--accept-audit-loss)"))
        if not self._new_log:
            check_witness(sink, self.witness_file)
        if not self._audit_loss:  # accepted: the keys are bound anew to this log (reconcile.py)
            check_bindings(self.store, sink.catch_up)
        if self.store_is_persistent:
            self._check_store_loss(sink)

    def _check_store_loss(self, sink: ChainedSink) -> None:
        known = created_keys(self.audit)
        missing = sorted(key_id for key_id in known if not _present(self.store, key_id))
        if not missing:
            return
        if len(missing) == len(known) and self.store.count() == 0:
            situation = (f"the key store is empty, but the audit log records the creation of "
                         f"{len(known)} key(s): {named(missing)}")
        else:
            situation = (f"{len(missing)} key(s) the audit log records as created are missing "
                         f"from the key store: {named(missing)}")
        if not self.accept_store_loss:
            raise StartupRefused(f"{situation}. Restore the key store from a backup; or, to "
                                 "serve without them, start once with --accept-store-loss "
                                 "(each loss is recorded in the audit log)")
        log.warning("integrity: %s; accepted by --accept-store-loss", situation)
        record_store_loss(sink, missing, situation)


def record_store_loss(sink: ChainedSink, missing: list[str], situation: str) -> None:
    """One ``key.lost`` record per key and a summary, durable as one group before serving."""
    events = [_system(LOST_ACTION, "key missing from the key store at start-up; the loss was "
                      "accepted (--accept-store-loss)", key_id=key_id) for key_id in missing]
    events.append(_system(STORE_LOSS_ACTION, f"{situation}; accepted (--accept-store-loss)",
                          count=len(missing)))
    sink.append_group(events)


def check_witness(sink: ChainedSink, witness_file: str) -> None:
    """The log must reach, and agree with, the newest checkpoint the witness file holds."""
    if not witness_file:
        return  # none configured (a syslog or https witness is not read back)
    cp = _newest_witnessed(witness_file)
    if cp is None:
        signed = sink.anchor.last()
        if signed is not None and not signed.get("corrupt"):  # (a corrupt one is refused)
            log.warning("integrity: the witness %s holds no checkpoint, although this log has "
                        "signed checkpoints up to seq %s: if the witness was emptied, replaced "
                        "or is not mounted, rollback detection against it starts over from "
                        "now (expected once, when the witness is newly configured)",
                        witness_file, signed.get("seq"))
        return
    where = f"the newest checkpoint in the witness {witness_file}"
    if cp.get("corrupt"):
        raise StartupRefused(f"{where} is damaged")
    if cp.get("log_id") != sink.log_id:  # before the signature: another log has another key
        raise StartupRefused(f"{where} belongs to another audit log ({cp.get('log_id')!r:.60}): "
                             "the audit log was replaced (after a restore, which starts a new "
                             "log: keep that witness file with the archive and give the "
                             "restored server a new one)")
    if not sink.anchor.verify_own(cp):
        raise StartupRefused(f"{where} is not signed by this log's key")
    # The head read AFTER the checkpoint: another writer of the log (processes = N, nodes)
    # may have signed it beyond the head this process saw at open.
    head_seq = sink.catch_up()[0]
    seq = cp.get("seq")
    if not isinstance(seq, int) or seq > head_seq:
        raise StartupRefused(f"the audit log ends at seq {head_seq}, behind {where} (seq {seq} "
                             f"of {cp.get('ts')}): truncated or rolled back")
    found = sink.hash_at(seq)
    if found is None:
        log.warning("integrity: witnessed checkpoint seq %d is older than the retained log", seq)
    elif found != cp.get("head_hash"):
        raise StartupRefused(f"the audit record at seq {seq} differs from {where}: the log was "
                             "rolled back and rewritten")


def check_bindings(store: KeyStore, head_seq: int | Callable[[], tuple[int, str]]) -> None:
    """Refuse keys whose last change is bound to an audit seq beyond the log's head.

    A key never bound (``audit_seq`` 0: written before records were bound) has nothing to
    compare. This lists the store once. ``head_seq`` may be the sink's ``catch_up``: it is then
    asked only after the store was listed, so a key another live writer changed meanwhile is
    compared with a head that already holds that change's record."""
    keys = list(store.walk())
    head = head_seq if isinstance(head_seq, int) else head_seq()[0]
    ahead = [key.id for key in keys if key.audit_seq > head]
    if ahead:
        raise StartupRefused(f"{len(ahead)} key record(s) are bound to audit records beyond the "
                             f"log's last seq {head}: {named(ahead)}. The audit log is "
                             "behind the key store (truncated or restored from an older backup)")


def _present(store: KeyStore, key_id: str) -> bool:
    """Whether the store holds a record for ``key_id``; one that fails its MAC is present (the
    record check names it and refuses that key), not lost."""
    try:
        store.get(key_id)
    except NotFound:
        return False
    except IntegrityError:
        return True
    return True


def _newest_witnessed(path: str) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        return newest_checkpoint(path)
    except OSError as exc:
        raise StartupRefused(f"cannot read the witness {path}: {exc.strerror}") from None


def _system(action: str, message: str, *, key_id: str | None = None,
            **details: str | int) -> AuditEvent:
    return AuditEvent(actor=SYSTEM, role=SYSTEM, action=action, outcome="success",
                      message=message, key_id=key_id, details=dict(details))
