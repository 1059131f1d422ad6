"""Master-key rotation (``ferrohsm rekey``): every sealed blob re-sealed, every key record's MAC
made anew, the check value replaced; crash-safe at every point.

The journal (store meta ``rekey_journal``, written durably before anything else changes)::

    {"state": "running", "old": "<fingerprint>", "new": "<fingerprint>",
     "new_under_old": "<base64>", "old_under_new": "<base64>"}

holds each key sealed under the other (crypto/seal.py format, context key id ``rekey-journal``),
so whoever holds EITHER key gets both back (``MasterKeys.from_journal``): a run killed at any
point resumes with the old key (the environment or the old shares) or the new one (the new-key
file or the new shares), and nothing secret is ever on disk in clear.

Then, each step idempotent, so resuming simply runs them all again:

1. every record: skipped when it already passes its MAC under the new key; otherwise decoded
   under the old key, each version's material unsealed with the old key and sealed with the
   new (same context), encoded under the new key and swapped in atomically
   (``KeyStore.rewrite_records``). A kill leaves each record old or new, both readable; then
   each open import job's sealed wrapping key, likewise (``reseal_jobs``);
2. the record-format marker, MAC'd like the records;
3. the commit: the check value under the new key (``master_key_check``);
4. (split-knowledge mode: the custody file's pending split becomes the current one, cli side);
5. the journal is marked ``done``.

While a journal says ``running`` the server refuses to start (``refuse_if_interrupted``):
records under two keys are not served.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..audit.chain import AuditEvent
from ..crypto.recordmac import RecordMac
from ..crypto.seal import Sealer
from ..domain import binding
from ..domain.errors import ConfigError, IntegrityError
from ..domain.model import Key, RequestContext
from ..store.importjobs import JOB_CONTEXT, ImportJobStore
from ..store.keystore import KeyStore
from ..store.records import FORMAT_META, RECORD_FAULTS, RecordCodec

__all__ = ["CHECK_VALUE", "JOURNAL", "Changes", "MasterKeys", "commit", "convert", "damaged",
           "finish", "journal_state", "refuse_damaged", "refuse_if_interrupted",
           "reseal_jobs", "start_journal"]

JOURNAL = "rekey_journal"
CHECK_VALUE = "master_key_check"  # app.CHECK_VALUE: the store's master-key check value
KILL_ENV = "FERROHSM_REKEY_KILL_AT"  # tests: SIGKILL at a named point (see crash_point)
_JOURNAL_CONTEXT = "rekey-journal"  # the key id of a master key sealed in the journal
_DONE = b'{"state":"done"}'


class RekeyInterrupted(ConfigError):
    """A rekey was interrupted: finish it before serving."""


def crash_point(name: str) -> None:
    """Crash-safety tests kill the process here for real (``FERROHSM_REKEY_KILL_AT=name``)."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class MasterKeys:
    old: bytes = field(repr=False)
    new: bytes = field(repr=False)

    def journal(self) -> bytes:
        old, new = Sealer(self.old), Sealer(self.new)
        doc = {"state": "running", "old": old.fingerprint(), "new": new.fingerprint(),
               "new_under_old": _b64(_wrap(old, self.new)),
               "old_under_new": _b64(_wrap(new, self.old))}
        return json.dumps(doc, sort_keys=True).encode("ascii")

    @classmethod
    def from_journal(cls, blob: bytes, given: bytes) -> MasterKeys:
        """Both keys from the journal and either one; ConfigError for a key that is neither."""
        try:
            doc = json.loads(blob)
            sealer = Sealer(given)
            if doc["old"] == sealer.fingerprint():
                return cls(given, _unwrap(sealer, base64.b64decode(doc["new_under_old"])))
            if doc["new"] == sealer.fingerprint():
                return cls(_unwrap(sealer, base64.b64decode(doc["old_under_new"])), given)
        except (ValueError, KeyError, TypeError, binascii.Error, IntegrityError):
            raise ConfigError(f"the rekey journal ({JOURNAL}) is damaged") from None
        raise ConfigError("the master key given is neither the old nor the new key of the "
                          "interrupted rekey")


