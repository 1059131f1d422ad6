"""RFC 7515 / RFC 8555 section 6.2 JWS: ES256 (P-256) account key, flattened JSON serialization.

ES256 because it is what every ACME CA accepts, keys are small and signing is fast; the
signature is the raw 64-byte r||s form JWS requires (not DER). The account key never leaves
this module except as its PEM for the 0600 cache file.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JOSE wants it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int) -> bytes:
    return value.to_bytes(32, "big")


class AccountKey:
    """An ES256 ACME account key: signs requests, names itself as a JWK and its thumbprint."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("the ACME account key must be a P-256 key")
        self._key = key

    @classmethod
    def generate(cls) -> AccountKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: bytes) -> AccountKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the ACME account key must be an EC key")
        return cls(key)

    def to_pem(self) -> bytes:
        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def jwk(self) -> dict[str, str]:
        """The public JWK with exactly the required members (RFC 7638 order for the thumbprint)."""
        numbers = self._key.public_key().public_numbers()
        return {"crv": "P-256", "kty": "EC", "x": b64url(_int_bytes(numbers.x)),
                "y": b64url(_int_bytes(numbers.y))}

    def thumbprint(self) -> str:
        """RFC 7638 JWK thumbprint (SHA-256), base64url."""
        canonical = json.dumps(self.jwk(), separators=(",", ":"), sort_keys=True)
        return b64url(hashlib.sha256(canonical.encode("ascii")).digest())

    def key_authorization(self, token: str) -> str:
        """RFC 8555 section 8.1: ``token || '.' || thumbprint``."""
        return f"{token}.{self.thumbprint()}"

    def sign(self, payload: Any, url: str, nonce: str, kid: str | None) -> bytes:
        """A flattened JWS of ``payload`` (None = POST-as-GET, the empty payload) for ``url``.

        With ``kid`` (the account URL) the header names the account; without it (newAccount)
        it carries the public JWK.
        """
        protected: dict[str, Any] = {"alg": "ES256", "nonce": nonce, "url": url}
        if kid is None:
            protected["jwk"] = self.jwk()
        else:
            protected["kid"] = kid
        header_b64 = b64url(json.dumps(protected, separators=(",", ":")).encode())
        payload_b64 = "" if payload is None else b64url(
            json.dumps(payload, separators=(",", ":")).encode())
        der = self._key.sign(f"{header_b64}.{payload_b64}".encode("ascii"),
                             ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        body = {"protected": header_b64, "payload": payload_b64,
                "signature": b64url(_int_bytes(r) + _int_bytes(s))}
        return json.dumps(body, separators=(",", ":")).encode()
