#!/usr/bin/env python3
"""What the PostgreSQL state's consistency costs per request, against SQLite, in the same run.

Two checks run on every request that uses a key or a token, and on PostgreSQL each is one round
trip to the database because neither may be answered from a stale cache (README, PostgreSQL):

* the key lookup (``store.get``): the decoded key is cached, but its row's ``xmin`` is checked
  with the database every time, so a revocation or destruction through another node is seen by
  the next request (SQLite pays one ``PRAGMA data_version`` instead, filesystem one ``lstat``);
* the revoked-token check (``is_revoked``): one primary-key lookup, nothing cached (the file
  deny-list answers from memory and re-reads the file at most once a second).

Measured single-threaded and with 4 threads (the server's workers share the GIL and the pool),
as medians of ``--rounds`` rounds of ``--seconds`` each. Also the engine's encrypt path (lookup
+ cached unseal + AES-GCM + token), as bench_service.py measures it.

Usage: python3 bench/bench_pg_state.py [--seconds 1.5] [--rounds 5]
(starts its own throwaway PostgreSQL through tests/pgserver.py).
"""

from __future__ import annotations

import argparse
import os
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


def median(fn: Callable[[], object], seconds: float, rounds: int, threads: int) -> float:
    return statistics.median(rate(fn, seconds, threads) for _ in range(rounds))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=5)
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
        pg_list = PostgresDenyList(db)
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
        checks["revoked-token check, PostgreSQL (one lookup)"] = \
            lambda: pg_list.is_revoked("not-revoked", time.time())
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
