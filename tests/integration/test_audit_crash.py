"""kill -9 in the middle of a write loop loses no acknowledged audit record.

A child process appends from four threads through FileSink (small segments, so rotations happen
too) and prints each acknowledged seq. We SIGKILL it mid-stream, then check that every seq it
acknowledged is in the log, that the log verifies (after the reopen-recovery of a torn line, if
the kill left one), and that the chain goes on.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from ferrohsm.audit.chain import AuditEvent
from ferrohsm.audit.filesink import FileSink
from ferrohsm.audit.verify import verify_paths

KEY = hashlib.sha256(b"crash test audit key").digest()
ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import base64, os, sys, threading
    sys.path.insert(0, sys.argv[2])
    from ferrohsm.audit.chain import AuditEvent
    from ferrohsm.audit.filesink import FileSink
    sink = FileSink(sys.argv[1], base64.b64decode(os.environ["AUDIT_KEY"]),
                    segment_max_bytes=64 * 1024, anchor_every=50)
    out = threading.Lock()
    print("ready", flush=True)

    def run(n):
        i = 0
        while True:
            i += 1
            record = sink.append(AuditEvent(actor=f"writer-{n}", role="service",
                                            action="key.sign", outcome="success",
                                            message="m" * (i % 200)))
            with out:
                sys.stdout.write(f"{record['seq']}\\n")
                sys.stdout.flush()

    for n in range(4):
        threading.Thread(target=run, args=(n,), daemon=True).start()
    threading.Event().wait()
""")


def test_kill_9_loses_no_acknowledged_record(tmp_path: Path) -> None:
    log_dir = str(tmp_path / "audit")
    env = dict(os.environ, AUDIT_KEY=base64.b64encode(KEY).decode())
    child = subprocess.Popen([sys.executable, "-c", CHILD, log_dir, str(ROOT)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    try:
        assert child.stdout.readline() == b"ready\n", child.stderr.read()
        time.sleep(0.5)
    finally:
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
    acked = [int(x) for x in out.split()[:-1]]  # the very last line may itself be cut
    assert child.returncode == -signal.SIGKILL
    assert len(acked) > 50, "the child wrote too little to make the test meaningful"

    before = verify_paths([log_dir], KEY)
    assert before.ok or (before.problem or {}).get("kind") == "torn_line", before.problem

    sink = FileSink(log_dir, KEY)  # reopen: recovers a torn tail, checks the last checkpoint
    present = {r["seq"] for r in sink.read(limit=100_000)}
    assert set(acked) <= present
    after = sink.append(AuditEvent(actor="test", role="auditor", action="audit.read",
                                   outcome="success", message="after the crash"))
    assert after["seq"] > 0  # a durable append returns the sealed record
    sink.close()
    result = verify_paths([log_dir], KEY)
    assert result.ok, result.problem
    assert result.head_seq == after["seq"] >= max(acked) + 1
