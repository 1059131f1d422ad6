"""A stderr nobody reads (a stuck log shipper, a full pipe): the server keeps answering, and
SIGTERM still stops it in seconds. Every log line is written by the access log's writer
thread (telemetry/logs.py), which alone may block; shutdown waits for it a bounded time."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from live import reap

from ferrohsm.tls.context import client_context

ROOT = Path(__file__).resolve().parents[2]


def _start(data: Path, stderr_fd: int) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen([sys.executable, "-m", "ferrohsm", "quickstart", "--data-dir",
                             str(data), "--listen", "127.0.0.1:0"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=stderr_fd,
                            env={k: v for k, v in os.environ.items()  # stderr buffered,
                                 if not k.startswith("FERROHSM_")  # as a service runs it
                                 and k != "PYTHONUNBUFFERED"})
    exports: dict[str, str] = {}
    assert proc.stdout is not None
    while len(exports) < 3:
        line = proc.stdout.readline()
        assert line.startswith("export FERROHSM_"), line
        name, _, value = line.strip().removeprefix("export ").partition("=")
        exports[name] = value
    return proc, exports


def test_a_server_whose_stderr_nobody_reads_answers_and_stops(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()  # never read: 64 KiB of log lines fill it
    proc, exports = _start(tmp_path / "data", write_end)
    os.close(write_end)
    try:
        host, _, port = exports["FERROHSM_URL"].removeprefix("https://").rpartition(":")
        conn = http.client.HTTPSConnection(host, int(port), timeout=10,
                                           context=client_context(exports["FERROHSM_CA_CERT"]))
        headers = {"Authorization": f"Bearer {exports['FERROHSM_TOKEN']}"}
        for _ in range(400):  # about 200 KB of access lines: the pipe is full long before
            conn.request("GET", "/v1/keys", headers=headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        conn.close()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)  # without a bounded close: never, while the pipe stays full
        assert time.monotonic() - started < 15
        assert code == 0
    finally:
        reap(proc)
        os.close(read_end)
