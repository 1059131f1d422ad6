"""Cryptographic operations on UNSEALED key material, and the ``fhsm:v<N>:`` text format.

Theory of operation
-------------------
``load(algorithm, material)`` parses one key version's material exactly once and returns a
``LoadedKey``: for AES it holds a ready ``AESGCM`` object (building one costs more than the
encryption of a small payload: 1.26 vs 0.44 µs) and the raw key for RFC 5649 wrapping; for RSA and
EC it holds the private key object and its public half. The service caches LoadedKeys per key
version and passes them to the module functions below::

    encrypt(k, plaintext, aad) -> nonce(12) || ciphertext || tag(16)
    decrypt(k, blob, aad) -> plaintext                  # CryptoFailure on ANY failure
    sign(k, data, prehashed=..., scheme=...) -> (DER signature, scheme used)
    verify(k, data, signature, prehashed=..., scheme=...) -> bool
    wrap(k, key_material) -> RFC 5649 wrapped bytes
    unwrap(k, wrapped) -> key material                  # CryptoFailure on ANY failure
    public_pem(k) -> SubjectPublicKeyInfo PEM

Functions rather than methods keep LoadedKey a plain slotted record. Whether a key's *usage* and
*state* permit an operation is decided in ``ferrohsm.domain.lifecycle``; here every function only refuses
a key of the wrong family with Conflict, as defence in depth.

Failed decryptions and unwraps collapse into one opaque CryptoFailure (Fernet's InvalidToken), so
callers cannot learn whether the tag, the AAD, the length or the key was wrong. Malformed client
input that is not secret-dependent (a digest of the wrong length, an unknown scheme, a malformed
token) is a BadRequest that says what was expected.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from ..domain.errors import BadRequest, Conflict, CryptoFailure, IntegrityError
from ..domain.shown import shown
from .algorithms import EC_CURVES, get_algorithm

__all__ = [
    "NONCE_SIZE",
    "TAG_SIZE",
    "TOKEN_PREFIX",
    "LoadedKey",
    "decrypt",
    "digest_size",
    "encrypt",
    "format_token",
    "hash_name",
    "load",
    "parse_token",
    "public_pem",
    "sign",
    "unwrap",
    "verify",
    "wrap",
]

NONCE_SIZE = 12  # 96-bit random nonce per message, the size GCM is designed for
TAG_SIZE = 16
TOKEN_PREFIX = "fhsm:v"  # noqa: S105  the ciphertext token's prefix, not a password
MAX_TOKEN_VERSION_DIGITS = 9
_MEMORYVIEW_ABOVE = 4096  # below this, slicing bytes is cheaper than making a memoryview

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class _Scheme(NamedTuple):
    """A signature scheme with its argument objects built once (they are immutable and shareable)."""

    family: str
    hash_name: str
    digest_size: int
    pad: padding.AsymmetricPadding | None  # None for ECDSA
    whole: hashes.HashAlgorithm | ec.ECDSA  # ``data`` is the message
    prehashed: utils.Prehashed | ec.ECDSA  # ``data`` is its digest


def _rsa(pad: padding.AsymmetricPadding, algo: hashes.HashAlgorithm) -> _Scheme:
    return _Scheme("rsa", algo.name, algo.digest_size, pad, algo, utils.Prehashed(algo))


def _ecdsa(algo: hashes.HashAlgorithm) -> _Scheme:
    return _Scheme("ec", algo.name, algo.digest_size, None, ec.ECDSA(algo),
                   ec.ECDSA(utils.Prehashed(algo)))


# PSS: MGF1 with the message hash and a salt as long as the digest (32 bytes), which is what
# `openssl dgst -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32` expects. Verification
# takes any salt length (RFC 8017 leaves it to the signer): Vault signs with the largest, and
# its signatures, made by a key imported from it, were answered "valid": false.
_SCHEMES: dict[str, _Scheme] = {
    "rsa-pss-sha256": _rsa(padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                       salt_length=hashes.SHA256.digest_size), hashes.SHA256()),
    "rsa-pkcs1v15-sha256": _rsa(padding.PKCS1v15(), hashes.SHA256()),
    "ecdsa-sha256": _ecdsa(hashes.SHA256()),
    "ecdsa-sha384": _ecdsa(hashes.SHA384()),
}
_DIGEST_SIZES = frozenset(s.digest_size for s in _SCHEMES.values())
_ANY_SALT = {"sha256": padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                   salt_length=padding.PSS.AUTO)}  # verification only


class LoadedKey:
    """One key version's parsed material. Never printed: its repr shows the algorithm only."""

    __slots__ = ("_aead", "_private", "_public", "_raw", "_schemes", "algorithm", "family")

    def __init__(self, algorithm: str, family: str, *, aead: AESGCM | None = None,
                 raw: bytes | None = None, private: PrivateKey | None = None,
                 schemes: tuple[str, ...] = ()) -> None:
        self.algorithm = algorithm
        self.family = family
        self._aead = aead
        self._raw = raw
        self._private = private
        self._public: PublicKey | None = private.public_key() if private is not None else None
        self._schemes = schemes

    def __repr__(self) -> str:
        return f"LoadedKey(algorithm={self.algorithm!r})"


