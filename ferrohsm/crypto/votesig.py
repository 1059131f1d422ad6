"""Vote signatures (domain/votes.py): approver public keys, verification, and local signing.

Two key types: Ed25519 (recommended: the offline verifier checks it with the standard library
alone) and ECDSA P-256 with SHA-256 (DER signatures). RSA is not accepted: a 3072-bit RSA
signature is 512 base64 characters, more than one audit record detail holds, and a vote whose
signature cannot be recorded whole could not be checked offline. Errors are ValueError with a
message that never contains key bytes.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..domain.votes import MAX_SIGNATURE_B64, fingerprint

ED25519, ES256 = "Ed25519", "ES256"


class ApproverKey:
    """One approver's registered public key: its type, fingerprint and a verify method."""

    __slots__ = ("_key", "alg", "fingerprint")

    def __init__(self, key: Ed25519PublicKey | ec.EllipticCurvePublicKey) -> None:
        self._key = key
        self.alg = ED25519 if isinstance(key, Ed25519PublicKey) else ES256
        self.fingerprint = fingerprint(key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))

    def verify(self, signature_b64: str, message: bytes) -> bool:
        """Whether ``signature_b64`` (standard base64) signs ``message`` under this key."""
        signature = decode_signature(signature_b64)
        try:
            if isinstance(self._key, Ed25519PublicKey):
                self._key.verify(signature, message)
            else:
                self._key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def decode_signature(text: str) -> bytes:
    if not isinstance(text, str) or not 0 < len(text) <= MAX_SIGNATURE_B64:
        raise ValueError(f"a vote signature is 1-{MAX_SIGNATURE_B64} base64 characters")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the vote signature is not valid base64") from None


def load_public_key(pem: bytes, where: str) -> ApproverKey:
    """An Ed25519 or EC P-256 public key from PEM; ValueError naming ``where`` otherwise."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"{where}: not a PEM public key (BEGIN PUBLIC KEY)") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return ApproverKey(key)
    if isinstance(key, Ed25519PublicKey):
        return ApproverKey(key)
    raise ValueError(f"{where}: approver keys must be Ed25519 or EC P-256 public keys")


def sign_vote(private_pem: bytes, message: bytes, password: bytes | None = None
              ) -> tuple[str, str]:
    """Sign ``message`` with a local Ed25519 or EC P-256 private key (PEM, PKCS#8 or
    traditional): (base64 signature, fingerprint of the matching public key)."""
    try:
        key = serialization.load_pem_private_key(private_pem, password)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("the signing key is not a readable PEM private key (wrong password, "
                         "or encrypted without one?)") from None
    if isinstance(key, Ed25519PrivateKey):
        signature = key.sign(message)
    elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    else:
        raise ValueError("the signing key must be an Ed25519 or EC P-256 private key")
    public = ApproverKey(key.public_key())
    return base64.b64encode(signature).decode("ascii"), public.fingerprint
