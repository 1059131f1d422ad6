"""Ed25519 signatures for the audit log's checkpoints: the server's signing side.

Kept here so that ``crypto/`` stays the only importer of ``cryptography.hazmat``; the audit
anchor (audit/anchor.py) does the file handling and calls these. Offline verification does not
come here: audit/checkpoint.py checks signatures with the standard library only. Errors are
ValueError with a message that never contains key bytes.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class VerifyKey:
    """An Ed25519 public key."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def pem(self) -> bytes:
        return self._key.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def fingerprint(self) -> str:
        raw = self._key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return hashlib.sha256(raw).hexdigest()


class SigningKey:
    """An Ed25519 private key; its repr never shows the key."""

    __slots__ = ("_key", "public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = VerifyKey(key.public_key())

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public.fingerprint()[:16]})"

    @classmethod
    def generate_pem(cls) -> bytes:
        """A fresh key as unencrypted PKCS#8 PEM, for a 0600 file."""
        return Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())

    @classmethod
    def load(cls, data: bytes) -> SigningKey:
        """From unencrypted PEM (PKCS#8) or the raw 32-byte private key."""
        if len(data) == 32:
            return cls(Ed25519PrivateKey.from_private_bytes(data))
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ValueError("not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 key")
        return cls(key)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)