def load(algorithm: str, material: bytes) -> LoadedKey:
    """Parse unsealed material once; IntegrityError if it is not a key of ``algorithm``.

    Unsealing already proved the bytes are the ones we stored, so a parse failure here means the
    stored record itself is wrong (wrong algorithm recorded, or a bug): a server-side fault.
    """
    algo = get_algorithm(algorithm)
    failure = f"key material is not a valid {algo.name} key"
    if not isinstance(material, bytes):
        raise IntegrityError(failure)
    if algo.family == "aes":
        if len(material) != algo.key_bits // 8:
            raise IntegrityError(failure)
        return LoadedKey(algo.name, "aes", aead=AESGCM(material), raw=material)
    try:
        # OpenSSL's RSA key check costs 35 ms (2048) to 250 ms (4096) per load. It only guards
        # against keys we did not make: ours come from ``Algorithm.generate`` and reach this point
        # only after unsealing proved them byte-for-byte authentic (AES-GCM under the master key).
        private = serialization.load_der_private_key(material, password=None,
                                                     unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IntegrityError(failure) from None
    if algo.family == "rsa":
        ok = isinstance(private, rsa.RSAPrivateKey) and private.key_size == algo.key_bits
    else:
        ok = (isinstance(private, ec.EllipticCurvePrivateKey)
              and isinstance(private.curve, EC_CURVES[algo.key_bits]))
    if not ok:
        raise IntegrityError(failure)
    assert isinstance(private, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))  # noqa: S101  type narrowing
    return LoadedKey(algo.name, algo.family, private=private, schemes=algo.signature_schemes)


def _aead_of(k: LoadedKey) -> AESGCM:
    if k._aead is None:
        raise Conflict(f"{k.algorithm} keys cannot encrypt, decrypt, wrap or unwrap")
    return k._aead


def encrypt(k: LoadedKey, plaintext: bytes, aad: bytes | None) -> bytes:
    """AES-256-GCM under a fresh random 96-bit nonce: nonce || ciphertext || tag.

    The hot path of the service, so it builds nothing per call: the AESGCM object was made at load.
    """
    aead = k._aead
    if aead is None:
        raise Conflict(f"{k.algorithm} keys cannot encrypt")
    nonce = os.urandom(NONCE_SIZE)
    return nonce + aead.encrypt(nonce, plaintext, aad)


def decrypt(k: LoadedKey, blob: bytes, aad: bytes | None) -> bytes:
    """Open nonce || ciphertext || tag; one opaque CryptoFailure for every kind of failure."""
    aead = _aead_of(k)
    if len(blob) < NONCE_SIZE + TAG_SIZE:
        raise CryptoFailure("decryption failed")
    body = memoryview(blob)[NONCE_SIZE:] if len(blob) > _MEMORYVIEW_ABOVE else blob[NONCE_SIZE:]
    try:
        return aead.decrypt(blob[:NONCE_SIZE], body, aad)
    except (InvalidTag, ValueError, OverflowError):
        raise CryptoFailure("decryption failed") from None


