"""Sealing key material under the 32-byte master key, and loading that master key.

Sealed blob (format 0x01)::

    0x01 | nonce (12 random bytes) | AES-256-GCM(master key, nonce, material, AAD) incl. 16-byte tag

The AAD binds the blob to its context so it cannot be replayed elsewhere (Vault's barrier uses the
storage path the same way)::

    AAD = 0x01 | lp(purpose) | lp(key id) | u32(version) | lp(algorithm)      lp(x) = u32(len x) | x

Fields are length-prefixed, so ("ab", "c") and ("a", "bc") can never produce the same AAD, and the
purpose label keeps the master-key check value apart from every key. A flipped byte, a truncation,
an unknown format byte, a blob moved to another key/version/algorithm and a wrong master key all
fail the same GCM tag check and raise IntegrityError: unseal never returns wrong bytes.

The check value is a sealed constant under the purpose "check". The service stores it on first
start and verifies it at every start, so a wrong master key stops start-up with a clear message
instead of surfacing later as integrity errors on every key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..domain.errors import ConfigError, IntegrityError

__all__ = ["FORMAT", "MASTER_KEY_ENV", "MASTER_KEY_SIZE", "Sealer"]

FORMAT = 0x01
MASTER_KEY_SIZE = 32
MASTER_KEY_ENV = "FERROHSM_MASTER_KEY"
_NONCE_SIZE = 12
_TAG_SIZE = 16
_HEADER = bytes([FORMAT])
_KEY_PURPOSE = b"key-material"
_CHECK_PURPOSE = b"check"
_CHECK_PLAINTEXT = b"ferrohsm master key check value v1"
_MAX_KEY_FILE = 4096  # a base64 key is 44 characters; refuse to slurp anything large
_WRONG_MASTER = "the master key does not match the one this key store (data directory or database) was sealed with"


def _lp(field: bytes) -> bytes:
    return struct.pack(">I", len(field)) + field


def _aad(purpose: bytes, key_id: str, version: int, algorithm: str) -> bytes:
    """The unambiguous context a blob is bound to (see the module docstring)."""
    if not isinstance(key_id, str) or not isinstance(algorithm, str):
        raise TypeError("key_id and algorithm must be str")
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2 ** 32:
        raise ValueError("version must be an int in [0, 2**32)")
    return b"".join((_HEADER, _lp(purpose), _lp(key_id.encode()), struct.pack(">I", version),
                     _lp(algorithm.encode())))


class Sealer:
    """Seals and unseals key material under one master key.

    The raw master key is not kept as an attribute: only the AESGCM object built from it (once,
    since every seal/unseal reuses it) and a non-secret fingerprint for health output.

    ``random_bytes`` is where nonces come from. Production always uses the default,
    ``os.urandom``; the seam exists so that tests/vectors/sealed_blobs.json can record the exact
    bytes of sealed blobs (with recorded nonces) and prove the on-disk format stays readable.
    A GCM nonce must never repeat under one master key, so nothing else belongs here.
    """

    __slots__ = ("_aead", "_fingerprint", "_random_bytes")

    def __init__(self, master_key: bytes, *,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        if not isinstance(master_key, bytes) or len(master_key) != MASTER_KEY_SIZE:
            raise ConfigError(f"the master key must be exactly {MASTER_KEY_SIZE} bytes")
        self._aead = AESGCM(master_key)
        self._random_bytes = random_bytes
        mac = hmac.new(master_key, b"ferrohsm fingerprint", hashlib.sha256)
        self._fingerprint = mac.hexdigest()[:8]

    def __repr__(self) -> str:
        return f"Sealer(fingerprint={self._fingerprint!r})"

    def fingerprint(self) -> str:
        """8 hex characters identifying the master key without revealing it (HMAC-SHA256)."""
        return self._fingerprint

    def seal(self, material: bytes, *, key_id: str, version: int, algorithm: str) -> bytes:
        """FORMAT | nonce | ciphertext+tag, bound to (key_id, version, algorithm)."""
        aad = _aad(_KEY_PURPOSE, key_id, version, algorithm)
        if version < 1:
            raise ValueError("key versions start at 1")
        return self._seal(material, aad)

    def unseal(self, blob: bytes, *, key_id: str, version: int, algorithm: str) -> bytes:
        """The material sealed for exactly this context, or IntegrityError naming key and version."""
        opened = self._open(blob, _aad(_KEY_PURPOSE, key_id, version, algorithm))
        if opened is None:
            raise IntegrityError(f"sealed material of key {key_id} version {version} failed its "
                                 "integrity check", key_id=key_id, version=version)
        return opened

    def make_check_value(self) -> bytes:
        """A sealed constant in a context no key can have; stored once per data directory."""
        return self._seal(_CHECK_PLAINTEXT, _aad(_CHECK_PURPOSE, "", 0, ""))

    def verify_check_value(self, blob: bytes) -> None:
        """ConfigError unless ``blob`` came from ``make_check_value`` under this master key."""
        opened = self._open(blob, _aad(_CHECK_PURPOSE, "", 0, ""))
        if opened is None or not hmac.compare_digest(opened, _CHECK_PLAINTEXT):
            raise ConfigError(_WRONG_MASTER)

    def _seal(self, material: bytes, aad: bytes) -> bytes:
        if not isinstance(material, bytes) or not material:
            raise ValueError("material to seal must be non-empty bytes")
        nonce = self._random_bytes(_NONCE_SIZE)
        if len(nonce) != _NONCE_SIZE:
            raise ValueError(f"the nonce source returned {len(nonce)} bytes, not {_NONCE_SIZE}")
        return b"".join((_HEADER, nonce, self._aead.encrypt(nonce, material, aad)))

    def _open(self, blob: bytes, aad: bytes) -> bytes | None:
        """The plaintext, or None for any failure: callers raise their own error, which never
        includes the blob's bytes."""
        if not isinstance(blob, bytes) or len(blob) < 1 + _NONCE_SIZE + _TAG_SIZE:
            return None
        if blob[0] != FORMAT:  # unknown formats are rejected, never guessed
            return None
        try:
            return self._aead.decrypt(blob[1:1 + _NONCE_SIZE], blob[1 + _NONCE_SIZE:], aad)
        except InvalidTag:
            return None
