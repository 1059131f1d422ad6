#!/usr/bin/env python3
"""Batch encrypt against single-item encrypt on the same server, in the same run (issue 19).

One `ferrohsm serve` (durable audit: every answer waits for its records' fsync; filesystem key
store) pinned to core 0, wrk on core 1 with keep-alive TLS 1.3 connections. Rounds alternate:

* single   POST /v1/keys/K/encrypt {"plaintext": 32 bytes}: requests/s = items/s
* batch    POST /v1/keys/K/encrypt {"batch": [100 x {"plaintext": 32 bytes}]}: items/s =
           100 x requests/s; p50/p99 are per batch (per request)

Target: batch items/s >= 10 x single items/s; the p99 of a batch is reported. Before timing, one
batch is checked item by item (every item must answer a ciphertext: wrk only sees statuses).

    python3 bench/bench_batch.py [--duration 8] [--rounds 3] [--connections 16] [--items 100]

Needs /usr/bin/wrk (Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_http import lua_script, median_round, run_wrk
from bench_server import Server, call

from ferrohsm.auth.authn import issue_token
from ferrohsm.tls.devpki import make_dev_pki

PLAINTEXT = base64.b64encode(b"x" * 32).decode()


def bodies(items: int) -> dict[str, str]:
    single = {"plaintext": PLAINTEXT}
    return {"single": json.dumps(single, separators=(",", ":")),
            "batch": json.dumps({"batch": [single] * items}, separators=(",", ":"))}


def check_batch(srv: Server, path: str, token: str, body: str, items: int) -> None:
    """One batch, checked item by item: wrk only counts statuses, and a batch answers 200 even
    when every item failed."""
    status, reply = call(srv.conn(), "POST", path, token, json.loads(body))
    assert status == 200, reply
    results = reply["results"]
    assert len(results) == items and all("ciphertext" in r for r in results), results[:3]


def run(args: argparse.Namespace, tmp: Path) -> dict[str, list[dict[str, float]]]:
    master, secret = secrets.token_bytes(32), secrets.token_urlsafe(48)
    env = dict(os.environ, FERROHSM_MASTER_KEY=base64.b64encode(master).decode(),
               FERROHSM_JWT_HS256_SECRET=secret,
               FERROHSM_AUDIT_HMAC_KEY=base64.b64encode(secrets.token_bytes(32)).decode())
    pki = make_dev_pki(tmp / "pki")
    admin = issue_token(secret.encode(), subject="bench-admin", role="administrator")
    service = issue_token(secret.encode(), subject="bench-service", role="service",
                          ttl=min(900, args.rounds * 2 * (args.duration + 5) + 120))
    srv = Server(tmp, "durable", pki, env)
    srv.start()
    try:
        status, key = call(srv.conn(), "POST", "/v1/keys", admin,
                           {"algorithm": "aes-256-gcm", "usage": "encrypt"})
        assert status == 201, key
        path = f"/v1/keys/{key['id']}/encrypt"
        url = f"https://127.0.0.1:{srv.port}{path}"
        scripts: dict[str, Path] = {}
        for name, body in bodies(args.items).items():
            scripts[name] = tmp / f"{name}.lua"
            scripts[name].write_text(lua_script(body, {"Authorization": f"Bearer {service}"}))
        check_batch(srv, path, service, bodies(args.items)["batch"], args.items)
        assert srv.proc is not None
        for script in scripts.values():  # warm-up
            run_wrk(url, script, args.connections, min(2, args.duration), srv.proc.pid)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in scripts}
        for _ in range(args.rounds):
            for name, script in scripts.items():
                results[name].append(run_wrk(url, script, args.connections, args.duration,
                                             srv.proc.pid))
        check_batch(srv, path, service, bodies(args.items)["batch"], args.items)
    finally:
        srv.stop()
    return results


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> float:
    per_request = {"single": 1, "batch": args.items}
    print(f"\n### Encrypt 32 B: single items vs batches of {args.items}, durable audit, "
          f"{args.connections} keep-alive TLS 1.3 connections, {args.rounds} x {args.duration} s, "
          "median round\n")
    print("| request | requests/s | items/s | p50 ms | p99 ms (per request) | CPU µs/item | "
          "errors+non-2xx | rounds (items/s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    items_per_s: dict[str, float] = {}
    for name, rounds in results.items():
        best = median_round(rounds)
        n = per_request[name]
        items_per_s[name] = best["rps"] * n
        errors = sum(int(r["errors"] + r["non2xx"]) for r in rounds)
        print(f"| {name} | {best['rps']:,.0f} | {best['rps'] * n:,.0f} | "
              f"{best['p50_us'] / 1000:.2f} | {best['p99_us'] / 1000:.2f} | "
              f"{best['cpu_us'] / n:.1f} | {errors} | "
              + ", ".join(f"{r['rps'] * n:,.0f}" for r in rounds) + " |")
    ratio = items_per_s["batch"] / items_per_s["single"]
    print(f"\nbatch items/s / single items/s: {ratio:.1f} (target >= 10)")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--items", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    os.sched_setaffinity(0, {1})  # wrk and this client on core 1; the server pins itself to 0
    with tempfile.TemporaryDirectory(prefix="ferrohsm-bench-") as name:
        results = run(args, Path(name))
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
