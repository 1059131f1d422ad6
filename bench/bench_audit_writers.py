"""Audit sink appends/s with one and with several writer processes (a script, not a test).

    python3 bench/bench_audit_writers.py [--seconds 3] [--rounds 3] [--before DIR]
        [--sinks file,sqlite,postgres]

Each writer is its own process opening the same log (what ``processes = N`` does). Two shapes:

* ``durable``: 16 threads each calling ``append`` (group commit: one fsync per group);
* ``tickets``: one thread as the event loop does it: 32 ``append(durable=False)`` per turn, one
  ``write_queued``, then ``wait`` for the last (one write per turn, one flush).

``--fsync-off`` opens the sinks with ``durable=False``: what is left is the CPU cost per record,
where the lock and the head check of many writers would show. ``--before DIR`` points at another checkout of ferrohsm (e.g. ``git archive <commit> ferrohsm |
tar -x -C DIR``) and runs the single-writer cases with its code too, interleaved round by round
with this checkout's, so both see the same disk and the same neighbours. ``postgres`` starts a
throwaway server (tests/pgserver.py). Medians of ``--rounds`` runs; nothing is kept on disk.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
KEY = base64.b64encode(b"k" * 32).decode()
NO_FSYNC = "--fsync-off" in sys.argv  # the CPU cost alone (what the lock and the head check add)

WRITER = textwrap.dedent("""
    import base64, os, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from ferrohsm.audit.chain import AuditEvent
    from ferrohsm.audit import sinks
    kind, where, shape, seconds = sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
    key = base64.b64decode(os.environ["AUDIT_KEY"])
    durable = os.environ.get("BENCH_FSYNC", "1") == "1"
    if kind == "file":
        sink = sinks.FileSink(where, key, durable=durable)
    elif kind == "sqlite":
        sink = sinks.SQLiteSink(where, key, durable=durable)
    else:
        sink = sinks.PostgresSink(where, key, directory=sys.argv[6], durable=durable)
    event = AuditEvent(actor="bench", role="service", action="crypto.encrypt", outcome="success",
                       message="encrypt", key_id="6f1c0000-0000-4000-8000-000000000001",
                       key_version=1, request_id="req", source_ip="127.0.0.1")
    print("ready", flush=True)
    sys.stdin.readline()
    stop = time.monotonic() + seconds
    counts = []

    def appends():
        n = 0
        while time.monotonic() < stop:
            sink.append(event)
            n += 1
        counts.append(n)

    def tickets():
        n = 0
        while time.monotonic() < stop:
            batch = [sink.append(event, durable=False) for _ in range(32)]
            sink.write_queued()
            sink.wait(batch[-1])
            n += len(batch)
        counts.append(n)

    threads = [threading.Thread(target=appends) for _ in range(16)] if shape == "durable" \\
        else [threading.Thread(target=tickets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    print(sum(counts), flush=True)
""")


def run(code: Path, kind: str, wheres: list[str], shape: str, seconds: float,
        scratch: Path) -> float:
    """Total appends/s of one process per entry of ``wheres`` (a log each: the same log for
    all, or one log each), started together."""
    env = dict(os.environ, AUDIT_KEY=KEY, BENCH_FSYNC="0" if NO_FSYNC else "1")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(code), kind, where, shape,
                               str(seconds), str(scratch / f"node{i}")], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i, where in enumerate(wheres)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
    total = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 120)
        total += int(out.split()[-1])
    return total / seconds


@contextmanager
def fresh_logs(kind: str, server: Any, writers: int,
               separate: bool) -> Iterator[tuple[list[str], Path]]:
    """Where each writer writes: one new log for all, or (``separate``) one new log each."""
    scratch = Path(tempfile.mkdtemp(prefix="ferrohsm-bench-audit-"))

    def new(i: int) -> str:
        if kind == "postgres":
            return str(server.new_database())
        return str(scratch / f"log{i}" / ("audit" if kind == "file" else "audit.db"))
    try:
        yield ([new(i) for i in range(writers)] if separate else [new(0)] * writers), scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def maybe_postgres(sinks: list[str]) -> Iterator[object | None]:
    if "postgres" not in sinks:
        yield None
        return
    sys.path.insert(0, str(HERE / "tests"))
    import pgserver
    with pgserver.running() as server:
        yield server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", help="another checkout's root, for before/after")
    parser.add_argument("--sinks", default="file")
    parser.add_argument("--fsync-off", action="store_true", help="durable=False: CPU cost only")
    parser.add_argument("--writers", default="1,2,2 logs", help="cases: 1, 2, '2 logs'")
    parser.add_argument("--shapes", default="durable,tickets")
    args = parser.parse_args()
    sinks = args.sinks.split(",")
    # writers 2 on one log: the linear chain; "2 logs": two writers on a log each, the ceiling
    # a chain per writer (no lock between them) could reach before any merging of its heads.
    cases = [(kind, shape, writers) for kind in sinks for shape in args.shapes.split(",")
             for writers in args.writers.split(",")]
    results: dict[tuple[str, str, str, str], list[float]] = {}
    with maybe_postgres(sinks) as server:
        for _ in range(args.rounds):
            for kind, shape, writers in cases:
                versions = [("after", HERE)]
                if args.before and writers == "1" and kind != "postgres":
                    versions.insert(0, ("before", Path(args.before)))
                for label, code in versions:
                    with fresh_logs(kind, server, int(writers[0]), writers == "2 logs") as \
                            (wheres, scratch):
                        rate = run(code, kind, wheres, shape, args.seconds, scratch)
                    results.setdefault((label, kind, shape, writers), []).append(rate)
    print("| code | sink | shape | writers | appends/s (median) | runs |")
    print("|---|---|---|---|---|---|")
    for (label, kind, shape, writers), rates in results.items():
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"| {label} | {kind} | {shape} | {writers} | {statistics.median(rates):,.0f} | "
              f"{runs} |")


if __name__ == "__main__":
    main()
