#!/usr/bin/env python3
"""What the PostgreSQL state's consistency costs per request, against SQLite, in the same run.

Two checks run on every request that uses a key or a token, and neither may be answered from
a stale cache (README, "Running several nodes"):

* the key lookup (``store.get``): the decoded key is cached; SQLite pays one ``PRAGMA
  data_version`` to know it is current, filesystem one ``lstat``;
* the revoked-token check (``is_revoked``): the file deny-list answers from memory (one ``stat``
  to see whether another process changed the file).

On PostgreSQL both are answered from memory while the change generations (store/pgfresh.py)
are unchanged: the server checks them ONCE per event-loop turn (one round trip for every
request of the turn); a lookup outside a turn (the rows "key lookup" and "revoked-token check"
below) makes its own check. The rows "freshness check" and "turn of 1 request" show the parts.

Measured single-threaded and with 4 threads (the server's workers share the GIL and the pool),
as medians of ``--rounds`` rounds of ``--seconds`` each. Also the engine's encrypt path (lookup
+ cached unseal + AES-GCM + token), as bench_service.py measures it.

With ``--http``: `ferrohsm serve` on the SQLite store against the same on the PostgreSQL store
(with the durable file audit sink), plus the filesystem store (the shipped default) and the
PostgreSQL store with the PostgreSQL audit sink, encrypt of 32 bytes through wrk, 16 keep-alive TLS 1.3
connections, rounds alternating (bench_server.py's harness: server pinned to core 0, wrk to 1).

Usage: python3 bench/bench_pg_state.py [--seconds 1.5] [--rounds 5] [--http [--duration 8]]
(starts its own throwaway PostgreSQL through tests/pgserver.py).
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
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pgserver  # tests/pgserver.py: a real, throwaway PostgreSQL

from ferrohsm.auth.denylist import DenyList
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.ids import uuid7
from ferrohsm.engine.keycache import MaterialCache
from ferrohsm.engine.keyengine import KeyEngine
from ferrohsm.store.keystore import KeyStore
from ferrohsm.store.pgdb import PgDatabase
from ferrohsm.store.postgres import PostgresStore
from ferrohsm.store.postgres_revocations import PostgresDenyList
from ferrohsm.store.sqlite import SQLiteStore

PLAINTEXT = b"x" * 32


def rate(fn: Callable[[], object], seconds: float, threads: int = 1) -> float:
    """Calls per second of ``fn`` over ``threads`` threads."""
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(n: int) -> None:
        done = 0
        while time.perf_counter() < stop:
            for _ in range(50):
                fn()
            done += 50
        counts[n] = done
    start = time.perf_counter()
    pool = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


def engine_key(store: KeyStore, engine: KeyEngine) -> str:
    key_id = uuid7()
    sealed = engine.new_material("aes-256-gcm", key_id, 1)
    store.create(lc.new_key(key_id=key_id, name="bench", description="", algorithm="aes-256-gcm",
                            usage="encrypt", tags=(), sealed=sealed, now=datetime.now(UTC),
                            actor="bench"))
    return key_id


def one_turn(store: PostgresStore, deny: PostgresDenyList, key_id: str) -> None:
    """What a request costs on the event loop: the turn's check, then both answers from memory."""
    with store.freshness.turn():
        store.get(key_id)
        deny.is_revoked("not-revoked", time.time())


def median(fn: Callable[[], object], seconds: float, rounds: int, threads: int) -> float:
    return statistics.median(rate(fn, seconds, threads) for _ in range(rounds))


