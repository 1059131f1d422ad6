"""Key store benchmark (a script, not a test): python3 bench/bench_store.py [--quick]

For the filesystem and SQLite stores, with 5,000 and 100,000 keys, it measures medians of:
the first page of 100 keys (target < 20 ms), get by id (< 1 ms; random ids, mostly cache misses,
and one hot key, the encrypt path's case), listing all 5,000 keys page by page with limit 1000
(< 100 ms), and the first page of 100 with a tag filter (10 % and 0.1 % of keys carry the tag). Keys are created with ``bulk_create`` (creation time is not a target) and
the store is reopened before measuring, so "open" shows what a restart costs and the first
measured call runs on cold caches. Data dirs live under /tmp and are removed afterwards.

With ``--postgres`` the PostgreSQL store is measured too, on a throwaway server the bench starts
(tests/pgserver.py), a fresh database per size.

Prints a markdown table and writes it to bench/out/store.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.ids import uuid7
from ferrohsm.domain.model import Key, KeyFilter
from ferrohsm.store.filesystem import FilesystemStore
from ferrohsm.store.keystore import KeyStore
from ferrohsm.store.pgdb import PgDatabase
from ferrohsm.store.postgres import PostgresStore
from ferrohsm.store.sqlite import SQLiteStore

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
CHUNK = 5_000
RECORD_MAC = RecordMac.derive(os.urandom(32))  # a throw-away master key per run
OUT = Path(__file__).resolve().parent / "out" / "store.md"


def generate(count: int) -> Iterator[list[Key]]:
    """Keys in chunks, ids ascending like real UUIDv7 ids; 10 % tagged pci, 0.1 % tagged rare."""
    ms = int(time.time() * 1000) - count
    for start in range(0, count, CHUNK):
        chunk = []
        for n in range(start, min(start + CHUNK, count)):
            tags = ("prod",) + (("pci",) if n % 10 == 0 else ()) + (("rare",) if n % 1000 == 7
                                                                    else ())
            chunk.append(lc.new_key(key_id=uuid7(ms + n), name=f"key-{n:06d}", description="",
                                    algorithm="aes-256-gcm", usage="encrypt", tags=tags,
                                    sealed=os.urandom(61), now=NOW, actor="bench"))
        yield chunk


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(first call, median of the following ``runs``) in milliseconds."""
    samples = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples[0], statistics.median(samples[1:])


def list_all(store: KeyStore) -> int:
    seen, token = 0, None
    while True:
        page = store.list(KeyFilter(), 1000, token)
        seen += len(page.keys)
        token = page.next_page_token
        if token is None:
            return seen


def measure(kind: str, count: int, runs: int, dsn: str = "") -> dict[str, str]:
    root = Path(tempfile.mkdtemp(prefix=f"ferrohsm-bench-{kind}-", dir="/tmp"))
    opener: Callable[[], KeyStore] = (
        (lambda: FilesystemStore(root / "data", RECORD_MAC)) if kind == "filesystem"
        else (lambda: PostgresStore(PgDatabase(dsn), RECORD_MAC)) if kind == "postgres"
        else (lambda: SQLiteStore(root / "keys.sqlite3", RECORD_MAC)))
    try:
        store = opener()
        ids: list[str] = []
        start = time.perf_counter()
        for chunk in generate(count):
            store.bulk_create(chunk)
            ids += [k.id for k in chunk]
        created = time.perf_counter() - start
        store.close()
        start = time.perf_counter()
        store = opener()
        opened = (time.perf_counter() - start) * 1000
        row = {"store": kind, "keys": f"{count:,}", "create (s)": f"{created:.1f}",
               "open (ms)": f"{opened:.0f}"}
        cold, warm = timed(lambda: store.list(KeyFilter(), 100), runs)
        row["first page of 100: cold / median (ms)"] = f"{cold:.2f} / {warm:.2f}"
        picks = random.Random(7).choices(ids, k=runs * 20)  # noqa: S311  which keys to read, not a secret
        get_times = []
        for key_id in picks:
            start = time.perf_counter()
            store.get(key_id)
            get_times.append((time.perf_counter() - start) * 1000)
        row["get by id, random: median / p99 (ms)"] = (
            f"{statistics.median(get_times):.3f} / "
            f"{sorted(get_times)[int(len(get_times) * .99)]:.3f}")
        hot = ids[len(ids) // 2]
        store.get(hot)
        start = time.perf_counter()
        for _ in range(10_000):
            store.get(hot)
        row["get, hot key (us)"] = f"{(time.perf_counter() - start) * 100:.1f}"
        for tag in ("pci", "rare"):
            _, median = timed(lambda t=tag: store.list(KeyFilter(tag=t), 100), runs)  # type: ignore[misc]  # mypy cannot infer a lambda with a default
            row[f"page of 100, tag={tag} (ms)"] = f"{median:.2f}"
        if count <= 5_000:
            assert list_all(store) == count
            _, median = timed(lambda: list_all(store), max(runs // 4, 3))
            row["all 5,000 by 1000 (ms)"] = f"{median:.1f}"
        else:
            row["all 5,000 by 1000 (ms)"] = "n/a"
        store.close()
        return row
    finally:
        shutil.rmtree(root, ignore_errors=True)


def table(rows: list[dict[str, str]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 keys only, fewer runs")
    parser.add_argument("--postgres", action="store_true", help="the PostgreSQL store too")
    args = parser.parse_args()
    sizes = (5_000,) if args.quick else (5_000, 100_000)
    runs = 10 if args.quick else 40
    with contextlib.ExitStack() as stack:
        server = None
        if args.postgres:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            import pgserver
            server = stack.enter_context(pgserver.running())
        kinds = ("filesystem", "sqlite", *(("postgres",) if server else ()))
        rows = [measure(kind, count, runs, server.new_database() if kind == "postgres" and server
                        else "") for count in sizes for kind in kinds]
    text = (f"# Key store benchmark\n\nPython {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
            f"{time.strftime('%Y-%m-%d %H:%M')}. Targets: first page of 100 < 20 ms, get < 1 ms, "
            f"all 5,000 keys by pages of 1000 < 100 ms.\n\n{table(rows)}\n")
    print(text)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
