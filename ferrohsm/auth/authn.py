"""Bearer-token authentication: strict JWT parsing, keysets with pinned algorithms, mTLS binding.

Theory of operation
-------------------
1. ``Authorization`` must appear once (twice: 400) as ``Bearer <token>`` (anything else: 401).
2. The token is parsed HERE, not by PyJWT, because PyJWT is lenient where we must not be: it keeps
   the last of duplicate JSON members, accepts ``=``-padded segments, and ignores header members
   such as ``jku``/``x5u``/``jwk`` we refuse. We demand canonical unpadded base64url, JSON without
   duplicate members or NaN, and a header of exactly ``alg``, optional ``kid`` and ``typ``.
3. ``kid`` selects a key (no kid: the primary HS256 secret); the key pins ONE algorithm and the
   header's ``alg`` must equal it. PyJWT's algorithm objects then check the signature.
4. Claims are checked against the injected clock: exact ``iss``, ``aud``, integer ``iat``/``exp``
   (and ``nbf``), a lifetime capped at ``max_ttl``, a lowercase role, typed optional claims.
5. Post-checks run on EVERY request, cache hits included: the ``jti`` deny-list, and the RFC 8705
   binding of ``cnf.x5t#S256`` to this connection's client certificate (and roles that must be
   bound). The certificate belongs to the connection, not the token, so it is never cached.

Verifying costs 26-70 µs; a verified token is cached by the SHA-256 of its text (bounded memory,
no token text kept) until it expires, and the cache is dropped whenever the keyset changes, so a
removed ``kid`` stops working at once. Messages never contain the token or any key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt

from ..domain.errors import BadRequest, ConfigError, Unauthenticated
from ..domain.ids import uuid4
from ..domain.model import Principal, Role
from ..domain.strictjson import no_duplicates
from ..domain.subjects import reader_form
from .denylist import DenyList, RevocationList, valid_jti
from .keysets import EventHook, KeySet, KeysetSources, ReloadingKeySet, parse_hs256_entry

TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
TAG_CLAIM_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
THUMBPRINT_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
MAX_TOKEN_CHARS = 8192
MAX_TAGS = 32
MAX_SUBJECT_CHARS = 256
MAX_AUDIENCES = 16
REQUIRED = ("iss", "aud", "sub", "role", "iat", "exp")
HEADER_MEMBERS = {"alg", "kid", "typ"}
TYPES = {"jwt", "at+jwt"}
ROLES = {r.value: r for r in Role}
DENY_LIST_FILE = "revoked-tokens.json"


class TokenRejected(Unauthenticated):
    """A 401 carrying a short machine ``reason`` for metrics (bounded label set)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParsedToken:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Verified:
    """What the cache keeps: enough to redo the per-request checks without the token."""

    principal: Principal
    exp: int
    thumbprint: str | None
    generation: int


# ---- parsing --------------------------------------------------------------------------------

def bearer_token(values: list[str]) -> str:
    """The token of the single ``Authorization: Bearer`` header; 400/401 otherwise."""
    if len(values) > 1:
        raise BadRequest("more than one Authorization header")
    if not values:
        raise TokenRejected("missing bearer token", "missing")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip(" ")
    if scheme.lower() != "bearer" or not token:
        raise TokenRejected("expected 'Authorization: Bearer <token>'", "scheme")
    return token


