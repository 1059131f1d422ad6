"""Audit benchmarks: offline verification speed and FileSink group-commit throughput.

    python3 bench/bench_audit_verify.py [--records 1000000] [--threads 16] [--appends 20000]

1. Writes a log of ``--records`` realistic records straight from ``chain.seal_record_line`` (no
   sink, no fsync: this measures the verifier, not the writer) and times ``verify_paths`` on it.
   Target: >= 100,000 records/s, i.e. a 1,000,000-record log in under 10 s.
2. ``--threads`` threads append ``--appends`` records in total through FileSink (and, for
   comparison, SQLiteSink), durable (one fsync / synchronous=FULL commit per group) and not, and
   prints records/s for each, plus records per group: how many writers each commit served.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ferrohsm.audit.chain import GENESIS_HASH, AuditEvent, seal_record_line
from ferrohsm.audit.filesink import FileSink
from ferrohsm.audit.sinkbase import ChainedSink
from ferrohsm.audit.sqlitesink import SQLiteSink
from ferrohsm.audit.verify import verify_paths

KEY = os.urandom(32)


def sample_event(i: int) -> AuditEvent:
    return AuditEvent(
        actor=f"svc-build-{i % 7}", role="service", action="key.sign", outcome="success",
        message="signed a 32-byte digest", key_id=str(uuid.UUID(int=i % 50)), key_version=2,
        request_id=str(uuid.UUID(int=i)), correlation_id=f"ci-run-{i // 100}",
        session="s-0f1c", client_fingerprint="ab" * 32, source_ip="10.1.2.3",
        details={"algorithm": "ecdsa-sha256", "bytes": 32})


def write_log(path: str, count: int) -> float:
    """A valid ``count``-record log in ``path``; returns the seconds it took."""
    start = time.perf_counter()
    events = [sample_event(i) for i in range(64)]
    ts0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    prev = GENESIS_HASH
    with open(path, "wb", buffering=1 << 20) as f:
        for seq in range(1, count + 1):
            record, line = seal_record_line(
                events[seq % 64], seq=seq, prev_hash=prev, ts=ts0 + timedelta(microseconds=seq),
                record_id=str(uuid.UUID(int=seq)), hmac_key=KEY)
            f.write(line + b"\n")
            prev = record["hash"]
    return time.perf_counter() - start


def bench_verify(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "audit-export.jsonl")
        took = write_log(path, count)
        size = os.path.getsize(path)
        print(f"generated {count:,} records ({size / count:.0f} B each, {size / 2**20:.0f} MiB) "
              f"in {took:.1f} s")
        start = time.perf_counter()
        result = verify_paths([path], KEY)
        took = time.perf_counter() - start
        assert result.ok and result.records_checked == count, result
        print(f"verify: {count:,} records in {took:.2f} s = {count / took:,.0f} records/s "
              f"(target >= 100,000)")


def bench_sink(kind: str, threads: int, total: int, durable: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sink: ChainedSink
        if kind == "FileSink":
            sink = FileSink(os.path.join(tmp, "audit"), KEY, durable=durable)
        else:
            sink = SQLiteSink(os.path.join(tmp, "audit.db"), KEY, durable=durable)
        per_thread = total // threads
        events = [sample_event(i) for i in range(threads)]
        barrier = threading.Barrier(threads + 1)

        def writer(n: int) -> None:
            barrier.wait()
            for _ in range(per_thread):
                sink.append(events[n])

        pool = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
        for t in pool:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in pool:
            t.join()
        took = time.perf_counter() - start
        info = sink.describe()
        sink.close()
        done = per_thread * threads
        print(f"{kind} {threads} threads, {'durable (fsync)' if durable else 'no fsync'}: "
              f"{done / took:,.0f} records/s, {info['records_written'] / info['group_commits']:.1f}"
              f" records per group")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--appends", type=int, default=20_000)
    args = parser.parse_args()
    bench_verify(args.records)
    for kind in ("FileSink", "SQLiteSink"):
        for durable in (True, False):
            bench_sink(kind, args.threads, args.appends, durable)


if __name__ == "__main__":
    main()
