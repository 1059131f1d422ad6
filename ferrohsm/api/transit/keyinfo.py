"""Vault key types onto FerroHSM algorithms (and back), and Vault's key info shape.

A Vault key name is a FerroHSM key reference: ``keys/payments`` is the key named ``payments``
(a key id works too). Vault types FerroHSM has: ``aes256-gcm96`` (aes-256-gcm, usage encrypt),
``ecdsa-p256``, ``ecdsa-p384``, ``rsa-2048``, ``rsa-4096`` (usage sign). FerroHSM's RSA keys only
sign, so unlike Vault's they report ``supports_encryption: false``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...domain.errors import BadRequest
from ...domain.model import Key, KeyState
from .body import NOT_SUPPORTED

# Vault type -> (FerroHSM algorithm, usage)
TYPES: dict[str, tuple[str, str]] = {
    "aes256-gcm96": ("aes-256-gcm", "encrypt"),
    "ecdsa-p256": ("ec-p256", "sign"),
    "ecdsa-p384": ("ec-p384", "sign"),
    "rsa-2048": ("rsa-2048", "sign"),
    "rsa-4096": ("rsa-4096", "sign"),
}
VAULT_TYPE = {"aes-256-gcm": "aes256-gcm96", "ec-p256": "ecdsa-p256", "ec-p384": "ecdsa-p384",
              "rsa-2048": "rsa-2048", "rsa-4096": "rsa-4096"}
# the "name" Vault gives an asymmetric version's entry in ``keys``
_PUBLIC_NAME = {"ec-p256": "P-256", "ec-p384": "P-384", "rsa-2048": "rsa-2048",
                "rsa-4096": "rsa-4096"}


def native_type(vault_type: str | None) -> tuple[str, str]:
    """(algorithm, usage) for a Vault key type; 400 for the types FerroHSM does not have."""
    name = vault_type or "aes256-gcm96"
    found = TYPES.get(name)
    if found is None:
        raise BadRequest(f"key type {name[:40]!a} is {NOT_SUPPORTED} "
                         f"(supported: {', '.join(TYPES)})")
    return found


def reference(key: Key) -> str:
    """The name a Vault client knows the key by: its name, or its id when it has none."""
    return key.name or key.id


def key_info(key: Key, public_pem: Callable[[int], str] | None) -> dict[str, Any]:
    """Vault's ``GET keys/:name`` data for ``key``. ``keys`` lists the versions that still have
    material: creation time (unix seconds) for AES, the public key for signing keys
    (``public_pem(version)``, an audited read; None: the caller may not read it without an
    approval, and the key's info is shown without it, as Vault always shows a key's info)."""
    live = [v for v in key.versions if v.sealed is not None]
    versions: dict[str, Any] = {}
    # a key that may no longer verify (destruction scheduled) shows no public key
    verifies = key.state in (KeyState.ACTIVE, KeyState.REVOKED)
    for v in live:
        if key.usage != "sign":
            versions[str(v.version)] = int(v.created_at.timestamp())
            continue
        entry = {"creation_time": v.created_at.isoformat().replace("+00:00", "Z"),
                 "name": _PUBLIC_NAME.get(key.algorithm, key.algorithm)}
        if verifies and public_pem is not None:
            entry["public_key"] = public_pem(v.version)
        versions[str(v.version)] = entry
    # what a call could do with it now: a revoked or destroyed key's name stays taken, but
    # "supports_encryption" on it told a Vault client it could still encrypt
    usable = key.state is KeyState.ACTIVE
    encrypts, signs = key.usage == "encrypt" and usable, key.usage == "sign" and usable
    return {
        "name": reference(key), "type": VAULT_TYPE.get(key.algorithm, key.algorithm),
        "keys": versions, "latest_version": len(key.versions),
        "min_decryption_version": min((v.version for v in live), default=len(key.versions)),
        "min_encryption_version": 0, "min_available_version": 0,
        "deletion_allowed": False, "exportable": False, "allow_plaintext_backup": False,
        "derived": False, "imported_key": False, "auto_rotate_period": 0,
        "supports_encryption": encrypts, "supports_decryption": encrypts,
        "supports_derivation": False, "supports_signing": signs,
        # FerroHSM's own view, for operators (Vault clients ignore members they do not know)
        "ferrohsm": {"id": key.id, "state": key.state.value, "usage": key.usage,
                     "algorithm": key.algorithm, "primary_version": key.primary_version},
    }
