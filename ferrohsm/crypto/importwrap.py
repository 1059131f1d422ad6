"""Key import (BYOK): the RSA-3072 wrapping key of an import job, unwrapping, and validation.

Two wrapping algorithms, as AWS KMS and Google Cloud KMS spell them for an RSA-3072 wrapping key:

``RSA_OAEP_SHA256``
    RSAES-OAEP with SHA-256 and MGF1-SHA-256, no label, straight over the key material. One
    RSA-3072 block carries at most 318 bytes: an AES-256 key, or an EC private key in PKCS#8.
    ``openssl pkeyutl -encrypt -pubin -inkey wrap.pem -pkeyopt rsa_padding_mode:oaep
    -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256`` makes it.

``RSA_AES_KEY_WRAP_SHA256``
    The hybrid for material of any length (AWS ``RSA_AES_KEY_WRAP_SHA_256``, Google
    ``RSA_OAEP_3072_SHA256_AES_256``): a fresh AES-256 key wrapped as above (384 bytes, the
    modulus size), immediately followed by the key material wrapped under that AES key with
    AES Key Wrap with Padding (RFC 5649; ``openssl enc -id-aes256-wrap-pad``).

Whatever fails while unwrapping (a wrong job, a flipped byte, a truncation, the wrong wrapping
algorithm) raises the one opaque ``CryptoFailure``: the answer never says which step failed,
so it is no padding oracle. The unwrapped material is then checked against the algorithm the
request declares (``normalize``) and returned in the form ``ops.load`` parses (32 raw bytes for
AES, unencrypted PKCS#8 DER for RSA and EC), with messages that describe, never echo, it.

The client half (``wrap_for_import``, ``read_material``) is what ``ferrohsm keys import`` runs
locally, so material leaves the operator's machine only wrapped.
"""

from __future__ import annotations

import os

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from ..domain.errors import BadRequest, CryptoFailure
from ..domain.shown import shown
from .algorithms import EC_CURVES, RSA_PUBLIC_EXPONENT, Algorithm, get_algorithm

__all__ = [
    "OAEP_MAX_BYTES",
    "RSA_AES_KEY_WRAP_SHA256",
    "RSA_OAEP_SHA256",
    "WRAPPING_ALGORITHMS",
    "WRAPPING_KEY_BITS",
    "new_wrapping_key",
    "normalize",
    "public_pem",
    "read_material",
    "unwrap",
    "wrap_for_import",
]

RSA_OAEP_SHA256 = "RSA_OAEP_SHA256"
RSA_AES_KEY_WRAP_SHA256 = "RSA_AES_KEY_WRAP_SHA256"
WRAPPING_ALGORITHMS = (RSA_OAEP_SHA256, RSA_AES_KEY_WRAP_SHA256)
WRAPPING_KEY_BITS = 3072
_RSA_BLOCK = WRAPPING_KEY_BITS // 8  # 384: an RSA-3072 ciphertext
OAEP_MAX_BYTES = _RSA_BLOCK - 2 * hashes.SHA256.digest_size - 2  # 318
_EPHEMERAL_BYTES = 32  # the hybrid's AES-256 key
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(),
                     label=None)
_UNWRAP_FAILED = ("the wrapped material could not be unwrapped with this import job's key "
                  "(wrong job, wrong wrapping algorithm, or altered bytes)")
MAX_WRAPPED_BYTES = 16 * 1024  # an RSA-4096 PKCS#8 key wrapped by the hybrid is ~2.8 KiB


def new_wrapping_key() -> bytes:
    """A fresh RSA-3072 private key, unencrypted PKCS#8 DER: the caller seals it at once."""
    private = rsa.generate_private_key(RSA_PUBLIC_EXPONENT, WRAPPING_KEY_BITS)
    return private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def _wrapping_private(private_der: bytes) -> rsa.RSAPrivateKey:
    # The key check costs ~100 ms for RSA-3072 and only guards against keys we did not make:
    # this one came from ``new_wrapping_key`` and was unsealed (authenticated) from its job.
    private = serialization.load_der_private_key(private_der, password=None,
                                                 unsafe_skip_rsa_key_validation=True)
    if not isinstance(private, rsa.RSAPrivateKey) or private.key_size != WRAPPING_KEY_BITS:
        raise ValueError("an import job's wrapping key must be RSA-3072")
    return private


def public_pem(private_der: bytes) -> str:
    """The SubjectPublicKeyInfo PEM a client wraps material with."""
    public = _wrapping_private(private_der).public_key()
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def unwrap(private_der: bytes, wrapping_algorithm: str, wrapped: bytes) -> bytes:
    """The key material inside ``wrapped``; one opaque CryptoFailure for every failure."""
    if wrapping_algorithm not in WRAPPING_ALGORITHMS:
        raise BadRequest("wrapping_algorithm must be one of: " + ", ".join(WRAPPING_ALGORITHMS))
    if not isinstance(wrapped, bytes) or not wrapped or len(wrapped) > MAX_WRAPPED_BYTES:
        raise BadRequest(f"wrapped_material must be 1 to {MAX_WRAPPED_BYTES} bytes")
    private = _wrapping_private(private_der)
    try:
        if wrapping_algorithm == RSA_OAEP_SHA256:
            if len(wrapped) != _RSA_BLOCK:
                raise ValueError("not one RSA-3072 block")
            return private.decrypt(wrapped, _OAEP)
        if len(wrapped) <= _RSA_BLOCK:
            raise ValueError("no AES key wrap part")
        ephemeral = private.decrypt(wrapped[:_RSA_BLOCK], _OAEP)
        if len(ephemeral) != _EPHEMERAL_BYTES:
            raise ValueError("the ephemeral key is not AES-256")
        return aes_key_unwrap_with_padding(ephemeral, wrapped[_RSA_BLOCK:])
    except (ValueError, InvalidUnwrap, TypeError):
        raise CryptoFailure(_UNWRAP_FAILED) from None


