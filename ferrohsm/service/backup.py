"""The online backup as a service operation (Administrators): ``POST /v1/sys/backup``.

The archive itself is made by custody/snapshot.py (app.py hands it in as ``take``, so this layer
names no archive format). Runs inside the guarded call: a refused call leaves its record, and a
backup is answered only once its ``system.backup`` record (the archive's SHA-256, counts and the
audit head it follows) is durable. The archive is sealed under the backup key: key material in it
stays sealed under the master key, and nothing secret reaches the audit log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..auth.permissions import Action
from ..domain.model import RequestContext
from .guard import Guard

# The archive's bytes, the details of its audit record, and its header (public).
Snapshot = tuple[bytes, Mapping[str, Any], Mapping[str, Any]]


class BackupService:
    def __init__(self, guard: Guard, take: Callable[[], Snapshot]) -> None:
        self.guard = guard
        self.take = take

    def backup(self, ctx: RequestContext) -> Snapshot:
        def work() -> Snapshot:
            self.guard.require_audit()
            data, details, header = self.take()
            self.guard.record(ctx, Action.SYSTEM_BACKUP, "success",
                              f"backup archive of {details.get('key_count')} key(s) and "
                              f"{details.get('approval_count')} approval(s) sent, audit head "
                              f"seq {details.get('audit_head_seq')}", **details)
            return data, details, header
        return self.guard.run(ctx, Action.SYSTEM_BACKUP, work)
