"""The backup archive's cipher: AES-256-GCM under a backup key (custody/archive.py has the format).

The backup key is either derived from the master key (HKDF-SHA256, no salt, its own label, so it
is independent of the sealing key, the record MAC key and the check value) or a separate 32-byte
key the operator keeps apart (``FERROHSM_BACKUP_KEY`` or ``[secrets].backup_key_file``).

``key_id`` is a short public name of a backup key (HMAC of a fixed label under it): the archive
header carries it so that restore tells "wrong backup key" apart from "tampered archive" without
trying to decrypt. It reveals nothing usable about the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..domain.errors import ConfigError, IntegrityError

__all__ = ["LABEL", "NONCE_SIZE", "BackupKey"]

LABEL = b"ferrohsm backup archive key v1"
_ID_LABEL = b"ferrohsm backup key id v1"
NONCE_SIZE = 12
_KEY_SIZE = 32


class BackupKey:
    """Encrypts and authenticates one archive body, its header as associated data.

    Only the AESGCM object and the public key id are kept; repr shows neither key nor id."""

    __slots__ = ("_aead", "key_id", "kind")

    def __init__(self, key: bytes, kind: str) -> None:
        if not isinstance(key, bytes) or len(key) != _KEY_SIZE:
            raise ConfigError(f"a backup key must be exactly {_KEY_SIZE} bytes")
        self._aead = AESGCM(key)
        self.kind = kind  # "derived" (from the master key) or "separate"
        self.key_id = hmac.new(key, _ID_LABEL, hashlib.sha256).hexdigest()[:16]

    @classmethod
    def derive(cls, master_key: bytes) -> BackupKey:
        """HKDF-SHA256(master key, info=LABEL): the backup key of this master key."""
        if not isinstance(master_key, bytes) or len(master_key) != _KEY_SIZE:
            raise ConfigError(f"the master key must be exactly {_KEY_SIZE} bytes")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=_KEY_SIZE, salt=None, info=LABEL)
        return cls(hkdf.derive(master_key), "derived")

    @classmethod
    def separate(cls, key: bytes) -> BackupKey:
        return cls(key, "separate")

    def __repr__(self) -> str:
        return f"BackupKey({self.kind})"

    def seal(self, header: bytes, body: bytes) -> bytes:
        """nonce | ciphertext | tag, the header authenticated alongside."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, body, header)

    def open(self, header: bytes, sealed: bytes) -> bytes:
        """The body; IntegrityError when any byte of header or body was changed or cut."""
        if len(sealed) < NONCE_SIZE + 16:
            raise IntegrityError("the backup archive is truncated")
        try:
            return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], header)
        except InvalidTag:
            raise IntegrityError("the backup archive fails its authentication: it was changed, "
                                 "truncated or spliced after it was written") from None
