#!/usr/bin/env python3
"""CPU per request of one access line: the batched hand-built writer (telemetry/access.py)
against the former ``logging`` path (json.dumps of a dict, a LogRecord, JSONFormatter parsing
it back, a StreamHandler write per line), both writing to a file, in the same run.

Process CPU time (writer thread included) over N lines, alternating rounds, median. Compare the
result with the server's CPU per request of bench/bench_server.py (~110-160 µs for encrypt):
this is the access log's share of it, measured without the noise of a loaded machine.

    python3 bench/bench_access_log.py [--lines 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ferrohsm.telemetry.access import AccessLog
from ferrohsm.telemetry.logs import JSONFormatter

TRACE, SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


def batched(path: Path) -> tuple[Callable[[int], None], Callable[[], None]]:
    stream = open(path, "w")
    logger = logging.getLogger("bench.access.batched")
    logger.setLevel(logging.INFO)
    access = AccessLog(stream, logger=logger)

    def one(i: int) -> None:  # what Application._observe does
        if access.enabled_for(200):
            access.record((time.time(), 200, "POST", "/v1/keys/{key}/encrypt",
                           "/v1/keys/0190a5d2-7c3e-7f00-8000-000000000001/encrypt", 0.0002,
                           "127.0.0.1", "127.0.0.1", 8443, "bench-service", "service", None,
                           None, "wrk", None, f"req-{i}", (TRACE, SPAN, "00"), None))

    def close() -> None:
        access.close()
        stream.close()
    return one, close


def former(path: Path) -> tuple[Callable[[int], None], Callable[[], None]]:
    handler = logging.FileHandler(path)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("ferrohsm.access")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def one(i: int) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        logger.info(json.dumps({
            "http.request.method": "POST", "http.route": "/v1/keys/{key}/encrypt",
            "http.response.status_code": 200, "duration_ms": 0.2,
            "client.address": "127.0.0.1", "network.peer.address": "127.0.0.1",
            "enduser.id": "bench-service", "enduser.role": "service", "session.id": None,
            "tls.client.x5t_s256": None, "request_id": f"req-{i}", "trace_id": None,
            "correlation_id": None}, separators=(",", ":")))

    def close() -> None:
        handler.close()
        logger.handlers[:] = []
    return one, close


def cpu_per_line(make: Callable[[Path], tuple[Callable[[int], None], Callable[[], None]]],
                 lines: int, path: Path) -> float:
    one, close = make(path)
    start = time.process_time()
    for i in range(lines):
        one(i)
    close()  # the batched writer's last lines are part of its cost
    return (time.process_time() - start) / lines * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    makers = {"batched, hand-built (now)": batched, "logging + JSONFormatter (before)": former}
    samples: dict[str, list[float]] = {name: [] for name in makers}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, make in makers.items():
                samples[name].append(cpu_per_line(make, args.lines, Path(tmp) / "access.log"))
    print("| access line | CPU µs per request, median | rounds |")
    print("| --- | ---: | --- |")
    for name, values in samples.items():
        print(f"| {name} | {statistics.median(values):.1f} | "
              + ", ".join(f"{v:.1f}" for v in values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
