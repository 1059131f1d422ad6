"""``POST /v1/sys/backup`` (Administrators): the encrypted backup archive of the whole store.

The archive (custody/archive.py) goes out base64 in a JSON body with its SHA-256 and its public
header, so every client that speaks the API's JSON can save it; ``ferrohsm backup --out FILE``
writes it 0600. It is encrypted and authenticated under the backup key, its key records still
sealed under the master key.
"""

from __future__ import annotations

import base64

from ...auth.permissions import Action
from ...domain.model import RequestContext
from ...service.backup import BackupService
from ..http import Request
from ..router import Operation, Router
from .common import Reply, fields


def register(router: Router, backups: BackupService) -> None:
    def backup(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        fields(req, {})
        data, details, header = backups.backup(ctx)
        return 200, {"archive": base64.b64encode(data).decode("ascii"),
                     "sha256": details.get("archive_sha256"), "size": len(data),
                     "header": dict(header)}

    router.add("POST", "/v1/sys/backup", backup, name="backup", doc=Operation(
        "An encrypted, authenticated backup archive of every key (still sealed), the approvals "
        "and the audit head (Administrators)", ("system",), Action.SYSTEM_BACKUP,
        request="Empty", response="Backup"))
