"""Shamir's secret sharing over GF(2^8) (crypto/shamir.py) against published field vectors and
an independent implementation written here from the definitions, plus hypothesis properties:
any t of n shares reconstruct, and t-1 shares are consistent with EVERY secret."""

from __future__ import annotations

import functools
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrohsm.crypto import shamir


def slow_mul(a: int, b: int) -> int:
    """Carry-less multiplication reduced by x^8+x^4+x^3+x+1, bit by bit (FIPS-197 4.2)."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return product


@functools.cache
def slow_inv(a: int) -> int:
    return next(b for b in range(1, 256) if slow_mul(a, b) == 1)


def lagrange_at_zero(points: list[tuple[int, int]]) -> int:
    """The interpolating polynomial's value at 0, from the textbook formula."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        term = yi
        for j, (xj, _) in enumerate(points):
            if i != j:
                term = slow_mul(term, slow_mul(xj, slow_inv(xj ^ xi)))
        total ^= term
    return total


def test_published_field_vectors() -> None:
    # FIPS-197 section 4.2: {57} x {83} = {c1}, {57} x {13} = {fe}; Vault's shamir tests:
    # 3 x 7 = 9, 0 x 3 = 0, 3 / 3 = 1, 6 / 3 = 2, 0 / 7 = 0
    assert shamir.gf_mul(0x57, 0x83) == 0xC1
    assert shamir.gf_mul(0x57, 0x13) == 0xFE
    assert shamir.gf_mul(3, 7) == 9
    assert shamir.gf_mul(0, 3) == 0
    assert shamir.gf_div(3, 3) == 1
    assert shamir.gf_div(6, 3) == 2
    assert shamir.gf_div(0, 7) == 0
    with pytest.raises(ZeroDivisionError):
        shamir.gf_div(1, 0)


def test_the_tables_agree_with_bitwise_multiplication_everywhere() -> None:
    for a, b in itertools.product(range(256), repeat=2):
        assert shamir.gf_mul(a, b) == slow_mul(a, b)


def test_shares_are_the_polynomials_evaluated_independently() -> None:
    secret = bytes(range(1, 33))
    coefficients = os.urandom(2 * len(secret))  # threshold 3: two per byte, in byte order
    parts = shamir.split(secret, 5, 3, random_bytes=lambda n: coefficients[:n])
    for x, y in parts:
        for k, byte in enumerate(secret):
            a1, a2 = coefficients[2 * k], coefficients[2 * k + 1]
            expected = byte ^ slow_mul(a1, x) ^ slow_mul(a2, slow_mul(x, x))
            assert y[k] == expected
    # and the independent interpolation gets the secret back from any three
    for chosen in itertools.combinations(parts, 3):
        assert bytes(lagrange_at_zero([(x, y[k]) for x, y in chosen])
                     for k in range(len(secret))) == secret


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=1, max_size=40), n=st.integers(2, 8), data=st.data())
def test_any_threshold_subset_reconstructs(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(2, n))
    parts = shamir.split(secret, n, t)
    chosen = data.draw(st.lists(st.sampled_from(parts), min_size=t, max_size=n, unique=True))
    assert shamir.combine(chosen) == secret


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=1, max_size=4), n=st.integers(2, 6), data=st.data())
def test_fewer_than_threshold_are_consistent_with_every_secret(
        secret: bytes, n: int, data: st.DataObject) -> None:
    """Information-theoretic secrecy: for t-1 shares and ANY candidate secret byte s there is
    exactly one polynomial of degree t-1 through (0, s) and the t-1 points, so the shares
    rule out nothing. Checked for all 256 candidates: the polynomial through (0, s) and the
    t-1 shares reproduces each share, and the candidates give 256 distinct polynomials."""
    t = data.draw(st.integers(2, n))
    parts = shamir.split(secret, n, t)
    known = data.draw(st.lists(st.sampled_from(parts), min_size=t - 1, max_size=t - 1,
                               unique=True))
    x_new = next(x for x in range(1, 256) if x not in {p[0] for p in known})
    seen = set()
    for s in range(256):
        # The polynomial through (0, s) and the known points, evaluated at a fresh x: each s
        # gives a valid completion, and different s give different completions.
        points = [(0, s)] + [(x, y[0]) for x, y in known]
        value = _interpolate_at(points, x_new)
        seen.add(value)
        completed = [(x, bytes([y[0]])) for x, y in known] + [(x_new, bytes([value]))]
        assert shamir.combine(completed) == bytes([s])
    assert len(seen) == 256


def _interpolate_at(points: list[tuple[int, int]], at: int) -> int:
    total = 0
    for i, (xi, yi) in enumerate(points):
        term = yi
        for j, (xj, _) in enumerate(points):
            if i != j:
                term = slow_mul(term, slow_mul(xj ^ at, slow_inv(xj ^ xi)))
        total ^= term
    return total


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(b"k", 3, 1)
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(b"k", 2, 3)
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(b"k", 256, 2)
    with pytest.raises(ValueError, match="non-empty"):
        shamir.split(b"", 3, 2)
    with pytest.raises(ValueError, match="distinct"):
        shamir.combine([(1, b"a"), (1, b"b")])
    with pytest.raises(ValueError, match="one length"):
        shamir.combine([(1, b"a"), (2, b"bc")])
    with pytest.raises(ValueError, match="no shares"):
        shamir.combine([])
