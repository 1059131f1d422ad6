"""GET /livez (liveness), GET /readyz (readiness) and GET / (to the dashboard).

Why readiness is its own route: a load balancer or an orchestrator must stop sending traffic
to a node that cannot serve it (its audit log degraded, its store closed, no certificate, still
starting or already stopping) without a liveness probe killing a process that only has to wait
for a disk to be freed. /healthz answers "is the process alive and what does it report",
/readyz only "send me requests now?". Both are public and say nothing secret: the checks are
named, and each is true or false. /livez answers 200 whenever the process answers at all (sealed
too): /healthz is 503 while the audit log is degraded or the node sealed, and a liveness probe
pointed there restarted a node whose disk was full (an outside tester), which cannot help.
"""

from __future__ import annotations

from collections.abc import Callable

from ...domain.model import RequestContext
from ..http import Request, Response
from ..router import Operation, Router
from .common import Reply, query

TAGS = ("system",)
Readiness = Callable[[], dict[str, bool]]


def register(router: Router, readiness: Readiness) -> None:
    """``readiness()`` names each start-up and serving check and whether it holds now."""

    def readyz(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        query(req, set())
        checks = readiness()
        ready = all(checks.values())
        return (200 if ready else 503), {"status": "ready" if ready else "not_ready",
                                         "checks": checks}

    def livez(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        query(req, set())
        return 200, {"status": "alive"}

    def root(ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        # A person typing the host name lands on the dashboard, as with any appliance.
        return Response(302, b"", [("Location", "/ui/"), ("Cache-Control", "no-cache")])

    router.add("GET", "/readyz", readyz, name="ready", doc=Operation(
        "Readiness: whether this node should receive requests now", TAGS,
        description="Public. 200 with {\"status\": \"ready\", \"checks\": {...}} once start-up "
                    "checks are done, the key store is open, the audit log accepts records and "
                    "the TLS certificate is loaded and in date; 503 with \"not_ready\" and the "
                    "same checks (each true or false) otherwise, e.g. while starting, stopping "
                    "or while the audit log is degraded. Liveness is GET /livez.",
        extra=((503, "not ready: at least one check is false", None),)))
    router.add("GET", "/livez", livez, name="live", inline=True, doc=Operation(
        "Liveness: 200 whenever the process answers", TAGS,
        description="Public. 200 with {\"status\": \"alive\"} whenever this process answers, "
                    "sealed or with its audit log degraded included (restarting would not "
                    "help then): point liveness probes here, readiness probes at /readyz."))
    router.add("GET", "/", root, name="root", doc=Operation(
        "Redirect to the dashboard (/ui/)", TAGS, status=302, media_type=None))
