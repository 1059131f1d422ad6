"""The custody routes of the composition root: ``POST /v1/sys/backup`` and the online rekey
(``POST /v1/sys/rekey``, and finishing one a crash interrupted) wired to the running server's
stores. Kept apart from app.py so each stays readable; it names no concrete store."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace

from .api import router as routing
from .api.handlers import backup as backup_routes
from .api.handlers import rekey as rekey_routes
from .audit.sinkbase import AuditSink, ChainedSink
from .config import Config, Secrets
from .custody import online as online_rekey
from .custody import snapshot as custody_snapshot
from .custody.keysource import backup_key
from .domain.model import SYSTEM_CONTEXT
from .service import KeyService
from .service.backup import BackupService
from .store.approvalstore import ApprovalStore
from .store.importjobs import ImportJobStore
from .store.keystore import KeyStore


def wire_backup(router: routing.Router, config: Config, master: Callable[[], bytes],
                service: KeyService, approvals: ApprovalStore | None, audit: AuditSink,
                revocations: custody_snapshot.RevocationSource) -> None:
    """The archive of the running server's stores (custody/); the backup key is read when a
    backup is asked for (FERROHSM_BACKUP_KEY or the 0600 file, else derived from the master
    key ``master()`` gives now: an online rekey changes it), so a bad key file fails that
    call, not start-up. ``revocations``: the server's revoked-token list, carried in the
    archive so the restored server keeps refusing those tokens."""
    take = custody_snapshot.online(
        service.store, approvals, audit, master,
        lambda: backup_key(master(), os.environ, config.secrets.backup_key_file),
        config.storage.key_store, revocations, service.dual.is_current)
    backup_routes.register(router, BackupService(service.guard, take))


def online_key_file(config: Config) -> tuple[str, str]:
    """Where an online rekey writes the new master key, or "" and why it cannot here."""
    s, n = config.secrets, config.server.processes
    shared_by = ("every node (PostgreSQL)" if config.storage.key_store == "postgres"
                 else f"the {n} processes of [server].processes = {n}" if n > 1 else "")
    return online_rekey.key_file_for(s.unseal, bool(os.environ.get("FERROHSM_MASTER_KEY")),
                                     s.master_key_file, shared_by)


def resume_online_rekey(config: Config, secrets: Secrets, store: KeyStore, jobs: ImportJobStore,
                        open_audit: Callable[[Config, Secrets], ChainedSink], turn: Turn
                        ) -> Secrets:
    """Finish an online rekey a crash interrupted (its records and import jobs); the secrets
    to serve with. On SQLite other `serve` nodes may share the directory, and one of them may
    be rekeying now, holding the start-up lock (store/nodelock.py FileNodeLeases.sole): wait
    for it (``turn``: clusterwire.offline_alone); then only a node that finds no other alive
    finishes a rekey (else it was theirs, and is done: take the new key from the key file)."""
    def open_append() -> tuple[online_rekey.Append, Callable[[], None]]:
        sink = open_audit(config, secrets)
        return sink.append, sink.close

    def finish() -> bytes:
        return online_rekey.resume_at_start(store, jobs, secrets.master_key, key_file,
                                            open_append, SYSTEM_CONTEXT)
    key_file = online_key_file(config)[0]
    if config.storage.key_store == "sqlite" and key_file:
        with turn(config, None) as cold:
            master = finish() if cold else online_rekey.adopt_key_file(
                store, secrets.master_key, key_file)
    else:
        master = finish()
    return secrets if master == secrets.master_key else replace(secrets, master_key=master)


# clusterwire.offline_alone: (config, waiting) -> while held, no node starts on the store; True
# when no other node is alive
Turn = Callable[[Config, Callable[[], None] | None], AbstractContextManager[bool]]


def wire_rekey(router: routing.Router, config: Config, secrets: Secrets, store: KeyStore,
               jobs: ImportJobStore, audit: AuditSink, service: KeyService,
               pause: online_rekey.Pause, sole: online_rekey.Sole | None = None
               ) -> online_rekey.OnlineRekey:
    """``POST /v1/sys/rekey`` (custody/online.py), under dual control when configured; the
    rekey, whose ``master`` is the master key in use. ``sole``: the check that no other node
    serves a SQLite data directory (store/nodelock.py)."""
    run = online_rekey.OnlineRekey(store, jobs, audit.append,
                                   online_rekey.installer(service.engine),
                                   secrets.master_key, *online_key_file(config), pause, sole)
    a = config.approvals
    rekey_routes.register(router, service.guard, service.dual, run,
                          a.rekey_approvals_required, a.rekey_approval_ttl_seconds)
    return run
