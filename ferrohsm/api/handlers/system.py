"""Health, metrics and the OpenAPI document."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from ...auth.authn import Authenticator
from ...auth.ratelimit import RateLimiter
from ...domain.errors import FerroError
from ...domain.model import RequestContext, Role
from ...telemetry.metrics import ServerMetrics
from .. import openapi
from ..http import JSON_CONTENT_TYPE, Request, Response
from ..router import Operation, Router
from .common import Reply, query

TAGS = ("system",)


# What anyone is told: the status a load balancer needs, and the counters the interface
# promises every caller (rate limiting, token verification failures, the unsealed-key cache),
# which /metrics publishes without a token anyway. Paths, key counts and ids and the audit head
# stay behind an Auditor or Administrator token.
PUBLIC_HEALTH = ("status", "version", "auth", "rate_limit", "cache")
# The served certificate's serial, validity and OCSP status are public (any TLS handshake shows
# the certificate): an expiry or revocation monitor needs no token.
PUBLIC_HEALTH_IF_PRESENT = ("tls", "sealed")  # sealed: custody/gate.py, `ferrohsm status`


def register(router: Router, health: Callable[[], dict[str, Any]], metrics: ServerMetrics,
             may_see_details: Callable[[RequestContext, Request], bool]) -> None:
    # The document describes the router's whole table, so it is built on first use (every route
    # is registered at start-up, before the server listens), then served as the same bytes.
    built: list[bytes] = []

    def healthz(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        query(req, set())
        report = health()
        status = 200 if report["status"] == "ok" else 503
        if not may_see_details(ctx, req):
            report = {name: report[name] for name in PUBLIC_HEALTH
                      + tuple(n for n in PUBLIC_HEALTH_IF_PRESENT if n in report)}
        return status, report

    def prometheus(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        query(req, set())
        return Response(200, metrics.render().encode("utf-8"),
                        [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])

    def spec(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        if not built:
            built.append(json.dumps(openapi.document(router.routes()),
                                    separators=(",", ":")).encode("utf-8"))
        return Response(200, built[0], [("Content-Type", JSON_CONTENT_TYPE)])

    router.add("GET", "/healthz", healthz, name="health", inline=True, doc=Operation(
        "Status for anyone; details for an Auditor or Administrator token", TAGS,
        response="Health", optional_auth=True,
        description="Without a token, or with any token that is not a valid Auditor or "
                    "Administrator token (an invalid one included: never 401), the body is "
                    "status, version, tls (the served certificate's serial, validity and "
                    "OCSP status) and the counters of authentication, rate limits and the "
                    "cache (as /metrics has them). With one, it adds the reason of a degraded "
                    "status and the counters of the store, audit log and key records.",
        extra=((503, "degraded: the audit log does not accept records (a failed write or "
                     "flush, until the next good one)", "Health"),)))
    # On the worker pool, not the event loop: a scrape counts keys by state in the store, which
    # on PostgreSQL is a round trip a slow or frozen database would hold the loop for.
    router.add("GET", "/metrics", prometheus, name="metrics", doc=Operation(
        "Prometheus text exposition 0.0.4 (no authentication)", TAGS,
        media_type="text/plain; version=0.0.4"))
    router.add("GET", "/v1/openapi.json", spec, name="openapi", inline=True, doc=Operation(
        "This document", TAGS))


HEALTH_DETAIL_ROLES = frozenset({Role.AUDITOR, Role.ADMINISTRATOR})


def health_viewer(auth: Authenticator, limiter: RateLimiter
                  ) -> Callable[[RequestContext, Request], bool]:
    """Whether a /healthz caller may see the details (paths, counts, key ids, the audit head):
    a valid Auditor or Administrator token. No token or any other (an invalid one included)
    gets the status only and no 401, so load balancers keep working whatever they send. A bad
    token spends a token of the address's bucket, as a failed authentication does anywhere,
    and an address whose bucket is empty is told the status only: no free oracle for guesses."""
    def may_see(ctx: RequestContext, req: Request) -> bool:
        values, ip, now = req.headers.get_all("authorization"), ctx.source_ip or "", time.monotonic()
        if not values or limiter.ip_spent(ip, now):
            return False
        try:
            principal = auth.authenticate(values, client_fingerprint=ctx.client_fingerprint)
        except FerroError:
            with contextlib.suppress(FerroError):
                limiter.take_ip(ip, now)
            return False
        return principal.role in HEALTH_DETAIL_ROLES
    return may_see
