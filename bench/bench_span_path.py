#!/usr/bin/env python3
"""What recording spans costs the request path itself: the Application's CPU per encrypt, in
this process, with tracing off, with every request sampled out, and with every request traced.

``bench_server.py`` measures the whole service over TLS, where exported spans also cost through
the exporter child's work on the other core and the bench's receiver, and rounds swing by ±5 %.
This bench takes the network, the event loop, the exporter and the fsync out: the same runtime
(`build_runtime`, the shipped defaults, filesystem store) answers the same encrypt request
through ``Application.__call__`` and ``finished``, as the event loop calls them (the request's
audit record deferred to a group, written once a round), and the three variants take turns in
one process, so their difference is the span path's own cost to within about a microsecond.

The traced variant's records go to a real SpanPipe whose child reads and discards them (no
encoding, no HTTP): what the serving process does, and nothing else.

    python3 bench/bench_span_path.py [--requests 3000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ferrohsm import app as wiring
from ferrohsm.api.application import Application
from ferrohsm.api.http import Headers, Request
from ferrohsm.auth.authn import issue_token
from ferrohsm.config import load_config, load_secrets
from ferrohsm.telemetry import sampler, tracing
from ferrohsm.telemetry.spanpipe import SpanPipe

CONFIG = """
[server]
listen = "127.0.0.1:0"
[storage]
key_store = "filesystem"
data_dir = "{data}"
[rate_limit]
requests_per_second = 1000000.0
burst = 1000000
"""
DISCARD = [sys.executable, "-c", "import sys\nwhile sys.stdin.buffer.read(1 << 16): pass"]
ALWAYS = sampler.Sampler("always_on", 1 << 65, False)
NEVER = sampler.Sampler("always_off", 0, False)


def request(method: str, path: str, token: str, body: object,
            tickets: list[object] | None) -> Request:
    headers = Headers([("host", "bench"), ("authorization", f"Bearer {token}"),
                       ("content-type", "application/json"), ("user-agent", "bench/1")])
    req = Request(method, path, path, {}, headers, json.dumps(body).encode(), "127.0.0.1",
                  40000, None, str(uuid.uuid4()), time.monotonic())
    req.tickets = tickets
    return req


def one_round(app: Application, make: Callable[[], Request], count: int,
              flush: Callable[[], None]) -> float:
    """CPU seconds per request for ``count`` requests (made beforehand, not counted)."""
    batch = [make() for _ in range(count)]
    started = time.process_time()
    for req in batch:
        resp = app(req)
        app.finished(req, resp, 0.0)
    spent = time.process_time() - started
    assert resp.status == 200, resp.body
    flush()
    return spent / count


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    secret = secrets.token_urlsafe(48)
    os.environ.update(
        FERROHSM_MASTER_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
        FERROHSM_JWT_HS256_SECRET=secret,
        FERROHSM_AUDIT_HMAC_KEY=base64.b64encode(secrets.token_bytes(32)).decode())
    with tempfile.TemporaryDirectory(prefix="ferrohsm-bench-") as name:
        cfg = Path(name) / "bench.toml"
        cfg.write_text(CONFIG.format(data=Path(name) / "data"))
        config = load_config(str(cfg))
        rt = wiring.build_runtime(config, load_secrets(config))
        try:
            measure(rt, secret.encode(), args)
        finally:
            rt.audit.close()
    return 0


def measure(rt: wiring.Runtime, secret: bytes, args: argparse.Namespace) -> None:
    app = rt.app
    admin = issue_token(secret, subject="bench-admin", role="administrator")
    service = issue_token(secret, subject="bench-service", role="service")
    created = app(request("POST", "/v1/keys", admin,
                          {"algorithm": "aes-256-gcm", "usage": "encrypt"}, None))
    path = f"/v1/keys/{json.loads(created.body)['id']}/encrypt"
    body = {"plaintext": base64.b64encode(b"x" * 32).decode()}
    pipe = SpanPipe(command=DISCARD)
    tracers = {"off": None, "sampled out": tracing.Tracer(NEVER, pipe),
               "traced": tracing.Tracer(ALWAYS, pipe)}
    results: dict[str, list[float]] = {name: [] for name in tracers}
    try:
        for _ in range(args.rounds):
            for name, tracer in tracers.items():
                app.tracer = tracer
                results[name].append(one_round(
                    app, lambda: request("POST", path, service, body, []), args.requests,
                    rt.audit.write_queued))
    finally:
        app.tracer = None
        pipe.close()
    report(results, args)


def report(results: dict[str, list[float]], args: argparse.Namespace) -> None:
    print(f"\n### The request path's CPU per encrypt, in-process ({args.rounds} rounds x "
          f"{args.requests} requests, interleaved)\n")
    print("| tracing | µs a request, best round | median round | over off (best) |")
    print("| --- | ---: | ---: | ---: |")
    off = min(results["off"])
    for name, rounds in results.items():
        best = min(rounds)
        print(f"| {name} | {best * 1e6:.1f} | {statistics.median(rounds) * 1e6:.1f} | "
              f"{(best - off) * 1e6:+.1f} |")


if __name__ == "__main__":
    sys.exit(main())
