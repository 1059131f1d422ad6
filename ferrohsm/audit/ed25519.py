"""Ed25519 signature verification (RFC 8032, section 5.1.7) in pure Python. Standard library only.

The offline verifier checks signed checkpoints with this, so an auditor needs nothing but Python to
verify a log; the server signs with ``cryptography`` (crypto/signing.py). Verification only: no
secret is ever handled here, so plain variable-time integer arithmetic is fine.

Strict on purpose, every failure is ``False``:

* a public key that is not 32 bytes, or a signature that is not 64 bytes;
* a point encoding (the key A, or R, the first half of the signature) whose y is not below p, that
  has no x on the curve, or that asks for the negative of x = 0 (RFC 8032 section 5.1.3): each
  point therefore has exactly one accepted encoding;
* S (the second half) not below the group order L, so a signature cannot be re-encoded as S + L;
* a public key of small order (eight times it is the identity), for which one signature would
  verify for many messages.

The group equation checked is [S]B = R + [k]A, the form RFC 8032 allows in place of the one
multiplied by the cofactor 8; it accepts every signature an honest signer makes and is the check
OpenSSL (behind ``cryptography``) performs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

__all__ = ["PUBLIC_KEY_SIZE", "SIGNATURE_SIZE", "SPKI_PREFIX", "public_key_from_der",
           "public_key_from_pem", "verify"]

P = 2 ** 255 - 19  # the field
L = 2 ** 252 + 27742317777372353535851937790883648493  # the order of the base point
D = -121665 * pow(121666, -1, P) % P  # the curve: -x^2 + y^2 = 1 + d x^2 y^2
SQRT_M1 = pow(2, (P - 1) // 4, P)  # a square root of -1 mod p
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
# DER of SubjectPublicKeyInfo {AlgorithmIdentifier {id-Ed25519 1.3.101.112}, BIT STRING (32 bytes)}
# (RFC 8410): always these 12 bytes followed by the raw key.
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"
_PEM_END = "-----END PUBLIC KEY-----"

# A point in extended homogeneous coordinates (X, Y, Z, T): x = X/Z, y = Y/Z, x*y = T/Z.
Point = tuple[int, int, int, int]
IDENTITY: Point = (0, 1, 1, 0)


def _add(p1: Point, p2: Point) -> Point:
    """p1 + p2 (RFC 8032 section 5.1.4; complete: also right for p1 == p2 and the identity)."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * D * t1 * t2 % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def _double(p1: Point) -> Point:
    """2 * p1, the dedicated doubling formulas of RFC 8032 section 5.1.4."""
    x1, y1, z1, _ = p1
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1)
    g = a - b
    f = c + g
    return e * f % P, g * h % P, f * g % P, e * h % P


def _negate(p1: Point) -> Point:
    x1, y1, z1, t1 = p1
    return -x1 % P, y1, z1, -t1 % P


def _double_multiply(s: int, p1: Point, k: int, p2: Point) -> Point:
    """[s]p1 + [k]p2 with one shared chain of doublings (Straus/Shamir); variable time."""
    both = _add(p1, p2)
    table: dict[tuple[int, int], Point] = {(1, 0): p1, (0, 1): p2, (1, 1): both}
    q = IDENTITY
    for i in reversed(range(max(s.bit_length(), k.bit_length()))):
        q = _double(q)
        bits = ((s >> i) & 1, (k >> i) & 1)
        if bits != (0, 0):
            q = _add(q, table[bits])
    return q


def _equal(p1: Point, p2: Point) -> bool:
    """Same affine point: x1/z1 == x2/z2 and y1/z1 == y2/z2, compared without dividing."""
    x1, y1, z1, _ = p1
    x2, y2, z2, _ = p2
    return (x1 * z2 - x2 * z1) % P == 0 and (y1 * z2 - y2 * z1) % P == 0


def _recover_x(y: int, sign: int) -> int | None:
    """The x with x^2 = (y^2 - 1) / (d y^2 + 1) and parity ``sign``; None if there is none."""
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P  # candidate root of u/v
    vxx = v * x * x % P
    if vxx == (-u) % P:
        x = x * SQRT_M1 % P
    elif vxx != u:
        return None  # u/v is not a square: no point has this y
    if x == 0 and sign:
        return None  # "-0": a second encoding of the same point
    return P - x if x & 1 != sign else x


def decode_point(data: bytes) -> Point | None:
    """The point a 32-byte encoding names (RFC 8032 section 5.1.3), or None if it names none."""
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= P:
        return None  # y not reduced mod p: a second encoding of a point
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % P)


def encode_point(p1: Point) -> bytes:
    """The 32-byte encoding of a point (RFC 8032 section 5.1.2): y, with x's parity in bit 255."""
    x, y, z, _ = p1
    inverse = pow(z, -1, P)
    x, y = x * inverse % P, y * inverse % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _base_point() -> Point:
    point = decode_point((4 * pow(5, -1, P) % P).to_bytes(32, "little"))  # y = 4/5, x even
    if point is None:  # pragma: no cover - arithmetic, not input
        raise AssertionError("the base point does not decode")
    return point


BASE = _base_point()


def _small_order(point: Point) -> bool:
    return _equal(_double(_double(_double(point))), IDENTITY)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is an Ed25519 signature of ``message`` by ``public_key`` (raw 32
    bytes), under the strict rules of the module docstring."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    a = decode_point(public_key)
    r = decode_point(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= L or _small_order(a):
        return False
    digest = hashlib.sha512(signature[:32] + public_key + message).digest()
    k = int.from_bytes(digest, "little") % L
    return _equal(_double_multiply(s, BASE, k, _negate(a)), r)  # [S]B - [k]A == R


def public_key_from_der(der: bytes) -> bytes:
    """The raw key of a DER SubjectPublicKeyInfo for Ed25519; ValueError for anything else."""
    if len(der) != len(SPKI_PREFIX) + PUBLIC_KEY_SIZE or not der.startswith(SPKI_PREFIX):
        raise ValueError("not an Ed25519 public key")
    return der[len(SPKI_PREFIX):]


def public_key_from_pem(pem: bytes) -> bytes:
    """The raw key of a PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo) holding an Ed25519 key.

    ValueError "not a PEM public key" or "not an Ed25519 public key"; never echoes the input.
    """
    try:
        lines = [line.strip() for line in pem.decode("ascii").splitlines()]
    except UnicodeDecodeError:
        raise ValueError("not a PEM public key") from None
    if _PEM_BEGIN not in lines or _PEM_END not in lines:
        raise ValueError("not a PEM public key")
    begin = lines.index(_PEM_BEGIN)
    end = lines.index(_PEM_END, begin + 1) if _PEM_END in lines[begin + 1:] else -1
    if end < 0:
        raise ValueError("not a PEM public key")
    try:
        der = base64.b64decode("".join(lines[begin + 1:end]), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a PEM public key") from None
    return public_key_from_der(der)