def wrap(k: LoadedKey, key_material: bytes) -> bytes:
    """RFC 5649 AES key wrap with padding, so key material of any length (>= 1 byte) fits."""
    _aead_of(k)
    if not isinstance(key_material, bytes) or not key_material:
        raise BadRequest("key_material must be at least one byte")
    assert k._raw is not None  # noqa: S101  narrows a type for mypy, not a runtime check
    return aes_key_wrap_with_padding(k._raw, key_material)


def unwrap(k: LoadedKey, wrapped: bytes) -> bytes:
    """Reverse ``wrap``; one opaque CryptoFailure for every kind of failure."""
    _aead_of(k)
    assert k._raw is not None  # noqa: S101  narrows a type for mypy, not a runtime check
    try:
        return aes_key_unwrap_with_padding(k._raw, wrapped)
    except (InvalidUnwrap, ValueError, TypeError):
        raise CryptoFailure("unwrap failed") from None


def _scheme_for(k: LoadedKey, data: bytes, prehashed: bool, scheme: str | None) -> _Scheme:
    """The scheme a sign/verify runs with, after checking the key family and the digest length."""
    if k._private is None:
        raise Conflict(f"{k.algorithm} keys cannot sign or verify")
    name = k._schemes[0] if scheme is None else scheme
    if not isinstance(name, str) or name not in k._schemes:
        what = shown(name) if isinstance(name, str) else type(name).__name__
        # a scheme the API knows but this key does not allow: 409; any other value: 400
        refusal = Conflict if isinstance(name, str) and name in _SCHEMES else BadRequest
        raise refusal(f"signature algorithm {what} is not allowed for {k.algorithm}; "
                         f"allowed: {', '.join(k._schemes)}")
    chosen = _SCHEMES[name]
    if not isinstance(data, bytes):
        raise BadRequest("data to sign or verify must be bytes")
    if prehashed and len(data) != chosen.digest_size:
        # the size of another scheme's digest: this key does not allow it (409); any other: 400
        refusal = Conflict if len(data) in _DIGEST_SIZES else BadRequest
        raise refusal(f"digest for {name} must be {chosen.digest_size} bytes "
                         f"({chosen.hash_name}), got {len(data)}")
    return chosen


def sign(k: LoadedKey, data: bytes, *, prehashed: bool = False,
         scheme: str | None = None) -> tuple[bytes, str]:
    """DER signature over ``data`` (or over the digest ``data`` when prehashed), and its scheme."""
    s = _scheme_for(k, data, prehashed, scheme)
    algo = s.prehashed if prehashed else s.whole
    private = k._private
    if isinstance(private, rsa.RSAPrivateKey):
        assert s.pad is not None and not isinstance(algo, ec.ECDSA)  # noqa: S101  type narrowing
        signature = private.sign(data, s.pad, algo)
    else:
        assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(algo, ec.ECDSA)  # noqa: S101  type narrowing
        signature = private.sign(data, algo)
    return signature, k._schemes[0] if scheme is None else scheme


def verify(k: LoadedKey, data: bytes, signature: bytes, *, prehashed: bool = False,
           scheme: str | None = None) -> bool:
    """True only for a valid signature; False (not an exception) for a wrong or malformed one.

    A wrong digest length or a scheme the key does not allow is still a BadRequest. With no
    scheme named, an RSA key's signature verifies under either scheme it signs with (PSS, the
    default, then PKCS#1 v1.5): the verify request of the API has no algorithm member, and a
    valid signature by the key is its signature whichever padding made it.
    """
    if _verify(k, data, signature, prehashed, scheme):
        return True
    if scheme is None and isinstance(k._public, rsa.RSAPublicKey):
        return _verify(k, data, signature, prehashed, "rsa-pkcs1v15-sha256")
    return False


