"""The hazmat side of certificate handling for tls/ (PEM pair checks, OCSP signatures).

Kept here so that ``crypto/`` stays the only importer of ``cryptography.hazmat``: tls/pair.py
asks whether a private key belongs to a certificate, tls/ocsp.py whether an OCSP response was
signed by a certificate's key. Errors never carry key bytes.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509 import ocsp

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(key_pem: bytes) -> PrivateKeyTypes:
    """An unencrypted PEM private key; ValueError (naming no key content) otherwise."""
    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not an unencrypted PEM private key") from None


def key_matches_certificate(key_pem: bytes, cert: x509.Certificate) -> bool:
    """Whether the unencrypted PEM private key ``key_pem`` holds ``cert``'s public key.

    ValueError (its message naming no key content) when the key cannot be parsed at all.
    """
    key = load_private_key(key_pem)
    return key.public_key().public_bytes(*_SPKI) == cert.public_key().public_bytes(*_SPKI)


def der(value: x509.Certificate | ocsp.OCSPRequest) -> bytes:
    """The DER encoding of a certificate or an OCSP request."""
    return value.public_bytes(serialization.Encoding.DER)


def cert_id_hash() -> hashes.HashAlgorithm:
    """The hash of an OCSP CertID: SHA-1, what RFC 6960 responders (openssl ocsp) expect."""
    return hashes.SHA1()  # noqa: S303  an identifier in the OCSP protocol, not a signature


def signed_by(cert: x509.Certificate, signature: bytes, data: bytes,
              hash_algorithm: hashes.HashAlgorithm | None) -> bool:
    """Whether ``signature`` over ``data`` verifies under ``cert``'s public key (RSA PKCS#1 v1.5,
    ECDSA, Ed25519/Ed448: the algorithms an OCSP responder signs with)."""
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey) and hash_algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and hash_algorithm is not None:
            key.verify(signature, data, ec.ECDSA(hash_algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True