def b64url(segment: str) -> bytes:
    """Canonical unpadded base64url only: one token, one spelling."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise TokenRejected("malformed token", "malformed") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        raise TokenRejected("malformed token", "malformed")
    return raw



def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates,
                           parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TokenRejected("malformed token (invalid JSON or duplicate member)",
                            "malformed") from None
    if not isinstance(value, dict):
        raise TokenRejected("malformed token", "malformed")
    return value


def parse_token(token: str, max_chars: int = MAX_TOKEN_CHARS) -> ParsedToken:
    """Split and decode a compact JWS strictly; the signature is NOT checked here."""
    if len(token) > max_chars:
        raise TokenRejected(f"token longer than {max_chars} characters", "oversized")
    if not TOKEN_RE.fullmatch(token):
        raise TokenRejected("malformed token", "malformed")
    head, body, sig = token.split(".")
    header = json_object(b64url(head))
    check_header(header)
    return ParsedToken(header, json_object(b64url(body)), f"{head}.{body}".encode("ascii"),
                       b64url(sig))


def check_header(header: dict[str, Any]) -> None:
    """Exactly alg, kid?, typ?: crit, jku, x5u, jwk, x5c, b64, zip… are all refused."""
    extra = set(header) - HEADER_MEMBERS
    if extra:
        raise TokenRejected("unsupported token header member(s)", "header")
    if not isinstance(header.get("alg"), str):
        raise TokenRejected("token header has no alg", "header")
    kid, typ = header.get("kid"), header.get("typ")
    # present means a string (RFC 7515): "kid": null is not the member left out
    if "kid" in header and (not isinstance(kid, str) or not 0 < len(kid) <= 128):
        raise TokenRejected("invalid kid", "header")
    if "typ" in header and (not isinstance(typ, str) or typ.lower() not in TYPES):
        raise TokenRejected("unsupported token typ", "header")


# ---- claims ---------------------------------------------------------------------------------

def _int(claims: Mapping[str, Any], name: str, required: bool = False) -> int | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TokenRejected(f"{name} must be an integer", "claims")
    return value


def _opt_str(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is not None and not valid_jti(value):
        raise TokenRejected(f"invalid {name} claim", "claims")
    return value


def check_times(claims: Mapping[str, Any], now: float, leeway: int, max_ttl: int) -> int:
    iat, exp = _int(claims, "iat", True), _int(claims, "exp", True)
    nbf = _int(claims, "nbf")
    assert iat is not None and exp is not None  # noqa: S101  narrows: required=True never returns None
    if now >= exp + leeway:
        raise TokenRejected("token expired", "expired")
    if iat > now + leeway or (nbf is not None and nbf > now + leeway):
        raise TokenRejected("token not yet valid", "immature")
    if not 0 < exp - iat <= max_ttl:
        raise TokenRejected(f"token lifetime must be 1-{max_ttl} seconds", "lifetime")
    return exp


def check_audience(aud: Any, audience: str) -> None:
    auds = [aud] if isinstance(aud, str) else aud
    if (not isinstance(auds, list) or not 0 < len(auds) <= MAX_AUDIENCES
            or not all(isinstance(a, str) for a in auds) or audience not in auds):
        raise TokenRejected("token audience does not match", "audience")


def thumbprint_of(claims: Mapping[str, Any]) -> str | None:
    """RFC 8705 ``cnf.x5t#S256``; any other confirmation method is refused, not ignored."""
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    value = cnf.get("x5t#S256") if isinstance(cnf, dict) and set(cnf) == {"x5t#S256"} else None
    if not isinstance(value, str) or not THUMBPRINT_RE.match(value):
        raise TokenRejected("unsupported cnf claim (only x5t#S256)", "claims")
    return value


# The names the server's own records carry as actor: "system" (start-up, the scheduler, its
# approval requests) and "anonymous" (requests without a valid token). A token naming one would
# be audited as the server itself, or as nobody.
RESERVED_SUBJECTS = frozenset({"system", "anonymous"})


def valid_subject(sub: Any) -> bool:
    """The sub claim the server accepts: 1..MAX_SUBJECT_CHARS printable characters (it is shown
    in audit records and logs), not one of RESERVED_SUBJECTS in any case. `ferrohsm token
    issue` checks with this same rule, so it never mints a token every request would refuse."""
    return (isinstance(sub, str) and 0 < len(sub) <= MAX_SUBJECT_CHARS and sub.isprintable()
            and reader_form(sub) not in RESERVED_SUBJECTS)


