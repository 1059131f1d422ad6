"""The algorithm registry: every algorithm FerroHSM offers, with its capability flags.

Callers allow-list through this table (like pyjwt's ``algorithms=`` or Vault's
``KeyType.SigningSupported()``): a name that is not a key of ``ALGORITHMS`` is refused before any
key is generated or loaded, and a usage is accepted only when the algorithm lists it. Adding an
algorithm means adding one row here and teaching ``ops`` its primitive; nothing else branches on
algorithm names.

``generate()`` returns *unsealed* material in the one format ``ops.load`` parses: 32 raw bytes for
AES, unencrypted PKCS#8 DER for RSA and EC. The caller seals it at once (``seal.Sealer``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..domain.errors import BadRequest
from ..domain.shown import shown

__all__ = ["ALGORITHMS", "USAGES", "Algorithm", "check_usage", "get_algorithm"]

RSA_PUBLIC_EXPONENT = 65537
# The curve object for each EC key size, shared by generation here and the load check in ``ops``.
EC_CURVES: dict[int, type[ec.EllipticCurve]] = {256: ec.SECP256R1, 384: ec.SECP384R1}


@dataclass(frozen=True, slots=True)
class Algorithm:
    """One row of the registry.

    ``signature_schemes`` lists the schemes a sign key accepts, the default first; it is empty for
    AES. ``key_bits`` (the AES key size, RSA modulus size or EC curve size) is what ``ops.load``
    checks stored material against, so an rsa-4096 record can never quietly hold a 2048-bit key.
    """

    name: str
    family: str  # "aes" | "rsa" | "ec"
    usages: frozenset[str]
    signature_schemes: tuple[str, ...]
    key_bits: int

    @property
    def default_scheme(self) -> str | None:
        """The scheme used when a sign request names none; None for AES."""
        return self.signature_schemes[0] if self.signature_schemes else None

    def generate(self) -> bytes:
        """Fresh unsealed key material (raw AES key, or PKCS#8 DER of the private key)."""
        if self.family == "aes":
            return os.urandom(self.key_bits // 8)
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if self.family == "rsa":
            private = rsa.generate_private_key(RSA_PUBLIC_EXPONENT, self.key_bits)
        else:
            private = ec.generate_private_key(EC_CURVES[self.key_bits]())
        return private.private_bytes(serialization.Encoding.DER,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())


_RSA_SCHEMES = ("rsa-pss-sha256", "rsa-pkcs1v15-sha256")
_SIGN = frozenset({"sign"})

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("aes-256-gcm", "aes", frozenset({"encrypt", "wrap"}), (), 256),
    Algorithm("rsa-2048", "rsa", _SIGN, _RSA_SCHEMES, 2048),
    Algorithm("rsa-4096", "rsa", _SIGN, _RSA_SCHEMES, 4096),
    Algorithm("ec-p256", "ec", _SIGN, ("ecdsa-sha256",), 256),
    Algorithm("ec-p384", "ec", _SIGN, ("ecdsa-sha384",), 384),
)}

# Every usage some algorithm serves, in a stable order for error messages.
USAGES: tuple[str, ...] = tuple(sorted({u for a in ALGORITHMS.values() for u in a.usages}))


def get_algorithm(name: object) -> Algorithm:
    """The registry row for ``name``; BadRequest for anything else, including non-strings."""
    if isinstance(name, str):
        found = ALGORITHMS.get(name)
        if found is not None:
            return found
    what = shown(name) if isinstance(name, str) else type(name).__name__
    raise BadRequest(f"unknown algorithm {what}; expected one of: {', '.join(ALGORITHMS)}")


def check_usage(algorithm: object, usage: object) -> Algorithm:
    """The algorithm, once it is known to serve ``usage``; BadRequest naming the allowed usages.

    Called when a key is created, so a key's (algorithm, usage) pair is valid for its whole life.
    """
    algo = get_algorithm(algorithm)
    if not isinstance(usage, str) or usage not in USAGES:
        what = shown(usage) if isinstance(usage, str) else type(usage).__name__
        raise BadRequest(f"unknown usage {what}; expected one of: {', '.join(USAGES)}")
    if usage not in algo.usages:
        allowed = ", ".join(sorted(algo.usages))
        raise BadRequest(f"algorithm {algo.name} cannot be used for {usage}; "
                         f"allowed usage: {allowed}")
    return algo
