#!/usr/bin/env python3
"""What the encrypt path pays for its metrics: FerroHSM's hand-written exposition
(ferrohsm/telemetry/metrics.py) against prometheus_client doing the same, in the same run.

Per request the server counts the request (route, method, status), observes its latency (route,
method) and counts the crypto operation (algorithm, operation, outcome). Both are timed doing
exactly that, alternating rounds, median of rounds; then one scrape of each with the same
series. prometheus_client is a test dependency, not a runtime one: this is the measurement the
README's "Observability" section cites for keeping the hand-written exposition.

    python3 bench/bench_metrics.py [--requests 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PCounter
from prometheus_client import Histogram as PHistogram

from ferrohsm.telemetry.metrics import LATENCY_BUCKETS, ServerMetrics

ROUTE, METHOD, STATUS = "/v1/keys/{key}/encrypt", "POST", "200"


def ours() -> tuple[Callable[[float], None], Callable[[], bytes]]:
    metrics = ServerMetrics()

    def per_request(seconds: float) -> None:
        metrics.requests.inc(ROUTE, METHOD, STATUS)
        metrics.latency.observe(seconds, ROUTE, METHOD)
        metrics.crypto_ops.inc("aes-256-gcm", "encrypt", "success")
    return per_request, lambda: metrics.render().encode()


def theirs() -> tuple[Callable[[float], None], Callable[[], bytes]]:
    registry = CollectorRegistry()
    requests = PCounter("ferrohsm_http_requests", "HTTP requests", ("route", "method", "status"),
                        registry=registry)
    latency = PHistogram("ferrohsm_http_request_duration_seconds", "latency",
                         ("route", "method"), buckets=LATENCY_BUCKETS, registry=registry)
    crypto = PCounter("ferrohsm_crypto_operations", "ops", ("algorithm", "operation", "outcome"),
                      registry=registry)

    def per_request(seconds: float) -> None:
        requests.labels(ROUTE, METHOD, STATUS).inc()
        latency.labels(ROUTE, METHOD).observe(seconds)
        crypto.labels("aes-256-gcm", "encrypt", "success").inc()
    return per_request, lambda: generate_latest(registry)


def timed(fn: Callable[[float], None], count: int) -> float:
    """CPU µs per call (process time: steadier than wall time on a shared machine)."""
    start = time.process_time()
    for i in range(count):
        fn(0.0001 * (i % 50))
    return (time.process_time() - start) / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    impls = {"hand-written": ours(), "prometheus_client": theirs()}
    samples: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(args.rounds):
        for name, (per_request, _) in impls.items():
            samples[name].append(timed(per_request, args.requests))
    print("| exposition | CPU µs per request (3 metric updates), median | rounds | scrape ms |")
    print("| --- | ---: | --- | ---: |")
    for name, (_, scrape) in impls.items():
        start = time.perf_counter()
        for _ in range(20):
            scrape()
        scrape_ms = (time.perf_counter() - start) / 20 * 1000
        print(f"| {name} | {statistics.median(samples[name]):.2f} | "
              + ", ".join(f"{s:.2f}" for s in samples[name]) + f" | {scrape_ms:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
