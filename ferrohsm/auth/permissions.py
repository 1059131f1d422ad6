"""Role-based access control as one table, with separation of duties.

Administrators and Operators manage keys but never use them; Services use keys but never manage
them; Auditors only read. A Service principal whose token carries a ``tags`` claim may touch only
keys that carry at least one of those tags. Roles come from verified token claims only.

The README's role table is this table; tests/integration/test_auth_matrix.py states the same
matrix independently, route by route, so a change here without a change there fails.
"""

from __future__ import annotations

from enum import StrEnum

from ..domain.model import Key, Principal, Role


class Action(StrEnum):
    KEY_CREATE = "key.create"
    KEY_LIST = "key.list"
    KEY_READ = "key.read"
    KEY_UPDATE = "key.update"
    KEY_ROTATE = "key.rotate"
    KEY_ROLLBACK = "key.rollback"
    KEY_REVOKE = "key.revoke"
    KEY_DESTROY = "key.destroy"
    KEY_CANCEL_DESTROY = "key.cancel_destroy"
    KEY_PUBLIC = "key.public_key"
    ENCRYPT = "crypto.encrypt"
    DECRYPT = "crypto.decrypt"
    SIGN = "crypto.sign"
    VERIFY = "crypto.verify"
    WRAP = "crypto.wrap"
    UNWRAP = "crypto.unwrap"
    APPROVAL_LIST = "approval.list"
    APPROVAL_DECIDE = "approval.decide"
    AUDIT_READ = "audit.read"
    TOKEN_REVOKE = "token.revoke"
    RANDOM = "crypto.random"  # random bytes (the Vault-compatible transit surface)
    TOKEN_WHOAMI = "token.whoami"
    SYSTEM_SEAL = "system.seal"  # seal a split-knowledge server again (custody/gate.py)
    KEY_IMPORT = "key.import"  # key material brought in wrapped (BYOK): a new key or version
    IMPORT_JOB_CREATE = "import_job.create"  # a wrapping key for one import, valid 24 h
    KEY_DESTROY_VERSION = "key.destroy_version"  # erase one non-primary version's material
    SYSTEM_BACKUP = "system.backup"  # an encrypted archive of the whole store (custody/)
    SYSTEM_REKEY = "system.rekey"  # rotate the master key while serving (custody/online.py)


A, O, U, S = Role.ADMINISTRATOR, Role.OPERATOR, Role.AUDITOR, Role.SERVICE
READERS = frozenset({A, O, U, S})
MANAGERS = frozenset({A, O})
USERS = frozenset({S})

PERMISSIONS: dict[Action, frozenset[Role]] = {
    Action.KEY_CREATE: MANAGERS,
    Action.KEY_LIST: READERS,
    Action.KEY_READ: READERS,
    Action.KEY_UPDATE: MANAGERS,
    Action.KEY_ROTATE: MANAGERS,
    Action.KEY_ROLLBACK: MANAGERS,
    Action.KEY_REVOKE: MANAGERS,
    Action.KEY_DESTROY: frozenset({A}),
    Action.KEY_CANCEL_DESTROY: frozenset({A}),
    Action.KEY_PUBLIC: READERS,
    Action.ENCRYPT: USERS,
    Action.DECRYPT: USERS,
    Action.SIGN: USERS,
    Action.VERIFY: USERS,
    Action.WRAP: USERS,
    Action.UNWRAP: USERS,
    Action.APPROVAL_LIST: frozenset({A, O, U}),
    Action.APPROVAL_DECIDE: MANAGERS,
    Action.AUDIT_READ: frozenset({A, U}),  # as the v1 interface states: not operators
    Action.TOKEN_REVOKE: frozenset({A}),
    Action.RANDOM: USERS,
    Action.TOKEN_WHOAMI: READERS,
    Action.SYSTEM_SEAL: frozenset({A}),
    Action.KEY_IMPORT: MANAGERS,
    Action.IMPORT_JOB_CREATE: MANAGERS,
    Action.KEY_DESTROY_VERSION: frozenset({A}),
    Action.SYSTEM_BACKUP: frozenset({A}),
    Action.SYSTEM_REKEY: frozenset({A}),
}


def refusal(principal: Principal | None, action: Action, key: Key | None = None) -> str | None:
    """Why ``principal`` may not perform ``action`` (on ``key``, when given); None if it may.

    The one statement of the role table and tag scoping: the policy decision (control/policy.py)
    starts from it and the service's guarded call (service/guard.py) asks it for operations on
    no key, so a refusal reads the same wherever it is decided."""
    if principal is None or principal.role not in PERMISSIONS[action]:
        role = principal.role.value if principal else "anonymous"
        return f"role {role} may not perform {action.value}"
    if key is not None and not may_see(principal, key):
        return f"this token may not use key {key.id}"
    return None


def may_see(principal: Principal, key: Key) -> bool:
    """Tag scoping: a Service token with a ``tags`` claim sees only keys sharing one of them."""
    if principal.role is not Role.SERVICE or principal.tags is None:
        return True
    return not principal.tags.isdisjoint(key.tags)