def _wrap(sealer: Sealer, master: bytes) -> bytes:
    return sealer.seal(master, key_id=_JOURNAL_CONTEXT, version=1, algorithm="master-key")


def _unwrap(sealer: Sealer, blob: bytes) -> bytes:
    return sealer.unseal(blob, key_id=_JOURNAL_CONTEXT, version=1, algorithm="master-key")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def journal_state(store: KeyStore) -> str | None:
    """"running", "done" or None (never rekeyed)."""
    blob = store.get_meta(JOURNAL)
    if blob is None:
        return None
    try:
        state = json.loads(blob).get("state")
    except (ValueError, AttributeError):
        return "running"  # unreadable: assume the worst
    return state if state in ("running", "done") else "running"


def refuse_if_interrupted(store: KeyStore) -> None:
    """Start-up refuses a store whose rekey is still running (records under two keys)."""
    if journal_state(store) == "running":
        raise RekeyInterrupted("a master-key rekey of this data directory was interrupted: run "
                               "`ferrohsm rekey` again (with the old or the new master key or "
                               "shares) to finish it, then start the server")


def record_mac(master: bytes) -> RecordMac:
    """The record MAC of ``master`` (to open a store under it: app.open_store)."""
    return RecordMac.derive(master)


def verify_current(store: KeyStore, given: bytes) -> bytes:
    """``given`` when it opens the store's check value; ConfigError otherwise."""
    check = store.get_meta(CHECK_VALUE)
    if check is None:
        raise ConfigError("this key store has no master-key check value yet (the server never "
                          "started on it): there is nothing to rekey")
    Sealer(given).verify_check_value(check)
    return given


def start_journal(store: KeyStore, keys: MasterKeys) -> None:
    store.put_meta(JOURNAL, keys.journal())


def damaged(store: KeyStore, *masters: bytes) -> list[str]:
    """The keys whose record the rekey could not convert: neither key's MAC holds, or a
    version's material does not open under the key its record is under (sealed under another
    master key). Found before the journal starts, so that one such record refuses the rekey
    with nothing changed, instead of stopping it halfway (the server then refuses to start
    until it is finished, and it could never be). Opens every version: a dry run. ``masters``:
    the keys a record may be under (the old one; on a resumed run the new one too)."""
    codecs = [(RecordCodec(RecordMac.derive(m)), Sealer(m)) for m in masters]
    found: list[str] = []

    def check(key_id: str, data: bytes) -> None:
        for codec, sealer in codecs:
            try:
                key = codec.decode(key_id, data)
            except RECORD_FAULTS:
                continue
            if not _sealed_under(key, sealer):
                break
            return None
        found.append(key_id)
        return None
    store.rewrite_records(check)
    return found


def refuse_damaged(found: list[str], how: str) -> None:
    """The refusal for ``damaged``'s keys, naming them (at most five) and the ways out."""
    if found:
        named = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ConfigError(f"{len(found)} key record(s) cannot be re-sealed: their record fails "
                          f"its integrity check or their material does not open under the "
                          f"master key ({named}); nothing was changed by this check. Restore "
                          f"them from a backup, or {how}")


def convert(store: KeyStore, keys: MasterKeys, changes: Changes,
            progress: Callable[[int], None], leave: frozenset[str] = frozenset()) -> int:
    """Steps 1 and 2 on a store opened under the NEW key's record MAC; how many records were
    rewritten now. ``progress(done)`` is called before each rewrite. The keys in ``leave``
    (``damaged``'s, left by the operator's choice) are not touched: they stay unreadable."""
    old_codec = RecordCodec(RecordMac.derive(keys.old))
    new_codec = RecordCodec(RecordMac.derive(keys.new))
    old_sealer, new_sealer = Sealer(keys.old), Sealer(keys.new)
    done = [0]

    def rewrite(key_id: str, data: bytes) -> bytes | None:
        if key_id in leave:
            return None
        try:
            current: Key | None = new_codec.decode(key_id, data)
        except IntegrityError:
            current = None
        if current is not None and _sealed_under(current, new_sealer):
            return None  # already under the new key
        # Under the old MAC, or (a writer that slipped past the rekey's pause) under the new
        # MAC around material still sealed under the old key: both are resealed here.
        key = current or old_codec.decode(key_id, data)  # IntegrityError if neither opens it
        progress(done[0])
        done[0] += 1
        return new_codec.encode(changes.intent(key, _resealed(key, old_sealer, new_sealer)))

    rewritten = store.rewrite_records(rewrite, changes.applied)
    marker = store.get_meta(FORMAT_META)
    if marker is not None:
        try:
            new_codec.read_marker(marker)
        except IntegrityError:
            state = old_codec.read_marker(marker)
            if state is not None:
                store.put_meta(FORMAT_META, new_codec.marker(state))
    return rewritten


