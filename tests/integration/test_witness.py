"""Checkpoint witnesses: an https endpoint (a tiny TLS receiver on the project's dev PKI), a file
outside the data directory, and syslog; wired through the app as a server runs them."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from live import LiveServer

from ferrohsm import app as wiring
from ferrohsm.audit import witness as witnesses
from ferrohsm.audit.checkpoint import PublicKey, signature_ok
from ferrohsm.config import load_config
from ferrohsm.domain.errors import ConfigError
from ferrohsm.integrity.logcheck import StartupRefused
from ferrohsm.tls.context import server_context
from ferrohsm.tls.devpki import DevPki, make_dev_pki

ROOT = Path(__file__).resolve().parents[2]


class Receiver:
    """An HTTPS endpoint that keeps what is POSTed to it and answers ``status``."""

    def __init__(self, pki: DevPki) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.status == 200:
                    receiver.received.append(json.loads(body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = server_context(str(pki.server_cert), str(pki.server_key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/checkpoints"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def newest(self) -> int:
        return max((c["seq"] for c in self.received), default=0)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    found = Receiver(make_dev_pki(tmp_path / "witness-pki"))
    yield found
    found.close()


def wait_for(what: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def create_key(live: LiveServer) -> None:
    status, _, body = live.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                     "usage": "encrypt"})
    assert status == 201, body


def test_https_witness_receives_signed_checkpoints_and_retries(tmp_path: Path,
                                                               receiver: Receiver) -> None:
    live = LiveServer(tmp_path, overrides={
        ("audit", "witness"): receiver.url,
        ("audit", "witness_ca_file"): str(tmp_path / "witness-pki" / "ca.pem"),
        ("audit", "checkpoint_interval_seconds"): 0.2})
    try:
        create_key(live)
        wait_for(lambda: receiver.newest() >= live.rt.audit.head()[0])
        receiver.status = 503  # the witness goes down: requests go on, the failure is counted
        create_key(live)
        wait_for(lambda: live.rt.audit.describe()["witness_failures"] >= 1)
        create_key(live)
        receiver.status = 200  # back: the newest checkpoint arrives with the next one
        create_key(live)
        wait_for(lambda: receiver.newest() >= live.rt.audit.head()[0])
    finally:
        live.close()
    audit = live.data_dir / "audit"
    key = PublicKey.from_pem((audit / "audit-signing-key.pub.pem").read_bytes())
    assert receiver.received and all(signature_ok(cp, key) for cp in receiver.received)
    assert set(receiver.received[0]) == {"v", "type", "log_id", "seq", "head_hash", "ts",
                                         "key_fingerprint", "sig"}  # public fields only
    copy = tmp_path / "witnessed.jsonl"
    copy.write_text("".join(json.dumps(cp) + "\n" for cp in receiver.received))
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(base64.b64encode(live.secrets.audit_hmac_key))
    key_file.chmod(0o600)
    result = subprocess.run([sys.executable, "-m", "ferrohsm", "audit", "verify", str(audit),
                             "--hmac-key-file", str(key_file), "--witness", str(copy), "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["checkpoints_matched"] >= len(receiver.received)


def test_file_witness_outlives_the_audit_directory(tmp_path: Path) -> None:
    witness = tmp_path / "elsewhere" / "checkpoints.jsonl"
    witness.parent.mkdir()
    overrides: dict[tuple[str, str], Any] = {("audit", "witness"): f"file:{witness}"}
    live = LiveServer(tmp_path, overrides=overrides)
    create_key(live)
    live.close()
    assert json.loads(witness.read_bytes().splitlines()[-1])["seq"] == live.rt.audit.head()[0]
    shutil.rmtree(live.data_dir / "audit")  # a memory store holds no keys: only the witness knows
    with pytest.raises(StartupRefused, match=r"the witness .* holds checkpoints up to seq"):
        LiveServer(tmp_path, overrides=overrides)


def test_a_witness_inside_the_data_directory_is_refused(tmp_path: Path) -> None:
    config = load_config(None, env={}, overrides={
        ("storage", "data_dir"): str(tmp_path / "data"),
        ("audit", "witness"): f"file:{tmp_path / 'data' / 'copy.jsonl'}"})
    with pytest.raises(ConfigError, match="inside the data directory"):
        wiring.open_witness(config)
    with pytest.raises(ConfigError, match=r"\[audit\].witness must be"):
        load_config(None, env={}, overrides={("audit", "witness"): "ftp://x"})


def test_syslog_witness_sends_one_public_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import syslog
    sent: list[tuple[int, str]] = []
    opened: list[str] = []
    monkeypatch.setattr(syslog, "openlog", lambda ident, *_: opened.append(ident))
    monkeypatch.setattr(syslog, "syslog", lambda priority, message: sent.append((priority,
                                                                                 message)))
    found = witnesses.make_witness("syslog")
    assert found is not None
    checkpoint = {"v": 1, "seq": 7, "head_hash": "ab" * 32, "sig": "c2ln"}
    found.publish(checkpoint)
    assert opened == ["ferrohsm-checkpoint"]
    assert sent == [(syslog.LOG_NOTICE, '{"head_hash":"' + "ab" * 32
                     + '","seq":7,"sig":"c2ln","v":1}')]
