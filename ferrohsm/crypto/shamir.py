"""Shamir's secret sharing over GF(2^8), on the standard library only.

Each byte of the secret is the constant term of its own random polynomial of degree
``threshold - 1`` over GF(2^8) with the AES reduction polynomial x^8 + x^4 + x^3 + x + 1 (0x11b),
the field HashiCorp Vault's ``shamir`` package uses. Share ``i`` (x = 1..n) holds the value of
every byte's polynomial at x; any ``threshold`` shares give the polynomials back by Lagrange
interpolation at 0, and fewer are consistent with every possible secret (each coefficient but
the constant term is uniformly random), so they say nothing about it.

Multiplication and division go through log/antilog tables of the generator 3, built once at
import. The tables are indexed by secret-dependent values; in CPython that is no worse than any
other code path here (the interpreter itself is not constant time), and the secret only ever
passes through this module at ``init``, unseal and rekey.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

__all__ = ["MAX_SHARES", "combine", "gf_div", "gf_mul", "split"]

MAX_SHARES = 255
_POLY = 0x11B


def _tables() -> tuple[list[int], list[int]]:
    exp = [0] * 510
    log = [0] * 256
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        doubled = value << 1
        if doubled & 0x100:
            doubled ^= _POLY
        value ^= doubled  # value * 3 = value * 2 + value
    for power in range(255, 510):  # so gf_mul needs no modulo
        exp[power] = exp[power - 255]
    return exp, log


_EXP, _LOG = _tables()


def gf_mul(a: int, b: int) -> int:
    """a * b in GF(2^8)."""
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_div(a: int, b: int) -> int:
    """a / b in GF(2^8); ZeroDivisionError for b == 0."""
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(2^8)")
    if a == 0:
        return 0
    return _EXP[_LOG[a] + 255 - _LOG[b]]


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """Horner's rule; ``coefficients[0]`` is the constant term."""
    result = 0
    for coefficient in reversed(coefficients):
        result = gf_mul(result, x) ^ coefficient
    return result


def split(secret: bytes, shares: int, threshold: int, *,
          random_bytes: Callable[[int], bytes] = os.urandom) -> list[tuple[int, bytes]]:
    """``shares`` pairs (x, y) with x = 1..shares; any ``threshold`` of them give ``secret``.

    ``random_bytes`` supplies the coefficients (``threshold - 1`` per secret byte, in byte
    order); production uses os.urandom, tests pass recorded bytes to compare with an
    independent evaluation."""
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("the secret must be non-empty bytes")
    if not 2 <= threshold <= shares <= MAX_SHARES:
        raise ValueError(f"need 2 <= threshold <= shares <= {MAX_SHARES}")
    degree = threshold - 1
    randomness = random_bytes(degree * len(secret))
    if len(randomness) != degree * len(secret):
        raise ValueError("the random source returned too few bytes")
    polynomials = [(byte, *randomness[i * degree:(i + 1) * degree])
                   for i, byte in enumerate(secret)]
    return [(x, bytes(_evaluate(p, x) for p in polynomials)) for x in range(1, shares + 1)]


def combine(parts: Sequence[tuple[int, bytes]]) -> bytes:
    """The secret whose polynomials pass through ``parts`` (Lagrange interpolation at x = 0).

    Given fewer than the threshold, or shares of different splits, the result is some other
    value: only a check value tells (custody/state.py keeps one). ValueError for an empty set,
    duplicate or zero x coordinates, or shares of different lengths."""
    if not parts:
        raise ValueError("no shares")
    xs = [x for x, _ in parts]
    if len(set(xs)) != len(xs) or not all(1 <= x <= MAX_SHARES for x in xs):
        raise ValueError("share x coordinates must be distinct and within 1..255")
    length = len(parts[0][1])
    if length == 0 or any(len(y) != length for _, y in parts):
        raise ValueError("shares must be non-empty and of one length")
    weights = []
    for i, xi in enumerate(xs):
        weight = 1
        for j, xj in enumerate(xs):
            if i != j:  # l_i(0) = prod xj / (xj - xi); subtraction is xor
                weight = gf_mul(weight, gf_div(xj, xj ^ xi))
        weights.append(weight)
    out = bytearray(length)
    for weight, (_, y) in zip(weights, parts, strict=True):
        for k in range(length):
            out[k] ^= gf_mul(weight, y[k])
    return bytes(out)