def reseal_jobs(jobs: ImportJobStore, keys: MasterKeys) -> int:
    """Step 1b: each open import job's wrapping key re-sealed under the new key (one atomic put
    a job, so a kill leaves it old or new, and a resumed run skips the new ones): a rekey does
    not cancel the imports under way. A job neither key opens is left, and the import service
    purges it as unreadable. How many were re-sealed."""
    old, new = Sealer(keys.old), Sealer(keys.new)
    count = 0
    for job_id in jobs.ids():
        blob = jobs.get(job_id)
        if blob is None:
            continue
        try:
            new.unseal(blob, key_id=job_id, version=1, algorithm=JOB_CONTEXT)
            continue  # already re-sealed
        except IntegrityError:
            pass
        try:
            plain = old.unseal(blob, key_id=job_id, version=1, algorithm=JOB_CONTEXT)
        except IntegrityError:
            continue
        jobs.put(job_id, new.seal(plain, key_id=job_id, version=1, algorithm=JOB_CONTEXT))
        count += 1
    return count


class Changes:
    """Record first, like every change of a key (domain/binding.py): a durable ``key.rekey``
    intent naming the digest of the re-sealed record, the record written bound to it, then the
    success record. Start-up reconciliation settles an intent a kill left unsettled."""

    ACTION = "key.rekey"

    def __init__(self, ctx: RequestContext, append: Callable[[AuditEvent], dict[str, Any]]):
        self._ctx = ctx
        self._append = append
        self._intents: dict[str, tuple[int, int | None]] = {}

    def intent(self, stored: Key, resealed: Key) -> Key:
        target = binding.planned(resealed, stored.revision + 1)
        record = self._append(AuditEvent.from_context(
            self._ctx, self.ACTION, binding.INTENT, "intent: re-sealed and re-MACed under the "
            "new master key", key_id=stored.id, key_version=stored.primary_version,
            details=binding.intent_details(target, stored.audit_seq)))
        self._intents[stored.id] = (int(record["seq"]), stored.primary_version)
        return binding.bind(target, int(record["seq"]), str(record["hash"]))

    def applied(self, key_id: str) -> None:
        seq, version = self._intents.pop(key_id)
        self._append(AuditEvent.from_context(
            self._ctx, self.ACTION, binding.SUCCESS, "re-sealed and re-MACed under the new "
            "master key", key_id=key_id, key_version=version,
            details={binding.INTENT_SEQ: seq}))


def _sealed_under(key: Key, sealer: Sealer) -> bool:
    """Whether every sealed version of ``key`` opens under ``sealer``."""
    try:
        for v in key.versions:
            if v.sealed is not None:
                sealer.unseal(v.sealed, key_id=key.id, version=v.version,
                              algorithm=key.algorithm)
    except IntegrityError:
        return False
    return True


def _resealed(key: Key, old: Sealer, new: Sealer) -> Key:
    versions = []
    for v in key.versions:
        if v.sealed is not None:
            material = old.unseal(v.sealed, key_id=key.id, version=v.version,
                                  algorithm=key.algorithm)
            v = replace(v, sealed=new.seal(material, key_id=key.id, version=v.version,
                                           algorithm=key.algorithm))
        versions.append(v)
    return replace(key, versions=tuple(versions))


def commit(store: KeyStore, keys: MasterKeys) -> None:
    """Step 3: from here on the new key is the store's key."""
    store.put_meta(CHECK_VALUE, Sealer(keys.new).make_check_value())


def finish(store: KeyStore) -> None:
    store.put_meta(JOURNAL, _DONE)