def _verify(k: LoadedKey, data: bytes, signature: bytes, prehashed: bool,
            scheme: str | None) -> bool:
    s = _scheme_for(k, data, prehashed, scheme)
    if not isinstance(signature, bytes):
        raise BadRequest("signature must be bytes")
    algo = s.prehashed if prehashed else s.whole
    public = k._public
    try:
        if isinstance(public, rsa.RSAPublicKey):
            assert s.pad is not None and not isinstance(algo, ec.ECDSA)  # noqa: S101  type narrowing
            pad = _ANY_SALT[s.hash_name] if isinstance(s.pad, padding.PSS) else s.pad
            public.verify(signature, data, pad, algo)
        else:
            assert isinstance(public, ec.EllipticCurvePublicKey) and isinstance(algo, ec.ECDSA)  # noqa: S101  type narrowing
            public.verify(signature, data, algo)
    except (InvalidSignature, ValueError):
        return False
    return True


def public_pem(k: LoadedKey) -> str:
    """SubjectPublicKeyInfo PEM of an asymmetric key; Conflict for AES (there is no public half)."""
    if k._public is None:
        raise Conflict(f"{k.algorithm} keys have no public key")
    return k._public.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def hash_name(scheme: str) -> str:
    """The hash a scheme signs with ("sha256" or "sha384"); BadRequest for an unknown scheme."""
    return _known_scheme(scheme).hash_name


def digest_size(scheme: str) -> int:
    """The digest length in bytes a prehashed sign/verify with ``scheme`` requires."""
    return _known_scheme(scheme).digest_size


def _known_scheme(scheme: str) -> _Scheme:
    found = _SCHEMES.get(scheme) if isinstance(scheme, str) else None
    if found is None:
        raise BadRequest(f"unknown signature algorithm; expected one of: {', '.join(_SCHEMES)}")
    return found


# The version is a positive decimal without sign, leading zeros or spaces (ASCII digits only).
# The payload after the prefix is checked by the strict base64 decoder, which is faster than a regex.
_MAX_TOKEN_VERSION = 10 ** MAX_TOKEN_VERSION_DIGITS
# ``vault:v<N>:`` is the same token as Vault's transit engine spells it (the payload is the same
# nonce || ciphertext || tag), so either API decrypts what the other made (api/transit).
_TOKEN_PREFIX_RE = re.compile(r"(?:fhsm|vault):v([1-9][0-9]{0,8}):")  # 9 digits at most


def format_token(version: int, blob: bytes) -> str:
    """``fhsm:v<version>:<base64>``: the text form of a ciphertext or wrapped key."""
    if ((type(version) is not int  # the exact-int fast path; subclasses other than bool pass
         and (isinstance(version, bool) or not isinstance(version, int)))
            or not 1 <= version < _MAX_TOKEN_VERSION):
        raise ValueError("token version must be a positive int of at most 9 digits")
    # b2a_base64 is what b64encode calls, without its Python-level wrapper
    return f"{TOKEN_PREFIX}{version}:{binascii.b2a_base64(blob, newline=False).decode('ascii')}"


def parse_token(text: object) -> tuple[int, bytes]:
    """(version, blob) from ``fhsm:v<version>:<base64>`` (or ``vault:v…``, Vault's spelling);
    BadRequest("malformed ciphertext") else.

    Strict on purpose (every byte format is versioned and rejected when unknown): one spelling per
    token, so a token never means two things and never reaches the cipher in a guessed form.
    """
    if not isinstance(text, str) or (match := _TOKEN_PREFIX_RE.match(text)) is None:
        raise BadRequest("malformed ciphertext")
    payload = text[match.end():]
    try:
        # strict: only the base64 alphabet, correct padding, nothing after it; str must be ASCII
        blob = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("malformed ciphertext") from None
    # Python 3.11's strict decoder still accepts some non-canonical spellings: surplus padding
    # ("AAAA=") and stray bits before the padding ("AB=="). The canonical spelling has exactly
    # 4 * ceil(n / 3) characters, and only the last group can carry stray bits, so checking the
    # length and re-encoding that one group is enough (no second pass over a large payload).
    tail = payload[-4:]
    if (not blob or len(payload) != 4 * ((len(blob) + 2) // 3)
            or base64.b64encode(base64.b64decode(tail)).decode("ascii") != tail):
        raise BadRequest("malformed ciphertext")
    return int(match.group(1)), blob
