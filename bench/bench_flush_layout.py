#!/usr/bin/env python3
"""How long a flush takes when two processes each append and flush: one shared file (the file
sink's layout under ``processes = 2``) against a file each, appended or preallocated.

Each writer is a process pinned to its own core that loops: write one 2,400-byte group (the
size of an audit group of about 14 records), flush it, measure. ``append`` layouts write at the
end of the file and ``fsync`` (the size changes, so every flush journals it); ``prealloc``
layouts overwrite a zero-filled file in place and ``fdatasync`` (nothing to journal). This is
the measurement behind bench/RESULTS.md, "Two writers flushing one file".

    python3 bench/bench_flush_layout.py [--seconds 4] [--dir DIR] [--writers 2]
                                        [--layouts shared-append,own-append,own-prealloc,shared-prealloc]

DIR must be on the disk under test (default: a temporary directory under the current one).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GROUP = b"x" * 2400
PREALLOC = 256 << 20  # bytes of zeros written (and flushed) before a prealloc run
LAYOUTS = ("shared-append", "own-append", "own-prealloc", "shared-prealloc")


def prepare(path: Path, prealloc: bool) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if prealloc:
            zeros = bytes(1 << 20)
            for _ in range(PREALLOC // len(zeros)):
                os.write(fd, zeros)
            os.fsync(fd)
    finally:
        os.close(fd)


def writer(core: int, path: Path, prealloc: bool, seconds: float, lock: Any, offset: Any,
           out: Any) -> None:
    """One writer: group, flush, until ``seconds`` are over; puts (flushes, p50 s, p99 s)."""
    if core in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {core})
    fd = os.open(path, os.O_RDWR | (0 if prealloc else os.O_APPEND))
    flush = os.fdatasync if prealloc else os.fsync
    times: list[float] = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        if prealloc:
            with lock:  # one offset for every writer of the file, as the sink's lock gives
                at = offset.value
                offset.value = at + len(GROUP)
            os.pwrite(fd, GROUP, at % (PREALLOC - len(GROUP)))
        else:
            os.write(fd, GROUP)
        start = time.perf_counter()
        flush(fd)
        times.append(time.perf_counter() - start)
    os.close(fd)
    times.sort()
    out.put((core, len(times), statistics.median(times), times[int(len(times) * 0.99)]))


def run(layout: str, directory: Path, writers: int, seconds: float) -> list[tuple[Any, ...]]:
    ctx = multiprocessing.get_context("spawn")
    prealloc, shared = layout.endswith("prealloc"), layout.startswith("shared")
    paths = [directory / ("shared" if shared else f"own-{n}") for n in range(writers)]
    for path in set(paths):
        prepare(path, prealloc)
    lock, out = ctx.Lock(), ctx.Queue()
    offsets = {path: ctx.Value("q", 0, lock=False) for path in set(paths)}
    procs = [ctx.Process(target=writer, args=(n, paths[n], prealloc, seconds, lock,
                                              offsets[paths[n]], out))
             for n in range(writers)]
    for proc in procs:
        proc.start()
    results = sorted(out.get() for _ in procs)
    for proc in procs:
        proc.join()
    for path in set(paths):
        path.unlink()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    args = parser.parse_args()
    layouts = [name for name in args.layouts.split(",") if name]
    unknown = set(layouts) - set(LAYOUTS)
    if unknown:
        parser.error(f"unknown layouts: {', '.join(sorted(unknown))} (known: {', '.join(LAYOUTS)})")
    print("| layout | writer (core) | flushes/s | p50 µs | p99 µs |\n| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="flush-layout-", dir=args.dir) as name:
        for layout in layouts:
            for core, count, p50, p99 in run(layout, Path(name), args.writers, args.seconds):
                print(f"| {layout} | {core} | {count / args.seconds:,.0f} | {p50 * 1e6:.0f} | "
                      f"{p99 * 1e6:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
