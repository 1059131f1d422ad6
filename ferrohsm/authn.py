"""Bearer-token authentication (HS256 JWTs) with a bounded verified-token cache.

PyJWT allow-lists the algorithm, checks the signature, exp/nbf/iat, issuer and audience; we add
what it does not: required claim types, an exact role, and a cap on the token's lifetime. Verifying
costs ~26 µs, so verified tokens are cached by their exact text until they expire (PERF-NOTES).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import jwt

from .errors import BadRequest, Unauthenticated
from .ids import uuid4
from .model import Principal, Role

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
MAX_TOKEN_CHARS = 8192
REQUIRED = ["iss", "aud", "sub", "role", "iat", "exp"]
ROLES = {r.value: r for r in Role}


class Authenticator:
    def __init__(self, secret: bytes, *, issuer: str, audience: str, max_ttl: int = 900,
                 leeway: int = 30, cache_entries: int = 10000,
                 clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.issuer = issuer
        self.audience = audience
        self.max_ttl = max_ttl
        self.leeway = leeway
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._cache_max = cache_entries
        self._lock = threading.Lock()
        self.failures = 0
        self.cache_hits = 0
        self.cache_misses = 0

    def authenticate(self, authorization: Iterable[str]) -> Principal:
        """The principal behind the request's Authorization header values (exactly one)."""
        values = list(authorization)
        if len(values) > 1:
            raise BadRequest("more than one Authorization header")
        if not values:
            raise self._fail("missing bearer token")
        scheme, _, token = values[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise self._fail("expected 'Authorization: Bearer <token>'")
        return self.verify(token)

    def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        now = self._clock()
        if cached is not None and now < cached[0] + self.leeway:
            self.cache_hits += 1
            return cached[1]
        self.cache_misses += 1
        if len(token) > MAX_TOKEN_CHARS or not TOKEN_RE.match(token):
            raise self._fail("malformed token")
        principal, exp = self._decode(token, now)
        with self._lock:
            if len(self._cache) >= self._cache_max:
                self._evict(now)
            self._cache[token] = (exp, principal)
        return principal

    def _decode(self, token: str, now: float) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "HS256" or set(header) - {"alg", "typ", "kid"}:
                raise self._fail("unsupported token header")
            claims = jwt.decode(token, self._secret, algorithms=["HS256"],
                                audience=self.audience, issuer=self.issuer, leeway=self.leeway,
                                options={"require": REQUIRED, "verify_iat": True})
        except jwt.PyJWTError:
            raise self._fail("invalid or expired token") from None
        return principal_from_claims(claims, self.max_ttl, self._fail), float(claims["exp"])

    def _evict(self, now: float) -> None:
        expired = [t for t, (exp, _) in self._cache.items() if exp + self.leeway <= now]
        for t in expired or list(self._cache)[: max(1, self._cache_max // 10)]:
            self._cache.pop(t, None)

    def _fail(self, message: str) -> Unauthenticated:
        self.failures += 1
        return Unauthenticated(message)

    def stats(self) -> dict[str, int]:
        return {"failures": self.failures, "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses, "cache_entries": len(self._cache)}


def principal_from_claims(claims: dict[str, Any], max_ttl: int,
                          fail: Callable[[str], Exception]) -> Principal:
    """Type-check the claims PyJWT does not: a wrong type grants nothing."""
    sub, role, iat, exp = claims["sub"], claims["role"], claims["iat"], claims["exp"]
    if not isinstance(sub, str) or not 0 < len(sub) <= 256 or not sub.isprintable():
        raise fail("invalid sub claim")
    if not isinstance(role, str) or role not in ROLES:
        raise fail("invalid role claim")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp)):
        raise fail("iat and exp must be integers")
    if exp - iat > max_ttl or exp <= iat:
        raise fail(f"token lifetime exceeds {max_ttl} seconds")
    tags = claims.get("tags")
    if tags is not None and (not isinstance(tags, list)
                             or not all(isinstance(t, str) for t in tags)):
        raise fail("invalid tags claim")
    session = claims.get("sid") or claims.get("jti")
    if session is not None and not isinstance(session, str):
        raise fail("invalid sid/jti claim")
    jti = claims.get("jti") if isinstance(claims.get("jti"), str) else None
    return Principal(sub, ROLES[role], frozenset(tags) if tags is not None else None,
                     session=session, token_id=jti)


def issue_token(secret: bytes, *, subject: str, role: str, ttl: int = 900,
                issuer: str = "ferrohsm", audience: str = "ferrohsm",
                tags: list[str] | None = None, now: float | None = None) -> str:
    """Sign an HS256 token (used by `ferrohsm token issue`, quickstart and tests)."""
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": subject, "role": role,
                              "iat": issued, "exp": issued + ttl, "jti": uuid4()}
    if tags is not None:
        claims["tags"] = tags
    return jwt.encode(claims, secret, algorithm="HS256")
