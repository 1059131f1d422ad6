"""The key engine: resolve a key, check its lifecycle, unseal (cached), run the primitive.

This is the hot path the service wraps with authorization, approvals and audit. It knows nothing
about principals or HTTP; it is what bench/bench_service.py measures against bare AES-GCM.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, NoReturn

from ..crypto import ops
from ..crypto.algorithms import get_algorithm
from ..crypto.seal import Sealer
from ..domain import lifecycle as lc
from ..domain.errors import (
    Conflict,
    FerroError,
    IntegrityError,
    NoSuchCiphertextVersion,
    PayloadTooLarge,
)
from ..domain.model import GCM_LIMIT, Key, KeyVersion, NoSuchVersion
from .gcmbudget import GCM_WARN_AT, GcmBudget
from .keycache import MaterialCache

TOKEN_OVERHEAD = 1024  # more than any blob adds to its input (nonce, tag, header, key wrap)

log = logging.getLogger("ferrohsm.keys")
__all__ = ["GCM_LIMIT", "GCM_WARN_AT", "KeyEngine"]


class KeyEngine:
    def __init__(self, sealer: Sealer, cache: MaterialCache[Any],
                 max_input_bytes: int = 64 * 1024) -> None:
        self.sealer = sealer
        self.cache = cache
        self.max_input = max_input_bytes
        # AES-GCM encryptions per key version, counted against the key record's reservations
        # (gcmbudget.py); the service gives it its reserver.
        self.budget = GcmBudget()

    # ---- material ----

    def new_material(self, algorithm: str, key_id: str, version: int) -> bytes:
        """Fresh material for (key, version), returned SEALED: plaintext bytes never leave here."""
        material = get_algorithm(algorithm).generate()
        return self.sealer.seal(material, key_id=key_id, version=version, algorithm=algorithm)

    def handle(self, key: Key, version: KeyVersion) -> Any:
        sealed = version.sealed
        if sealed is None:  # check_use already refuses destroyed versions; defence in depth
            raise IntegrityError(f"key {key.id} version {version.version} has no material")
        cache_key = (key.id, version.version, sealed)
        hit = self.cache.get(cache_key)  # the hot path: no closure built for a hit
        if hit is not None:
            return hit
        return self.cache.get_or_load(
            cache_key,
            lambda: ops.load(key.algorithm, self.sealer.unseal(
                sealed, key_id=key.id, version=version.version, algorithm=key.algorithm)))

    def _check_size(self, *values: bytes | None) -> None:
        for value in values:
            if value is not None and len(value) > self.max_input:
                self._too_large()

    def _too_large(self) -> NoReturn:
        raise PayloadTooLarge(f"input is larger than the {self.max_input}-byte limit: encrypt "
                              "large data locally under a data key (data-key, or a key "
                              "protected with wrap), and sign or verify it by its digest (the "
                              "\"digest\" member; `ferrohsm sign` sends one by default)")

    # ---- operations: each returns (result, version used) ----

    def encrypt(self, key: Key, plaintext: bytes, aad: bytes | None, *, wait: bool = True
                ) -> tuple[str, int]:
        """``wait``: whether the caller may block for a reservation of AES-GCM encryptions
        (gcmbudget.py): not on the event loop."""
        limit = self.max_input  # _check_size inlined: this is the hottest operation
        if len(plaintext) > limit or (aad is not None and len(aad) > limit):
            self._too_large()
        version = lc.check_use(key, lc.Use.ENCRYPT)
        handle = self.handle(key, version)  # before counting: a sealed blob that fails counts none
        self.budget.take(key, version.version, wait=wait)
        blob = ops.encrypt(handle, plaintext, aad)
        return ops.format_token(version.version, blob), version.version

    def data_key(self, key: Key, size: int, aad: bytes | None, *, wait: bool = True
                 ) -> tuple[bytes, str, int]:
        """A fresh random key of ``size`` bytes and its encryption under ``key``'s primary
        version: (plaintext, fhsm:v… token, version). The plaintext is the caller's to hand out
        or drop; nothing here keeps it."""
        material = secrets.token_bytes(size)
        token, version = self.encrypt(key, material, aad, wait=wait)
        return material, token, version

    def decrypt(self, key: Key, token: str, aad: bytes | None) -> tuple[bytes, int]:
        self._check_size(aad)
        number, blob, version = self._parse(key, token, lc.Use.DECRYPT)
        try:
            return ops.decrypt(self.handle(key, version), blob, aad), number
        except FerroError as exc:  # the refusal's record names the version the token names
            exc.details.setdefault("key_version", number)
            raise

    def check_token(self, key: Key, token: str, use: lc.Use) -> None:
        """Refuse what ``decrypt`` or ``unwrap`` would refuse without touching material. Run
        before a request under dual control is parked: else approvers were asked to approve a
        call that could never run, and their approval was spent on a 400 (an outside tester)."""
        self._parse(key, token, use)

    def _parse(self, key: Key, token: str, use: lc.Use) -> tuple[int, bytes, KeyVersion]:
        """(version number, blob, version) of a token in the format, no larger than anything
        this key could have made, naming a version the key has and may ``use``."""
        number, blob = ops.parse_token(token)
        try:
            if len(blob) > self.max_input + TOKEN_OVERHEAD:
                self._too_large()
            return number, blob, _token_version(key, use, number)
        except FerroError as exc:  # the refusal's record names the version the token names
            exc.details.setdefault("key_version", number)
            raise

    def sign(self, key: Key, data: bytes, prehashed: bool, scheme: str | None
             ) -> tuple[bytes, str, int]:
        self._check_size(data)
        version = lc.check_use(key, lc.Use.SIGN)
        signature, used = ops.sign(self.handle(key, version), data, prehashed=prehashed,
                                   scheme=scheme)
        return signature, used, version.version

    def verify(self, key: Key, data: bytes, signature: bytes, prehashed: bool,
               scheme: str | None, number: int | None) -> tuple[bool, int]:
        self._check_size(data, signature)
        version = lc.check_use(key, lc.Use.VERIFY, number)
        valid = ops.verify(self.handle(key, version), data, signature, prehashed=prehashed,
                           scheme=scheme)
        return valid, version.version

    def wrap(self, key: Key, material: bytes) -> tuple[str, int]:
        self._check_size(material)
        version = lc.check_use(key, lc.Use.WRAP)
        blob = ops.wrap(self.handle(key, version), material)
        return ops.format_token(version.version, blob), version.version

    def unwrap(self, key: Key, token: str) -> tuple[bytes, int]:
        number, blob, version = self._parse(key, token, lc.Use.UNWRAP)
        return ops.unwrap(self.handle(key, version), blob), number

    def public_pem(self, key: Key, number: int | None) -> tuple[str, int]:
        if key.usage != "sign":  # said as such, not as a verify the caller never asked for
            raise Conflict(f"key {key.id} has usage {key.usage}: only signing keys have a "
                           "public key")
        version = key.version(key.primary_version if number is None else number)
        try:  # the public key is given out wherever it could verify
            lc.check_use(key, lc.Use.VERIFY, version.version)
        except Conflict as exc:
            raise Conflict(exc.message.replace("verify is not allowed",
                                               "its public key is not given out")) from None
        return ops.public_pem(self.handle(key, version)), version.version

    def forget(self, key_id: str) -> None:
        self.cache.evict_key(key_id)


def _token_version(key: Key, use: lc.Use, number: int) -> KeyVersion:
    """The version a ciphertext or wrapped key names; a version the key never had is the same
    opaque 400 as any other token that is not this key's (docs/api.md, decrypt)."""
    try:
        return lc.check_use(key, use, number)
    except NoSuchVersion:
        raise NoSuchCiphertextVersion("malformed ciphertext", version=number) from None
