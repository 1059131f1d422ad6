"""Encrypting an unseal share to its custodian's own public key (``ferrohsm init --custodian-key``).

Two recipient kinds, told apart by the public key PEM; the result starts with a kind byte:

X25519 (ECIES)::

    0x01 | ephemeral X25519 public key (32) | nonce (12) | AES-256-GCM(k, nonce, share, AAD)
    k   = HKDF-SHA256(ikm = X25519(ephemeral private, custodian public),
                      salt = ephemeral public | custodian public, info = INFO, length 32)
    AAD = INFO | ephemeral public | custodian public            INFO = b"ferrohsm custodian share v1"

RSA (2048 bits or more)::

    0x02 | RSA-OAEP(SHA-256, MGF1-SHA-256, no label)(share)

Only the custodian's private key opens it (``decrypt_share``; ``ferrohsm unseal --private-key``);
the server never sees that key. Any failure to open is one opaque ValueError.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["INFO", "decrypt_share", "encrypt_share", "recipient_kind"]

INFO = b"ferrohsm custodian share v1"
_X25519, _RSA = 0x01, 0x02
_MIN_RSA_BITS = 2048
_OPEN_FAILED = "the encrypted share cannot be opened with this private key"


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _derive(shared: bytes, eph: bytes, recipient: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=eph + recipient, info=INFO)
    return hkdf.derive(shared)


def _load_public(pem: bytes) -> x25519.X25519PublicKey | rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ValueError("not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise ValueError(f"an RSA custodian key must have at least {_MIN_RSA_BITS} bits")
        return key
    if isinstance(key, x25519.X25519PublicKey):
        return key
    raise ValueError("a custodian key must be an X25519 or RSA public key")


def recipient_kind(pem: bytes) -> str:
    """"x25519" or "rsa"; ValueError for anything else (checked before a share exists)."""
    return "rsa" if isinstance(_load_public(pem), rsa.RSAPublicKey) else "x25519"


def encrypt_share(pem: bytes, share: bytes) -> bytes:
    """``share`` readable only with the private key of the public key ``pem``."""
    key = _load_public(pem)
    if isinstance(key, rsa.RSAPublicKey):
        return bytes([_RSA]) + key.encrypt(share, _oaep())
    eph = x25519.X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes_raw()
    recipient = key.public_bytes_raw()
    nonce = os.urandom(12)
    sealed = AESGCM(_derive(eph.exchange(key), eph_pub, recipient)).encrypt(
        nonce, share, INFO + eph_pub + recipient)
    return b"".join((bytes([_X25519]), eph_pub, nonce, sealed))


def decrypt_share(private_pem: bytes, blob: bytes, password: bytes | None = None) -> bytes:
    """The share ``encrypt_share`` sealed; ValueError (one message) for any failure."""
    try:
        key = serialization.load_pem_private_key(private_pem, password=password)
    except (ValueError, TypeError):
        raise ValueError("not a readable PEM private key (wrong or missing password?)") from None
    try:
        if blob[:1] == bytes([_RSA]) and isinstance(key, rsa.RSAPrivateKey):
            return key.decrypt(blob[1:], _oaep())
        if blob[:1] == bytes([_X25519]) and isinstance(key, x25519.X25519PrivateKey) \
                and len(blob) > 1 + 32 + 12 + 16:
            eph_pub, nonce, sealed = blob[1:33], blob[33:45], blob[45:]
            recipient = key.public_key().public_bytes_raw()
            shared = key.exchange(x25519.X25519PublicKey.from_public_bytes(eph_pub))
            return AESGCM(_derive(shared, eph_pub, recipient)).decrypt(
                nonce, sealed, INFO + eph_pub + recipient)
    except (InvalidTag, ValueError):
        pass
    raise ValueError(_OPEN_FAILED)
