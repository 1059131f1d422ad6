"""The service layer: every operation a request (or the scheduler) asks for, each run inside
the guarded call (guard.py) that authorizes it once and records its outcome once.

- keys.py: KeyService, key management and cryptographic operations;
- approvals.py: the approvals API (the gate and transitions are control/dualcontrol.py's);
- tokens.py: token revocation; auditlog.py: reading the audit log.
"""

from __future__ import annotations

from .approvals import ApprovalService
from .auditlog import AuditLogService, AuditReader
from .guard import AuditLog, Guard, utcnow
from .keys import KeyService, attestation
from .tokens import Revoker, TokenService

__all__ = ["ApprovalService", "AuditLog", "AuditLogService", "AuditReader", "Guard", "KeyService",
           "Revoker", "TokenService", "attestation", "utcnow"]