def http_rounds(args: argparse.Namespace, server: pgserver.PostgresServer) -> None:
    """Encrypt through `ferrohsm serve`: SQLite store vs PostgreSQL store, same run."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_http import lua_script, median_round, run_wrk
    from bench_server import Server, call

    from ferrohsm.auth.authn import issue_token
    from ferrohsm.tls.devpki import make_dev_pki

    os.sched_setaffinity(0, {1})  # wrk and this client on core 1; servers pin themselves to 0
    secret = secrets.token_urlsafe(48)
    env = dict(os.environ, FERROHSM_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(),
               FERROHSM_JWT_HS256_SECRET=secret,
               FERROHSM_AUDIT_HMAC_KEY=base64.b64encode(os.urandom(32)).decode(),
               FERROHSM_POSTGRES_DSN=server.new_database())
    tmp = Path(tempfile.mkdtemp(prefix="ferrohsm-bench-http-"))
    pki = make_dev_pki(tmp / "pki")
    admin = issue_token(secret.encode(), subject="bench-admin", role="administrator")
    service = issue_token(secret.encode(), subject="bench-service", role="service")
    # (name, key store, audit sink): the shipped default, SQLite, PostgreSQL for the keys only,
    # and PostgreSQL for keys and audit (one node of a cluster: the issue 16 figure)
    layouts = (("filesystem", "filesystem", "file"), ("sqlite", "sqlite", "file"),
               ("postgres", "postgres", "file"), ("postgres+sink", "postgres", "postgres"))
    servers = {name: Server(tmp, name.replace("+", "-"), pki,  # each its own database
                            dict(env, FERROHSM_POSTGRES_DSN=server.new_database()),
                            store=store, sink=sink)
               for name, store, sink in layouts}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    try:
        urls, scripts = {}, {}
        for name, srv in servers.items():
            srv.start()
            status, key = call(srv.conn(), "POST", "/v1/keys", admin,
                               {"algorithm": "aes-256-gcm", "usage": "encrypt"})
            assert status == 201, key
            urls[name] = f"https://127.0.0.1:{srv.port}/v1/keys/{key['id']}/encrypt"
            scripts[name] = tmp / f"{name}.lua"
            scripts[name].write_text(lua_script(
                json.dumps({"plaintext": base64.b64encode(b"x" * 32).decode()}),
                {"Authorization": f"Bearer {service}"}))
            assert srv.proc is not None
            run_wrk(urls[name], scripts[name], 16, 2, srv.proc.pid)  # warm-up
        for _ in range(args.rounds):
            for name, srv in servers.items():
                assert srv.proc is not None
                results[name].append(run_wrk(urls[name], scripts[name], 16, args.duration,
                                             srv.proc.pid))
    finally:
        for srv in servers.values():
            srv.stop()
    print(f"\n`ferrohsm serve`, encrypt 32 B, 16 TLS connections, {args.rounds} x "
          f"{args.duration} s, median round\n")
    print("| key store (audit sink) | req/s | p50 ms | p99 ms | server CPU us/req | errors | rounds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    best = {}
    for name, rounds in results.items():
        best[name] = b = median_round(rounds)
        errors = sum(int(r["errors"] + r["non2xx"]) for r in rounds)
        print(f"| {name} | {b['rps']:,.0f} | {b['p50_us'] / 1000:.2f} | {b['p99_us'] / 1000:.2f}"
              f" | {b['cpu_us']:.0f} | {errors} | " + ", ".join(f"{r['rps']:,.0f}" for r in rounds)
              + " |")
    print(f"\nratio postgres / sqlite: {best['postgres']['rps'] / best['sqlite']['rps']:.2f}")
    print(f"ratio postgres store and sink / filesystem store and file sink: "
          f"{best['postgres+sink']['rps'] / best['filesystem']['rps']:.2f} (target >= 0.50)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--http", action="store_true", help="also encrypt through the server")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk round")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ferrohsm-bench-"))
    mac = RecordMac.derive(os.urandom(32))
    engine = KeyEngine(Sealer(os.urandom(32)), MaterialCache(4096, 300.0))
    with pgserver.running() as server:
        db = PgDatabase(server.new_database(), max_connections=8)
        stores: dict[str, KeyStore] = {"sqlite": SQLiteStore(tmp / "keys.sqlite3", mac),
                                       "postgres": PostgresStore(db, mac)}
        keys = {name: engine_key(store, engine) for name, store in stores.items()}
        file_list = DenyList(tmp / "revoked.json")
        pg_store = stores["postgres"]
        assert isinstance(pg_store, PostgresStore)
        pg_list = PostgresDenyList(db, freshness=pg_store.freshness)
        for n in range(1000):
            file_list.revoke(f"jti-{n}", time.time() + 3600, time.time())
            pg_list.revoke(f"jti-{n}", time.time() + 3600, time.time())
        checks: dict[str, Callable[[], object]] = {}
        for name, store in stores.items():
            checks[f"key lookup, {name} (cached key, validated)"] = \
                lambda s=store, k=keys[name]: s.get(k)  # type: ignore[misc]  # default-arg lambda
            checks[f"engine encrypt, {name} store"] = \
                lambda s=store, k=keys[name]: engine.encrypt(s.get(k), PLAINTEXT, None)  # type: ignore[misc]  # default-arg lambda
        checks["revoked-token check, file deny-list (memory)"] = \
            lambda: file_list.is_revoked("not-revoked", time.time())
        checks["revoked-token check, PostgreSQL (its own freshness check)"] = \
            lambda: pg_list.is_revoked("not-revoked", time.time())
        checks["freshness check, PostgreSQL (one round trip per turn)"] = \
            pg_store.freshness.check
        checks["turn of 1 request, PostgreSQL: check + key lookup + token check"] = \
            lambda: one_turn(pg_store, pg_list, keys["postgres"])
        print(f"PostgreSQL {db.server_version} on 127.0.0.1, {os.cpu_count()} CPUs, medians of "
              f"{args.rounds} x {args.seconds} s\n")
        print("| check | 1 thread: calls/s | us/call | 4 threads: calls/s |")
        print("| --- | ---: | ---: | ---: |")
        for label, fn in checks.items():
            one = median(fn, args.seconds, args.rounds, 1)
            four = median(fn, args.seconds, args.rounds, 4)
            print(f"| {label} | {one:,.0f} | {1e6 / one:.1f} | {four:,.0f} |")
        for store in stores.values():
            store.close()
        if args.http:
            http_rounds(args, server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
