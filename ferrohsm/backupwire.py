"""The backup route of the composition root: ``POST /v1/sys/backup`` wired to the running
server's stores. Kept apart from app.py so each stays readable; it names no concrete store."""

from __future__ import annotations

import os

from .api import router as routing
from .api.handlers import backup as backup_routes
from .audit.sinkbase import AuditSink
from .config import Config, Secrets
from .custody import snapshot as custody_snapshot
from .custody.keysource import backup_key
from .service import KeyService
from .service.backup import BackupService
from .store.approvalstore import ApprovalStore


def wire_backup(router: routing.Router, config: Config, secrets: Secrets, service: KeyService,
                approvals: ApprovalStore | None, audit: AuditSink) -> None:
    """The archive of the running server's stores (custody/); the backup key is read when a
    backup is asked for (FERROHSM_BACKUP_KEY or the 0600 file, else derived from the master
    key), so a bad key file fails that call, not start-up."""
    take = custody_snapshot.online(
        service.store, approvals, audit, secrets.master_key,
        lambda: backup_key(secrets.master_key, os.environ, config.secrets.backup_key_file),
        config.storage.key_store)
    backup_routes.register(router, BackupService(service.guard, take))
