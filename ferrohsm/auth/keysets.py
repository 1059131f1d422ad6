"""JWT verification keysets: which key verifies a token, and under which single algorithm.

Theory of operation
-------------------
A ``KeySet`` maps a ``kid`` to a ``VerificationKey`` that PINS one algorithm. The token's ``alg``
header must equal the pinned algorithm exactly, so a header can never choose how a key is used:
an RSA public key can never be used as an HMAC secret (HS/RS confusion), and ``none`` is never in
the table. Keys come from three places:

- HS256 secrets from the environment: the primary ``FERROHSM_JWT_HS256_SECRET`` (it verifies
  tokens that carry no ``kid``, as ``ferrohsm token issue`` and ``quickstart`` make them) and any
  number of ``kid:ENV_VAR`` pairs (``[auth].hs256_secret_envs``). Secrets never live in files we
  read here, and they are at least 32 bytes.
- PEM public keys: ``kid:ALG:path`` entries (``[auth].public_key_files``).
- A JWKS file (``[auth].jwks_file``): every key must carry ``kid`` and ``alg``; ``oct`` (shared
  secret) keys and private keys are refused: a public keyset file must never hold a secret.

``ReloadingKeySet`` re-reads the files when their (mtime, size, inode) change, at most once per
``interval`` and lazily on the request path (one clock read when nothing changed), or on demand
(SIGHUP). A keyset that fails to load never replaces the working one; every reload, accepted or
rejected, is reported to ``on_event`` so it can be audited. Error messages name files, kids and
reasons but never include key bytes or library messages (those may quote a JWK).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from jwt.algorithms import get_default_algorithms

from ..domain.errors import ConfigError
from ..domain.strictjson import no_duplicates

log = logging.getLogger("ferrohsm.auth")

# The algorithms FerroHSM accepts at all; each key pins exactly one of them.
ALGORITHMS = ("HS256", "RS256", "PS256", "ES256", "ES384")
ASYMMETRIC = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "ES384": "EC"}
CURVES = {"ES256": "secp256r1", "ES384": "secp384r1"}
MIN_RSA_BITS = 2048
MIN_HMAC_BYTES = 32
MAX_KEYSET_FILE_BYTES = 1 << 20
MAX_KID_CHARS = 128
PRIMARY_KID = ""  # the primary HS256 secret: verifies tokens without a kid header
_IMPLEMENTATIONS = get_default_algorithms()
EventHook = Callable[[str, str], None]  # (outcome, message) → audit


class KeysetError(ConfigError):
    """A keyset source cannot be loaded; the message is safe to log and audit."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One key: its ``kid``, the ONE algorithm it verifies, and the prepared key object."""

    kid: str
    alg: str
    key: Any = field(repr=False)
    source: str = ""

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """Check a signature under the pinned algorithm (constant time for HMAC)."""
        return bool(_IMPLEMENTATIONS[self.alg].verify(signing_input, self.key, signature))


@dataclass(frozen=True, slots=True)
class KeySet:
    """An immutable kid → key table; ``generation`` changes on every accepted reload."""

    keys: Mapping[str, VerificationKey]
    generation: int = 0

    def select(self, kid: str | None) -> VerificationKey | None:
        """The key a token names (no kid: the primary HS256 secret), or None."""
        return self.keys.get(PRIMARY_KID if kid is None else kid)

    def kids(self) -> set[str]:
        return {k for k in self.keys if k != PRIMARY_KID}


@dataclass(frozen=True, slots=True)
class KeysetSources:
    """Where keys come from; ``env`` supplies the HS256 secrets named by ``hs256_envs``."""

    primary_secret: bytes | None = field(default=None, repr=False)
    hs256_envs: tuple[str, ...] = ()      # "kid:ENV_VAR"
    public_key_files: tuple[str, ...] = ()  # "kid:ALG:path"
    jwks_file: str = ""
    env: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False)

    def files(self) -> list[Path]:
        paths = [Path(parse_public_key_entry(e)[2]) for e in self.public_key_files]
        return paths + ([Path(self.jwks_file)] if self.jwks_file else [])


# ---- loading --------------------------------------------------------------------------------

def check_kid(kid: str, where: str) -> str:
    if not kid or len(kid) > MAX_KID_CHARS or not kid.isprintable() or ":" in kid:
        raise KeysetError(f"{where}: kid must be 1-{MAX_KID_CHARS} printable characters "
                          "without ':'")
    return kid


def parse_hs256_entry(entry: str) -> tuple[str, str]:
    """``kid:ENV_VAR`` → (kid, variable name)."""
    kid, sep, var = entry.partition(":")
    if not sep or not var.strip():
        raise KeysetError("[auth].hs256_secret_envs entries must look like 'kid:ENV_VAR'")
    return check_kid(kid.strip(), "[auth].hs256_secret_envs"), var.strip()


