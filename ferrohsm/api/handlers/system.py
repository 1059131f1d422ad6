"""Health, metrics and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...domain.model import RequestContext
from ...telemetry.metrics import ServerMetrics
from .. import openapi
from ..http import Request, Response
from ..router import Router
from .common import Reply, query


def register(router: Router, health: Callable[[], dict[str, Any]], metrics: ServerMetrics,
             extra_operations: list[Any] | None = None) -> None:
    doc = openapi.document(extra_operations or [])

    def healthz(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        query(req, set())
        report = health()
        return (200 if report["status"] == "ok" else 503), report

    def prometheus(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        query(req, set())
        return Response(200, metrics.render().encode("utf-8"),
                        [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])

    def spec(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        return 200, doc

    router.add("GET", "/healthz", healthz, name="health", inline=True)
    router.add("GET", "/metrics", prometheus, name="metrics", inline=True)
    router.add("GET", "/v1/openapi.json", spec, name="openapi", inline=True)