MIN_RSA_EXPONENT = 65537  # FIPS 186-5 / SP 800-56B: 2^16 < e < 2^256, odd


def normalize(algorithm: str, material: bytes) -> bytes:
    """``material`` checked to be a key of ``algorithm`` (size, curve, well-formed), in the form
    ``ops.load`` parses; BadRequest saying what was expected, never what was found inside."""
    algo = get_algorithm(algorithm)
    if algo.family == "aes":
        if len(material) != algo.key_bits // 8:
            raise BadRequest(f"{algo.name} key material must be exactly {algo.key_bits // 8} "
                             f"raw bytes; the unwrapped material has {len(material)}")
        if len(set(material)) == 1:  # all zero (an unset buffer), all 0xFF: anyone can guess it
            raise BadRequest(f"the unwrapped {algo.name} key is one byte repeated, not a key: "
                             "make key material with a cryptographic random generator")
        return material
    private = _private_key(algo, material)
    return private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def _private_key(algo: Algorithm, material: bytes) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    expected = f"an unencrypted PKCS#8 DER {algo.name} private key"
    try:
        # Full validation (the RSA key check included): this material was not made by us.
        private = serialization.load_der_private_key(material, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise BadRequest(f"the unwrapped material is not {expected}") from None
    if algo.family == "rsa":
        if not isinstance(private, rsa.RSAPrivateKey):
            raise BadRequest(f"the unwrapped material is not an RSA key; expected {expected}")
        if private.key_size != algo.key_bits:
            raise BadRequest(f"the unwrapped RSA key has {private.key_size} bits; {algo.name} "
                             f"needs {algo.key_bits}")
        exponent = private.public_key().public_numbers().e
        if exponent < MIN_RSA_EXPONENT or exponent >= 1 << 256 or exponent % 2 == 0:
            raise BadRequest("the unwrapped RSA key's public exponent is outside what FIPS "
                             "186-5 allows (odd, 65537 to 2^256): make the key with e = 65537")
        return private
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise BadRequest(f"the unwrapped material is not an EC key; expected {expected}")
    if not isinstance(private.curve, EC_CURVES[algo.key_bits]):
        raise BadRequest(f"the unwrapped EC key is on curve {private.curve.name}; {algo.name} "
                         f"needs {EC_CURVES[algo.key_bits].name}")
    return private


# ---- the client half: what `ferrohsm keys import` runs locally ----------------------------------

def wrap_for_import(public_key_pem: str, wrapping_algorithm: str, material: bytes) -> bytes:
    """``material`` wrapped for an import job's public key (see the module docstring)."""
    public = serialization.load_pem_public_key(public_key_pem.encode("ascii"))
    if not isinstance(public, rsa.RSAPublicKey):
        raise ValueError("the import job's public key is not an RSA key")
    if wrapping_algorithm == RSA_OAEP_SHA256:
        room = public.key_size // 8 - 2 * 32 - 2  # OAEP with SHA-256
        if len(material) > room:  # (cryptography says only "Encryption failed")
            raise ValueError(f"the material is {len(material)} bytes, more than one "
                             f"{RSA_OAEP_SHA256} block holds ({room}): use "
                             f"{RSA_AES_KEY_WRAP_SHA256} for private keys")
        return public.encrypt(material, _OAEP)
    if wrapping_algorithm != RSA_AES_KEY_WRAP_SHA256:
        raise ValueError(f"unknown wrapping algorithm {shown(wrapping_algorithm)}")
    ephemeral = os.urandom(_EPHEMERAL_BYTES)
    return public.encrypt(ephemeral, _OAEP) + aes_key_wrap_with_padding(ephemeral, material)


def read_material(data: bytes) -> tuple[str, bytes]:
    """(algorithm, material) of a key file: exactly 32 bytes is a raw AES-256 key; anything else
    must be an unencrypted private key, PEM or DER (PKCS#8, or the traditional PKCS#1 / SEC1
    forms), returned as PKCS#8 DER. ValueError saying what the file is not."""
    if len(data) == _EPHEMERAL_BYTES:
        return "aes-256-gcm", data
    private = _load_any(data)
    if isinstance(private, rsa.RSAPrivateKey):
        name = f"rsa-{private.key_size}"
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        bits = [size for size, curve in EC_CURVES.items() if isinstance(private.curve, curve)]
        name = f"ec-p{bits[0]}" if bits else f"ec-{private.curve.name}"
    else:
        raise ValueError("the key file holds neither an RSA nor an EC private key")
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return name, der


def _load_any(data: bytes) -> object:
    loaders = ((serialization.load_pem_private_key,) if b"-----BEGIN" in data
               else (serialization.load_der_private_key,))
    for load in loaders:
        try:
            return load(data, password=None)
        except TypeError:
            raise ValueError("the key file is encrypted; decrypt it first (openssl pkcs8 "
                             "-topk8 -nocrypt)") from None
        except (ValueError, UnsupportedAlgorithm):
            pass
    raise ValueError("the key file is neither 32 raw bytes (an AES-256 key) nor an unencrypted "
                     "PEM or DER private key")
