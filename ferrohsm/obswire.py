"""The metrics of the composition root: caches, audit health and flushes, keys by state,
pending approvals, and every series that can be known at start created at zero (Prometheus
by the book: counters end in ``_total`` and exist from the first scrape). Kept apart from
app.py so each stays readable; it names no concrete store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from .api.openapi import document
from .api.router import Router
from .audit.sinkbase import ChainedSink
from .auth.authn import Authenticator
from .crypto.algorithms import ALGORITHMS
from .domain.approval import ApprovalState
from .domain.model import KeyFilter, KeyState
from .service import KeyService
from .store.approvalstore import ApprovalStore
from .store.keystore import KeyStore
from .telemetry.metrics import ServerMetrics
from .telemetry.metricshare import MetricShare
from .telemetry.tracing import durable_append


class Runtime(Protocol):
    """What the metrics read of app.Runtime (a protocol: app imports this module)."""

    metrics: ServerMetrics
    service: KeyService
    authenticator: Authenticator
    audit: Any
    store: KeyStore
    approvals: ApprovalStore | None
    router: Router
    app: Any


def wire_metrics(rt: Runtime, audit: ChainedSink) -> None:
    _gauges(rt)
    _observability(rt, audit)


def share_metrics(metrics: ServerMetrics, data_dir: str, index: int) -> MetricShare:
    """``processes = N``: process ``index`` shows every process's series on /metrics."""
    share = MetricShare(Path(data_dir) / "metrics", index, metrics.registry.families)
    metrics.share = share
    share.start()
    return share


def _gauges(rt: Runtime) -> None:
    """Caches and audit health: levels as gauges, what only grows as counters."""
    cache = rt.service.engine.cache
    rt.metrics.add_gauge("ferrohsm_key_cache", "Unsealed-key cache size and bound",
                         lambda: _levels(cache.stats()), ("stat",))
    rt.metrics.add_counter("ferrohsm_key_cache_events", "Unsealed-key cache hits, misses, "
                           "evictions", lambda: _events(cache.stats()), ("event",))
    rt.metrics.add_gauge("ferrohsm_token_cache", "Verified-token cache and keyset state",
                         lambda: _levels(rt.authenticator.stats()), ("stat",))
    rt.metrics.add_counter("ferrohsm_token_cache_events", "Token verification cache hits and "
                           "misses, failures, keyset reloads",
                           lambda: _events(rt.authenticator.stats()), ("event",))
    rt.metrics.add_gauge("ferrohsm_audit_healthy", "1 when the audit log accepts records (0 "
                         "from a failed write or flush until the next good one)",
                         lambda: {(): 1.0 if rt.audit.degraded() is None else 0.0})


# The cache statistics that only grow: exported as counters (``_total``), the rest as gauges.
MONOTONIC_STATS = frozenset({"hits", "misses", "evictions", "failures", "cache_hits",
                             "cache_misses", "keyset_reloads", "keyset_reload_failures"})


def _levels(stats: dict[str, int]) -> dict[tuple[str, ...], float]:
    return {(k,): float(v) for k, v in stats.items() if k not in MONOTONIC_STATS}


def _events(stats: dict[str, int]) -> dict[tuple[str, ...], float]:
    return {(k,): float(v) for k, v in stats.items() if k in MONOTONIC_STATS}


def _observability(rt: Runtime, audit: ChainedSink) -> None:
    """Issue 18's metrics: audit flush histograms, keys by state, pending approvals, and every
    series that can be known at start created at zero."""
    audit.on_sync = rt.metrics.observe_audit_sync
    store, approvals = rt.store, rt.approvals
    rt.metrics.add_gauge("ferrohsm_keys", "Keys by lifecycle state",
                         lambda: {(s.value,): float(store.count(KeyFilter(state=s)))
                                  for s in KeyState}, ("state",))
    if approvals is not None:
        rt.metrics.add_gauge(
            "ferrohsm_approvals_pending", "Approvals waiting for decisions (counted to 10000)",
            lambda: {(): float(len(approvals.list(ApprovalState.PENDING, datetime.now(UTC),
                                                  limit=10000)))})
    for name, algorithm in ALGORITHMS.items():  # only what the algorithm can do
        for operation in (op for usage in sorted(algorithm.usages)
                          for op in CRYPTO_OPERATIONS[usage]):
            for outcome in ("success", "error"):
                rt.metrics.crypto_ops.touch(name, operation, outcome)
    for reason in AUTH_FAILURE_REASONS:
        rt.metrics.auth_failures.touch(reason)
    access = rt.app.access
    rt.metrics.add_counter("ferrohsm_log_lines_dropped", "Log lines (access lines included) "
                           "dropped: stderr took none in time (a stuck log shipper)",
                           lambda: {(): float(access.dropped)})
    paths = document(rt.router.routes())["paths"]  # each route at every status it names
    for route in rt.router.routes():
        rt.metrics.latency.touch(route.template, route.method)
        named = paths.get(route.template, {}).get(route.method.lower(), {}).get("responses")
        for status in named or [route.doc.status if route.doc is not None else 200]:
            rt.metrics.requests.touch(route.template, route.method, str(status))
    _spans(rt)


def _spans(rt: Runtime) -> None:
    """With OTLP export on: spans handed to the exporter child or dropped (a busy or stuck
    child, telemetry/spanpipe.py), and the child's restarts."""
    tracer = getattr(rt.app, "tracer", None)
    if tracer is None:
        return
    rt.audit.observe_durable = durable_append  # a worker's request: its records' flushes
    rt.metrics.add_counter("ferrohsm_trace_spans", "Spans handed to the OTLP exporter process "
                           "(sent), dropped because it was busy or down, or handed to it and "
                           "not delivered to the collector (failed)",
                           lambda: {(k,): float(v) for k, v in tracer.stats().items()
                                    if k in ("sent", "dropped", "failed")}, ("outcome",))
    rt.metrics.add_counter("ferrohsm_trace_exporter_restarts", "Restarts of the OTLP span "
                           "exporter process", lambda: {(): float(tracer.stats()["restarts"])})


CRYPTO_OPERATIONS = {"encrypt": ("encrypt", "decrypt"), "sign": ("sign", "verify"),
                     "wrap": ("wrap", "unwrap")}  # a usage's operations
AUTH_FAILURE_REASONS = ("missing", "scheme", "malformed", "oversized", "header", "algorithm",
                        "kid", "signature", "claims", "issuer", "audience", "expired",
                        "immature", "lifetime", "role", "binding", "revoked")