def parse_public_key_entry(entry: str) -> tuple[str, str, str]:
    """``kid:ALG:path`` → (kid, alg, path)."""
    parts = entry.split(":", 2)
    if len(parts) != 3 or not parts[2].strip():
        raise KeysetError("[auth].public_key_files entries must look like 'kid:ALG:path'")
    kid, alg, path = (p.strip() for p in parts)
    if alg not in ASYMMETRIC:
        raise KeysetError(f"[auth].public_key_files: kid {kid!r:.40}: algorithm must be one of "
                          f"{', '.join(ASYMMETRIC)}")
    return check_kid(kid, "[auth].public_key_files"), alg, path


def hmac_key(kid: str, secret: bytes, where: str) -> VerificationKey:
    if len(secret) < MIN_HMAC_BYTES:
        raise KeysetError(f"{where}: the HS256 secret must be at least {MIN_HMAC_BYTES} bytes")
    try:
        prepared = _IMPLEMENTATIONS["HS256"].prepare_key(secret)
    except jwt.InvalidKeyError:
        raise KeysetError(f"{where}: an HS256 secret may not be a PEM/DER key") from None
    return VerificationKey(kid, "HS256", prepared, where)


def public_key(kid: str, alg: str, material: Any, where: str) -> VerificationKey:
    """Prepare a public key for ``alg`` and check it fits: right type, curve, size, no secret."""
    try:
        prepared = _IMPLEMENTATIONS[alg].prepare_key(material)
    except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise KeysetError(f"{where}: kid {kid!r:.40}: not a usable {alg} public key "
                          f"({type(exc).__name__})") from None
    if hasattr(prepared, "private_numbers"):
        raise KeysetError(f"{where}: kid {kid!r:.40}: holds a PRIVATE key; give the public key")
    family = ASYMMETRIC[alg]
    if family == "RSA" and getattr(prepared, "key_size", 0) < MIN_RSA_BITS:
        raise KeysetError(f"{where}: kid {kid!r:.40}: RSA keys must have at least "
                          f"{MIN_RSA_BITS} bits")
    if family == "EC" and getattr(getattr(prepared, "curve", None), "name", "") != CURVES[alg]:
        raise KeysetError(f"{where}: kid {kid!r:.40}: {alg} needs a {CURVES[alg]} key")
    if family == "RSA" and not hasattr(prepared, "key_size"):
        raise KeysetError(f"{where}: kid {kid!r:.40}: not an RSA key")
    return VerificationKey(kid, alg, prepared, where)


def read_small_file(path: str, where: str) -> bytes:
    """A bounded read of a regular file nobody but its owner may change: whoever can write a
    keyset file can mint any token, so a group- or world-writable one is refused."""
    try:  # O_NONBLOCK: a FIFO is opened without waiting for a writer, then refused below
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o022:
                raise KeysetError(f"{where}: {path} must be a regular file that only its owner "
                                  "can write (chmod go-w)")
            data = fh.read(MAX_KEYSET_FILE_BYTES + 1)
    except OSError as exc:
        raise KeysetError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_KEYSET_FILE_BYTES:
        raise KeysetError(f"{where}: {path} is larger than {MAX_KEYSET_FILE_BYTES} bytes")
    return data