def valid_tags(tags: Any) -> bool:
    """The tags claim the server accepts: at most MAX_TAGS names matching TAG_CLAIM_RE."""
    return isinstance(tags, list) and len(tags) <= MAX_TAGS and all(
        isinstance(t, str) and TAG_CLAIM_RE.match(t) for t in tags)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """Type-check identity claims: a wrong type or an unknown role grants nothing."""
    sub, role, tags = claims["sub"], claims["role"], claims.get("tags")
    if not valid_subject(sub):
        raise TokenRejected("invalid sub claim", "claims")
    if not isinstance(role, str) or role not in ROLES:
        raise TokenRejected("invalid role claim", "role")
    if tags is not None and not valid_tags(tags):
        raise TokenRejected("invalid tags claim", "claims")
    sid, jti = _opt_str(claims, "sid"), _opt_str(claims, "jti")
    exp, iat = claims.get("exp"), claims.get("iat")
    # tags scope a Service token only (auth/permissions.py may_see): kept on no other role, so
    # whoami never shows a scope that limits nothing
    scope = frozenset(tags) if tags is not None and ROLES[role] is Role.SERVICE else None
    return Principal(sub, ROLES[role], scope,
                     session=sid or jti, token_id=jti,
                     expires_at=exp if isinstance(exp, int) and not isinstance(exp, bool)
                     else None,
                     issued_at=iat if isinstance(iat, int) and not isinstance(iat, bool)
                     else None)


# ---- the authenticator ----------------------------------------------------------------------

