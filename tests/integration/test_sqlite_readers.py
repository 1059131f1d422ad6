"""An auditor reading the SQLite audit database of a running server loses nothing.

POSIX record locks belong to a process and a file, not to a descriptor: a server that opened its
own audit database with a plain ``open()`` and closed it (to sniff the file's header while
reading its log at start-up) silently dropped SQLite's locks. The next ``sqlite3`` shell to open
and close the database then found nobody else using it, checkpointed and deleted the live WAL
under the running server, which went on writing acknowledged records into a deleted file: after
a crash they were gone and the server refused to start. Real processes here: the server, a
reader as an auditor would run one, kill -9, a restart and the offline verifier."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
from pathlib import Path

from custodykit import Home

READ = ("import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1])\n"
        "print(db.execute('select count(*) from audit_log').fetchone()[0])\n"
        "db.close()\n")


def test_a_reader_of_the_live_audit_database_loses_no_acknowledged_record(
        tmp_path: Path) -> None:
    home = Home(tmp_path, store="sqlite", shamir=False)
    home.config.write_text(home.config.read_text() + '[audit]\nsink = "sqlite"\n')
    database = home.data / "audit" / "audit.sqlite3"
    server = home.serve()
    try:
        read = subprocess.run([sys.executable, "-c", READ, str(database)], capture_output=True,
                              text=True, timeout=30, check=False)
        assert read.returncode == 0 and int(read.stdout) > 0, read.stderr
        assert Path(f"{database}-wal").exists(), "the reader deleted the server's live WAL"
        status, key = server.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                       "usage": "encrypt", "name": "after-read"},
                                  token=home.token())
        assert status == 201, key
    finally:
        server.proc.send_signal(signal.SIGKILL)  # a crash: only what is durable survives
        server.proc.wait(30)
    again = home.serve()  # refused before ("shorter than its last signed checkpoint")
    try:
        status, found = again.call("GET", "/v1/keys/after-read", token=home.token())
        assert status == 200, found
    finally:
        again.stop()
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(base64.b64decode(home.hmac_key))
    key_file.chmod(0o600)
    verified = home.cli("audit", "verify", str(database), "--hmac-key-file", str(key_file))
    assert verified.returncode == 0, verified.stdout + verified.stderr
