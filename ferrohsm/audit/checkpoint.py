"""Signed checkpoints of the audit log head: their format, and checking them. Standard library only.

A checkpoint line is the canonical JSON of ``{"v":1,"type":"ferrohsm.audit.checkpoint","log_id",
"seq","head_hash","ts","key_fingerprint"}`` plus ``"sig"``: standard base64 of the Ed25519
signature over the canonical JSON of the other fields. ``key_fingerprint`` is the SHA-256 (hex) of
the raw 32-byte public key.

This is the verification side, used by the offline verifier (verify.py) with the pure-Python
Ed25519 of ed25519.py, so an auditor needs no third-party package. The signing side, which holds
the private key, is anchor.py (on the server, through crypto/signing.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any, Protocol

from . import ed25519
from .chain import canonical_json

__all__ = ["CHECKPOINT_TYPE", "PublicKey", "SignatureVerifier", "signature_ok", "signed_bytes"]

CHECKPOINT_TYPE = "ferrohsm.audit.checkpoint"


class SignatureVerifier(Protocol):
    """An Ed25519 public key that checks a signature: ``PublicKey`` here, or the server's
    ``crypto.signing.VerifyKey``."""

    def verify(self, signature: bytes, data: bytes) -> bool: ...


class PublicKey:
    """An Ed25519 public key for checking checkpoints, without any third-party package."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != ed25519.PUBLIC_KEY_SIZE:
            raise ValueError("not an Ed25519 public key")
        self.raw = raw

    @classmethod
    def from_pem(cls, pem: bytes) -> PublicKey:
        """From the PEM SubjectPublicKeyInfo the server writes next to its signing key.

        ValueError "not a PEM public key" or "not an Ed25519 public key".
        """
        return cls(ed25519.public_key_from_pem(pem))

    def verify(self, signature: bytes, data: bytes) -> bool:
        return ed25519.verify(self.raw, data, signature)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


def signed_bytes(checkpoint: dict[str, Any]) -> bytes:
    """What the signature covers: the canonical JSON of every field but ``sig``."""
    return canonical_json({k: v for k, v in checkpoint.items() if k != "sig"})


def signature_ok(checkpoint: dict[str, Any], key: SignatureVerifier) -> bool:
    """True when the checkpoint's ``sig`` (strict base64) verifies under ``key``; a missing or
    undecodable ``sig`` is simply a bad signature."""
    try:
        signature = base64.b64decode(str(checkpoint.get("sig", "")), validate=True)
    except (binascii.Error, ValueError):
        return False
    return key.verify(signature, signed_bytes(checkpoint))