class Authenticator:
    """Turns Authorization header values (+ the connection's client certificate) into a
    Principal. ``secret`` alone gives the one-HS256-key setup; ``keyset`` gives the full one."""

    def __init__(self, secret: bytes | None = None, *, issuer: str, audience: str,
                 max_ttl: int = 900, leeway: int = 30, cache_entries: int = 10000,
                 keyset: ReloadingKeySet | None = None,
                 deny_list: RevocationList | None = None,
                 bound_roles: Iterable[str] = (), require_jti: bool = False,
                 max_token_chars: int = MAX_TOKEN_CHARS,
                 clock: Callable[[], float] = time.time) -> None:
        self.keyset = keyset if keyset is not None else ReloadingKeySet(
            KeysetSources(primary_secret=secret), interval=-1)
        self.deny_list: RevocationList = (  # it has a len()
            deny_list if deny_list is not None else DenyList())
        self.issuer, self.audience = issuer, audience
        self.max_ttl, self.leeway = max_ttl, leeway
        self.bound_roles = frozenset(ROLES[r] for r in bound_roles)
        self.require_jti = require_jti
        self.max_token_chars = max_token_chars
        self._clock = clock
        self._cache: dict[bytes, Verified] = {}
        self._cache_max = cache_entries
        self._cache_generation = -1
        self._lock = threading.Lock()
        self.failures = 0
        self.cache_hits = 0
        self.cache_misses = 0

    def authenticate(self, authorization: Iterable[str], *,
                     client_fingerprint: str | None = None) -> Principal:
        """The principal behind the request's Authorization header values (exactly one)."""
        try:
            return self._verify(bearer_token(list(authorization)), client_fingerprint)
        except TokenRejected:  # from either step (a BadRequest is no failed credential)
            self.failures += 1
            raise

    def verify(self, token: str, *, client_fingerprint: str | None = None) -> Principal:
        try:
            return self._verify(token, client_fingerprint)
        except TokenRejected:
            self.failures += 1
            raise

    def _verify(self, token: str, fingerprint: str | None) -> Principal:
        keyset = self.keyset.current()
        now = self._clock()
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        if keyset.generation == self._cache_generation:  # the hit path: one dict lookup
            entry = self._cache.get(digest)
        else:
            entry = self._cached(digest, keyset.generation)
        if entry is not None and now < entry.exp + self.leeway:
            self.cache_hits += 1
        else:
            self.cache_misses += 1
            entry = self._decode(token, keyset, now)
            self._remember(digest, entry, now)
        self._per_request(entry, fingerprint, now)
        return entry.principal

    def _decode(self, token: str, keyset: KeySet, now: float) -> Verified:
        parsed = parse_token(token, self.max_token_chars)
        key = keyset.select(parsed.header.get("kid"))
        if key is None:
            raise TokenRejected("unknown key id", "kid")
        if parsed.header["alg"] != key.alg:  # the key pins its algorithm; 'none' never matches
            raise TokenRejected("token algorithm does not match its key", "algorithm")
        try:
            valid = key.verify(parsed.signing_input, parsed.signature)
        except (jwt.PyJWTError, ValueError, TypeError):
            valid = False
        if not valid:
            raise TokenRejected("invalid token signature", "signature")
        return self._claims(parsed.claims, now, keyset.generation, key.alg)

    def _claims(self, claims: dict[str, Any], now: float, generation: int,
                alg: str | None = None) -> Verified:
        missing = [name for name in REQUIRED if name not in claims]
        if missing:
            raise TokenRejected(f"token lacks claim(s) {', '.join(missing)}", "claims")
        if not isinstance(claims["iss"], str) or not hmac.compare_digest(
                claims["iss"].encode("utf-8", "surrogatepass"), self.issuer.encode("utf-8")):
            raise TokenRejected("token issuer does not match", "issuer")
        check_audience(claims["aud"], self.audience)
        exp = check_times(claims, now, self.leeway, self.max_ttl)
        principal = principal_from_claims(claims)
        if alg is not None:  # the verifying key's algorithm, for who may vote (approvals)
            principal = replace(principal, signed_with=alg)
        if self.require_jti and principal.token_id is None:
            raise TokenRejected("token lacks a jti", "claims")
        return Verified(principal, exp, thumbprint_of(claims), generation)

    def _per_request(self, entry: Verified, fingerprint: str | None, now: float) -> None:
        """Checks that may change between two uses of the same token: never cached."""
        if self.deny_list.is_revoked(entry.principal.token_id, now):
            raise TokenRejected("token revoked", "revoked")
        if entry.thumbprint is not None:
            if fingerprint is None or not hmac.compare_digest(entry.thumbprint, fingerprint):
                raise TokenRejected("token is bound to another client certificate", "binding")
        elif entry.principal.role in self.bound_roles:
            raise TokenRejected(f"{entry.principal.role.value} tokens must be bound to a client "
                                "certificate (cnf x5t#S256)", "binding")

    # ---- cache ----

    def _cached(self, digest: bytes, generation: int) -> Verified | None:
        if generation != self._cache_generation:
            with self._lock:  # keyset changed: tokens of a removed kid must stop working now
                self._cache.clear()
                self._cache_generation = generation
            return None
        return self._cache.get(digest)

    def _remember(self, digest: bytes, entry: Verified, now: float) -> None:
        if self._cache_max <= 0:
            return
        with self._lock:
            if entry.generation != self._cache_generation:
                return
            if len(self._cache) >= self._cache_max:
                self._evict(now)
            self._cache[digest] = entry

    def _evict(self, now: float) -> None:
        expired = [d for d, e in self._cache.items() if e.exp + self.leeway <= now]
        for d in expired or list(self._cache)[: max(1, self._cache_max // 10)]:
            self._cache.pop(d, None)

    # ---- operations ----

    def revoke(self, jti: str, exp: int | None = None) -> float:
        """Deny-list ``jti`` for as long as any token carrying it could be accepted."""
        until = self.revocation_until(exp)
        self.deny(jti, until)
        return until

    def revocation_until(self, exp: int | None, at: float | None = None) -> float:
        """Until when a revocation made at ``at`` (now) must last. Any acceptable token has
        ``exp <= now + leeway + max_ttl`` (iat is at most ``leeway`` in the future and the
        lifetime is capped), and is accepted until ``exp + leeway``."""
        made = self._clock() if at is None else at
        return revocation_until(exp, made, self.max_ttl, self.leeway)

    def deny(self, jti: str, until: float) -> None:
        """Put ``jti`` on the deny-list until ``until`` (in force in this process even when it
        cannot be persisted: that raises Unavailable after)."""
        self.deny_list.revoke(jti, until, self._clock())

    def restore_revocations(self, revoked: Iterable[tuple[str, float | None, float]]) -> int:
        """At start-up: every revocation the audit log holds (jti, until or None, when it was
        made) that still matters goes back on the deny-list, so a deny-list file deleted or
        edited while the server was down re-admits no revoked token. How many were missing."""
        now = self._clock()
        missing = {jti: until for jti, until in
                   logged_in_force(revoked, now, self.max_ttl, self.leeway).items()
                   if not self.deny_list.is_revoked(jti, now)}
        self.deny_list.revoke_all(missing, now)  # one write, however many
        return len(missing)

    def reload(self, reason: str = "SIGHUP") -> bool:
        """Re-read keyset files and the deny-list now; True when the keyset was accepted."""
        self.deny_list.reload()
        return self.keyset.reload(reason)

    def stats(self) -> dict[str, int]:
        keyset = self.keyset.current()
        return {"failures": self.failures, "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses, "cache_entries": len(self._cache),
                "keys": len(keyset.keys), "keyset_generation": keyset.generation,
                "keyset_reloads": self.keyset.reloads,
                "keyset_reload_failures": self.keyset.reload_failures,
                "revoked_tokens": len(self.deny_list)}


def revocation_until(exp: int | None, made: float, max_ttl: int, leeway: int) -> float:
    """Until when a revocation made at ``made`` must last (Authenticator.revocation_until)."""
    return max(float(exp or 0) + leeway, made + max_ttl + 2 * leeway)


def logged_in_force(revoked: Iterable[tuple[str, float | None, float]], now: float,
                    max_ttl: int, leeway: int) -> dict[str, float]:
    """The revocations an audit log holds (jti, until or None, when it was made) still in
    force at ``now``, each until the latest its records say: what start-up puts back on the
    deny-list, and what an offline backup carries even when the deny-list file was lost."""
    found: dict[str, float] = {}
    for jti, until, made in revoked:
        last = until if until is not None else revocation_until(None, made, max_ttl, leeway)
        if last > now:
            found[jti] = max(last, found.get(jti, last))
    return found


def file_deny_list(auth: Any, data_dir: str) -> DenyList:
    """The file deny-list of ``[auth].deny_list_file`` (default ``<data_dir>/revoked-tokens.json``):
    the one ``serve`` reads, and the one a restore writes the archive's revocations into."""
    deny_path = auth.deny_list_file or str(Path(data_dir) / DENY_LIST_FILE)
    if auth.deny_list_file and not Path(deny_path).absolute().parent.is_dir():
        # found at start, not at the first revocation (which would then be refused, 503)
        raise ConfigError(f"[auth].deny_list_file {deny_path}: its directory does not exist")
    return DenyList(deny_path)


def build_authenticator(auth: Any, primary_secret: bytes | None, data_dir: str, *,
                        on_event: EventHook | None = None,
                        env: Mapping[str, str] | None = None,
                        deny_list: RevocationList | None = None) -> Authenticator:
    """The Authenticator ``config.AuthSettings`` describes (keysets, deny-list, bound roles).

    ``on_event(outcome, message)`` receives every keyset reload so it can be audited.
    ``deny_list`` replaces the file deny-list (the PostgreSQL one, shared by every node).
    """
    environ = os.environ if env is None else env
    # The environment cannot change under a running process: read the named secrets once, so a
    # reload (of the files) never depends on it.
    names = [parse_hs256_entry(entry)[1] for entry in auth.hs256_secret_envs]
    sources = KeysetSources(primary_secret=primary_secret, hs256_envs=auth.hs256_secret_envs,
                            public_key_files=auth.public_key_files, jwks_file=auth.jwks_file,
                            env={name: environ[name] for name in names if name in environ})
    keyset = ReloadingKeySet(sources, interval=auth.keyset_reload_seconds, on_event=on_event)
    return Authenticator(issuer=auth.issuer, audience=auth.audience,
                         max_ttl=auth.max_token_ttl_seconds, leeway=auth.leeway_seconds,
                         cache_entries=auth.token_cache_entries, keyset=keyset,
                         deny_list=deny_list if deny_list is not None
                         else file_deny_list(auth, data_dir),
                         require_jti=auth.require_jti,
                         bound_roles=auth.require_bound_tokens_for_roles,
                         max_token_chars=auth.max_token_bytes)


def issue_token(secret: bytes | Any, *, subject: str, role: str, ttl: int = 900,
                issuer: str = "ferrohsm", audience: str = "ferrohsm",
                tags: list[str] | None = None, now: float | None = None,
                algorithm: str = "HS256", kid: str | None = None, jti: str | None = None,
                sid: str | None = None, cnf_thumbprint: str | None = None) -> str:
    """Sign a token (``ferrohsm token issue``, quickstart and tests). ``secret`` is the HS256
    secret, or a private key when ``algorithm`` is asymmetric (tests and external issuers)."""
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": subject, "role": role,
                              "iat": issued, "exp": issued + ttl, "jti": jti or uuid4()}
    if tags is not None:
        claims["tags"] = tags
    if sid is not None:
        claims["sid"] = sid
    if cnf_thumbprint is not None:
        claims["cnf"] = {"x5t#S256": cnf_thumbprint}
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, secret, algorithm=algorithm, headers=headers)
