"""kill -9 of a serving FerroHSM during a write loop: every acknowledged operation has its audit
record, and after the restart (which reports and seals off a torn tail) the log verifies."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from test_serve_process import ROOT, call, service_token, start, stop


def test_kill_9_loses_no_acknowledged_record(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, exports = start(data)
    status, key = call(exports, "POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                     "usage": "encrypt"})
    assert status == 201
    svc = service_token(data)
    acked: list[str] = []
    halt = threading.Event()

    def loop(worker: int) -> None:
        n = 0
        while not halt.is_set():
            n += 1
            rid = f"crash-{worker}-{n}"
            try:
                status, _ = call_with_id(exports, key["id"], svc, rid)
            except OSError:
                return
            if status == 200:
                acked.append(rid)

    threads = [threading.Thread(target=loop, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    halt.set()
    for t in threads:
        t.join(10)
    if proc.stdout:
        proc.stdout.close()
    assert len(acked) > 20

    proc, _ = start(data)  # recovery: a torn tail is reported and sealed off
    assert stop(proc) == 0
    verify = subprocess.run([sys.executable, "-m", "ferrohsm", "audit", "verify",
                             str(data / "audit"), "--hmac-key-file", str(data / "audit-hmac.key")],
                            cwd=ROOT, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    logged = set()
    for segment in sorted((data / "audit").glob("audit-*.jsonl")):
        for line in segment.read_text().splitlines():
            logged.add(json.loads(line).get("request_id"))
    missing = [rid for rid in acked if rid not in logged]
    assert not missing, f"{len(missing)} acknowledged requests have no audit record"


def call_with_id(exports: dict[str, str], key_id: str, token: str, rid: str
                 ) -> tuple[int, dict[str, Any]]:
    import http.client

    from ferrohsm.tls.context import client_context
    host, _, port = exports["FERROHSM_URL"].removeprefix("https://").rpartition(":")
    conn = http.client.HTTPSConnection(host, int(port), timeout=5,
                                       context=client_context(exports["FERROHSM_CA_CERT"]))
    try:
        body = json.dumps({"plaintext": base64.b64encode(b"x").decode()}).encode()
        conn.request("POST", f"/v1/keys/{key_id}/encrypt", body=body, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json",
            "X-Request-ID": rid})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()