def load_jwks(path: str) -> list[VerificationKey]:
    where = f"[auth].jwks_file {path}"
    try:
        doc = json.loads(read_small_file(path, "[auth].jwks_file"),
                         object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError):
        raise KeysetError(f"{where}: not valid JSON (or a duplicate member)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeysetError(f"{where}: must be an object with a 'keys' list")
    return [_jwk(jwk, i, where) for i, jwk in enumerate(doc["keys"])]


def _jwk(jwk: Any, index: int, where: str) -> VerificationKey:
    if not isinstance(jwk, dict):
        raise KeysetError(f"{where}: key #{index} is not an object")
    kid, alg, kty = jwk.get("kid"), jwk.get("alg"), jwk.get("kty")
    if not isinstance(kid, str):
        raise KeysetError(f"{where}: key #{index} has no string 'kid'")
    check_kid(kid, f"{where}: key #{index}")
    if alg not in ASYMMETRIC or kty != ASYMMETRIC[alg]:
        raise KeysetError(f"{where}: kid {kid!r:.40}: 'alg' must be one of "
                          f"{', '.join(ASYMMETRIC)} and match 'kty' (oct keys are not accepted)")
    if any(member in jwk for member in ("d", "p", "q", "dp", "dq", "qi", "k", "oth")):
        raise KeysetError(f"{where}: kid {kid!r:.40}: holds private key members; "
                          "publish public keys only")
    if jwk.get("use", "sig") != "sig":
        raise KeysetError(f"{where}: kid {kid!r:.40}: 'use' must be 'sig'")
    try:
        material = _IMPLEMENTATIONS[alg].from_jwk(jwk)
    except (jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        raise KeysetError(f"{where}: kid {kid!r:.40}: not a valid {kty} key "
                          f"({type(exc).__name__})") from None
    return public_key(kid, alg, material, where)


def load_keyset(sources: KeysetSources, generation: int = 0) -> KeySet:
    """Build a keyset from every source, or raise KeysetError naming the first problem."""
    keys: dict[str, VerificationKey] = {}

    def add(key: VerificationKey) -> None:
        if key.kid in keys:
            raise KeysetError(f"{key.source}: kid {key.kid!r:.40} is defined twice")
        keys[key.kid] = key

    if sources.primary_secret:
        add(hmac_key(PRIMARY_KID, sources.primary_secret, "FERROHSM_JWT_HS256_SECRET"))
    for entry in sources.hs256_envs:
        kid, var = parse_hs256_entry(entry)
        value = sources.env.get(var)
        if not value:
            raise KeysetError(f"[auth].hs256_secret_envs: environment variable {var} is not set")
        add(hmac_key(kid, value.encode("utf-8"), f"environment {var}"))
    for entry in sources.public_key_files:
        kid, alg, path = parse_public_key_entry(entry)
        pem = read_small_file(path, f"[auth].public_key_files {kid}")
        add(public_key(kid, alg, pem, f"[auth].public_key_files {path}"))
    if sources.jwks_file:
        for key in load_jwks(sources.jwks_file):
            add(key)
    if not keys:
        raise KeysetError("no token verification keys: set FERROHSM_JWT_HS256_SECRET or "
                          "[auth].hs256_secret_envs, [auth].public_key_files or [auth].jwks_file")
    return KeySet(keys, generation)


# ---- hot reload -----------------------------------------------------------------------------

Signature = tuple[tuple[int, int, int] | None, ...]


def _stat(paths: Sequence[Path]) -> Signature:
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def describe_change(old: KeySet, new: KeySet) -> str:
    added, removed = sorted(new.kids() - old.kids()), sorted(old.kids() - new.kids())
    return (f"keyset reloaded (generation {new.generation}): {len(new.keys)} key(s); "
            f"added {added or 'none'}; removed {removed or 'none'}")


class PolledFiles:
    """Files re-read when they change (checked at most once per ``interval`` by ``poll``) or on
    ``reload()`` (SIGHUP), each attempt reported once to the event hook. Subclasses say how to
    rebuild in ``_reload_locked``; the keysets and the approver keys share this."""

    label = "reload"  # what a failing event hook's log line names

    def __init__(self, paths: Sequence[Path], *, interval: float, on_event: EventHook | None,
                 clock: Callable[[], float]) -> None:
        self._paths = paths
        self._interval, self._clock = interval, clock
        self._on_event = on_event
        self._lock = threading.Lock()
        self._seen = _stat(self._paths)
        self._checked = clock()

    def set_event_hook(self, hook: EventHook | None) -> None:
        """Wire auditing after construction (the audit log may be built later)."""
        self._on_event = hook

    def poll(self) -> None:
        """Rebuild when the files changed since the last check (non-blocking: a concurrent
        caller goes on with what is in force)."""
        if not self._paths or self._interval < 0:
            return
        now = self._clock()
        if now - self._checked >= self._interval and self._lock.acquire(blocking=False):
            try:
                self._checked = now
                signature = _stat(self._paths)
                if signature != self._seen:
                    self._seen = signature  # one attempt (and one audit record) per change
                    self._reload_locked("file change")
            finally:
                self._lock.release()

    def reload(self, reason: str = "requested") -> bool:
        """Rebuild now (SIGHUP); True when the new content was accepted."""
        with self._lock:
            self._seen = _stat(self._paths)
            self._checked = self._clock()
            return self._reload_locked(reason)

    def _reload_locked(self, reason: str) -> bool:
        raise NotImplementedError

    def _emit(self, outcome: str, message: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(outcome, message)
        except Exception:  # a failing audit hook must not undo an accepted reload
            log.exception("could not record the %s", self.label)


class ReloadingKeySet(PolledFiles):
    """The current keyset, swapped atomically when its files change or on ``reload()``."""

    label = "keyset reload"

    def __init__(self, sources: KeysetSources, *, interval: float = 2.0,
                 on_event: EventHook | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(sources.files(), interval=interval, on_event=on_event, clock=clock)
        self._sources = sources  # stat before load: a change in between is read again
        self._keyset = load_keyset(sources)  # a broken keyset at start-up stops the server
        self.reloads = 0
        self.reload_failures = 0

    def current(self) -> KeySet:
        """The keyset in force; checks the files at most once per ``interval``."""
        self.poll()
        return self._keyset

    def _reload_locked(self, reason: str) -> bool:
        old = self._keyset
        try:
            new = load_keyset(self._sources, old.generation + 1)
        except KeysetError as exc:
            self.reload_failures += 1
            message = f"keyset reload ({reason}) rejected, previous keyset kept: {exc.message}"
            log.warning("%s", message)
            self._emit("error", message)
            return False
        self.reloads += 1
        if new.keys == old.keys:  # the same kids, algorithms and keys (a SIGHUP for the TLS
            # files, a touched file): the keyset in force stays, and with its generation every
            # token verified under it stays cached (a new one emptied the cache)
            message = (f"keyset reloaded ({reason}): unchanged, {len(old.keys)} key(s), "
                       f"generation {old.generation}")
            log.info("%s", message)
            self._emit("success", message)
            return True
        self._keyset = new
        message = f"{describe_change(old, new)} ({reason})"
        log.info("%s", message)
        self._emit("success", message)
        return True
