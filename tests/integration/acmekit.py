"""A real ``ferrohsm serve`` in ACME mode against a real pebble, and real TLS clients for it.

``AcmeServer`` writes a config naming pebble's directory, starts ``python -m ferrohsm serve``
on a fixed free port (pebble validates tls-alpn-01 there and http-01 on the responder's port),
and restarts it on the same data directory and secrets. Clients verify the served chain
against pebble's own root, naming the test domain in SNI: a handshake that verifies proves the
certificate and its intermediate came from pebble's issuer.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from ferrohsm.auth.authn import issue_token

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests") not in sys.path:  # tests/pebbleserver.py sits beside tests/pgserver.py
    sys.path.append(str(ROOT / "tests"))

from pebbleserver import Pebble, free_port  # noqa: E402

DOMAIN = "hsm.test"
DOMAINS = (DOMAIN, "api.hsm.test")
JWT_SECRET = "acme-test-secret-" + "x" * 32


class AcmeServer:
    def __init__(self, root: Path, challenge: str, fraction: float = 0.33,
                 tls_extra: str = "", processes: int = 1, sealed: bool = False) -> None:
        self.root, self.challenge, self.tls_extra = root, challenge, tls_extra
        self.processes = processes  # > 1: one port, one cache, the SQLite store
        self.sealed = sealed  # split knowledge: `init` first, then unseal with the shares
        self.data = root / "data"
        self.port, self.http_port = free_port(), free_port()
        self.fraction = fraction
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
        self.env.update(FERROHSM_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(),
                        FERROHSM_JWT_HS256_SECRET=JWT_SECRET,
                        FERROHSM_AUDIT_HMAC_KEY=base64.b64encode(os.urandom(32)).decode())
        if sealed:
            del self.env["FERROHSM_MASTER_KEY"]  # it comes from the shares
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "server.log"

    def write_config(self, pebble: Pebble) -> Path:
        config = self.root / "ferrohsm.toml"
        domains = ", ".join(f'"{d}"' for d in DOMAINS)
        config.write_text(f"""
[server]
listen = "127.0.0.1:{self.port}"
processes = {self.processes}
[storage]
data_dir = "{self.data}"
key_store = "{'sqlite' if self.processes > 1 else 'filesystem'}"
[tls]
mode = "acme"
{self.tls_extra}
[tls.acme]
directory = "{pebble.directory}"
domains = [{domains}]
email = "ops@example.com"
challenge = "{self.challenge}"
http_listen = "127.0.0.1:{self.http_port}"
ca_bundle = "{pebble.ca_bundle}"
renew_before_fraction = {self.fraction}
""" + ('[secrets]\nunseal = "shamir"\n' if self.sealed else ""))
        return config

    def init(self, pebble: Any, shares: int = 3, threshold: int = 2) -> list[str]:
        """``ferrohsm init`` of a sealed server's data directory: its unseal shares."""
        config = self.write_config(pebble)
        out = subprocess.run([sys.executable, "-m", "ferrohsm", "init", "--config", str(config),
                              "--shares", str(shares), "--threshold", str(threshold)],
                             cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return re.findall(r"fhsm1-[0-9a-f]{8}-[0-9]+-[A-Za-z0-9_-]+", out.stdout)

    def start(self, pebble: Pebble) -> None:
        config = self.write_config(pebble)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "ferrohsm", "serve", "--config",
                                          str(config)], cwd=ROOT, env=self.env, stdout=log,
                                         stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                assert time.monotonic() < deadline, "serve did not listen"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(30) == 0, self.log.read_text()[-3000:]
        self.proc = None

    def token(self) -> str:
        return issue_token(JWT_SECRET.encode(), subject="acme-test", role="administrator")

    def audit_actions(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted((self.data / "audit").glob("audit-*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    records.append(json.loads(line))
        return records


def client_context(root_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=root_pem.decode())
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def served_certificate(port: int, root_pem: bytes, name: str = DOMAIN) -> x509.Certificate:
    """The leaf served to a client that trusts only pebble's root (the chain must verify)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            client_context(root_pem).wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (OSError, AssertionError):
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Session:
    """One keep-alive HTTPS connection to the server (verified against pebble's root)."""

    def __init__(self, port: int, root_pem: bytes, token: str) -> None:
        self.token = token
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tls = client_context(root_pem).wrap_socket(raw, server_hostname=DOMAIN)

    def get(self, path: str) -> tuple[int, bytes]:
        self.tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\n"
                         f"Authorization: Bearer {self.token}\r\n\r\n".encode())
        resp = http.client.HTTPResponse(self.tls)
        resp.begin()
        return resp.status, resp.read()

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        self.tls.sendall(f"POST {path} HTTP/1.1\r\nHost: {DOMAIN}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                         f"Authorization: Bearer {self.token}\r\n\r\n".encode() + data)
        resp = http.client.HTTPResponse(self.tls)
        resp.begin()
        return resp.status, json.loads(resp.read() or b"{}")

    def health(self) -> dict[str, Any]:
        status, body = self.get("/healthz")
        assert status in (200, 503), body
        report: dict[str, Any] = json.loads(body)
        return report

    def close(self) -> None:
        self.tls.close()


def health(port: int, root_pem: bytes, token: str) -> dict[str, Any]:
    session = Session(port, root_pem, token)
    try:
        return session.health()
    finally:
        session.close()
