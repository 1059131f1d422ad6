"""The ``vault:v<N>:<base64>`` text of ciphertexts and signatures, and Vault's signature options.

A FerroHSM ciphertext ``fhsm:v<N>:<base64>`` and a Vault one differ only in the prefix: the
payload is the same nonce || ciphertext || tag of AES-256-GCM, so the engine reads both
(crypto/ops.py ``parse_token``) and either surface decrypts what the other made. A transit
signature is ``vault:v<N>:`` and the base64 of the DER (ASN.1) signature the native API returns.
"""

from __future__ import annotations

import binascii
import re

from ...domain.errors import BadRequest
from .body import LINE_BREAKS, NOT_SUPPORTED, std_base64

NATIVE, VAULT = "fhsm:", "vault:"
# Vault reads the version with Go's strconv.Atoi ("v01" is version 1) and the base64 with
# base64.StdEncoding (line breaks skipped); signs, spaces, an empty version or 0 stay refused
_SIGNATURE_RE = re.compile(r"vault:v0*([1-9][0-9]{0,8}):([A-Za-z0-9+/=\r\n]+)")
_CIPHERTEXT_RE = re.compile(r"(fhsm|vault):v0*([1-9][0-9]{0,8}):([A-Za-z0-9+/=\r\n]*)")
DEFAULT_HASH = "sha2-256"  # Vault's default hash_algorithm
# (FerroHSM algorithm, Vault hash_algorithm, Vault signature_algorithm) -> FerroHSM scheme
_SCHEMES: dict[tuple[str, str, str], str] = {
    **{(rsa, "sha2-256", "pss"): "rsa-pss-sha256" for rsa in ("rsa-2048", "rsa-4096")},
    **{(rsa, "sha2-256", "pkcs1v15"): "rsa-pkcs1v15-sha256" for rsa in ("rsa-2048", "rsa-4096")},
    ("ec-p256", "sha2-256", ""): "ecdsa-sha256",
    ("ec-p384", "sha2-384", ""): "ecdsa-sha384",
}
_HASHES = {"ec-p256": "sha2-256", "ec-p384": "sha2-384", "rsa-2048": "sha2-256",
           "rsa-4096": "sha2-256"}


def to_vault(token: str) -> str:
    """A FerroHSM ciphertext in Vault's spelling (same version, same payload)."""
    return VAULT + token[len(NATIVE):] if token.startswith(NATIVE) else token


def canonical_ciphertext(text: str) -> str:
    """The one spelling the engine reads (crypto/ops.py ``parse_token``, strict for the native
    API on purpose) of a ciphertext as Vault would read it: the version without leading zeros,
    the base64 without line breaks (a ciphertext read from a file keeps its newline). Only
    these two of Vault's allowances: anything else is returned unchanged, for the engine to
    refuse as it always has (stray bits before the padding, and ``v0``, which Vault reads as
    version 1, included), so a token never reaches the cipher in a guessed form."""
    match = _CIPHERTEXT_RE.fullmatch(text)
    if match is None:
        return text
    prefix, version, payload = match.groups()
    return f"{prefix}:v{version}:{payload.translate(LINE_BREAKS)}"


def format_signature(version: int, der: bytes) -> str:
    return f"{VAULT}v{version}:{binascii.b2a_base64(der, newline=False).decode('ascii')}"


def parse_signature(text: str) -> tuple[int, bytes]:
    """(version, DER signature) from ``vault:v<N>:<base64>``; 400 otherwise."""
    match = _SIGNATURE_RE.fullmatch(text)
    if match is None:
        raise BadRequest("invalid signature: expected vault:v<version>:<base64>")
    try:
        der = std_base64(match.group(2))
    except ValueError:
        der = b""
    if not der:
        raise BadRequest("invalid signature: bad base64")
    return int(match.group(1)), der


def scheme(algorithm: str, hash_algorithm: str | None, signature_algorithm: str | None) -> str:
    """The FerroHSM scheme for Vault's options on a key of ``algorithm``; 400 naming what is
    supported when FerroHSM has no such combination (never a silently different signature)."""
    hashed = hash_algorithm or DEFAULT_HASH
    family_rsa = algorithm.startswith("rsa-")
    padding = (signature_algorithm or "pss") if family_rsa else ""
    found = _SCHEMES.get((algorithm, hashed, padding))
    if found is not None:
        return found
    if algorithm not in _HASHES:
        raise BadRequest(f"{algorithm} keys cannot sign")
    if family_rsa and padding not in ("pss", "pkcs1v15"):
        raise BadRequest(f"signature_algorithm {padding[:40]!a} is {NOT_SUPPORTED} "
                         f"(supported: pss, pkcs1v15)")
    raise BadRequest(f"hash_algorithm {hashed[:40]!a} with {algorithm} keys is "
                     f"{NOT_SUPPORTED} (supported: {_HASHES[algorithm]})")
