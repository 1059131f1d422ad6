"""`ferrohsm serve --key-store postgres` as a real process over real TLS, on a real PostgreSQL:
create, encrypt, rotate, decrypt; a revoked token refused; a restart on the same database keeps
every key; start-up errors that name the DSN variable and never print the password."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pgserver
import pytest

from ferrohsm.auth.authn import issue_token
from ferrohsm.tls.context import client_context
from ferrohsm.tls.devpki import make_dev_pki

ROOT = Path(__file__).resolve().parents[2]
JWT = "j" * 40
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+) \(key store postgres\)")


def environment(dsn: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
    env.update(FERROHSM_MASTER_KEY=base64.b64encode(b"m" * 32).decode(),
               FERROHSM_JWT_HS256_SECRET=JWT,
               FERROHSM_AUDIT_HMAC_KEY=base64.b64encode(b"h" * 32).decode())
    if dsn is not None:
        env["FERROHSM_POSTGRES_DSN"] = dsn
    return env


class Node:
    """One `ferrohsm serve` process; its port is read from its start-up log line."""

    def __init__(self, tmp: Path, dsn: str) -> None:
        pki = make_dev_pki(tmp / "tls")
        self.ca = str(pki.ca_cert)
        self.log = tmp / f"server-{len(list(tmp.glob('server-*.log')))}.log"  # one per start
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ferrohsm", "serve", "--key-store", "postgres",
                 "--data-dir", str(tmp / "data"), "--listen", "127.0.0.1:0"],
                cwd=ROOT, env={**environment(dsn), "FERROHSM_TLS_CERT": str(pki.server_cert),
                               "FERROHSM_TLS_KEY": str(pki.server_key)},
                stdout=subprocess.DEVNULL, stderr=log)
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log.read_text())
            if found:
                return int(found.group(1))
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError(f"the server did not start: {self.log.read_text()}")

    def call(self, method: str, path: str, body: object = None, *, role: str = "administrator",
             token: str | None = None) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port,
                                           context=client_context(self.ca), timeout=30)
        bearer = token or issue_token(JWT.encode(), subject=f"it-{role}", role=role)
        headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}
        conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                     headers=headers)
        resp = conn.getresponse()
        out = json.loads(resp.read() or b"{}")
        conn.close()
        return resp.status, out

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.slow
def test_serve_on_postgres_create_encrypt_rotate_decrypt_restart(tmp_path: Path) -> None:
    dsn = pgserver.shared().new_database()
    node = Node(tmp_path, dsn)
    try:
        status, created = node.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                         "usage": "encrypt", "name": "pg-key"})
        assert status == 201, created
        status, first = node.call("POST", "/v1/keys/pg-key/encrypt",
                                  {"plaintext": _b64(b"before rotation")}, role="service")
        assert status == 200, first
        status, rotated = node.call("POST", "/v1/keys/pg-key/rotate")
        assert status == 200 and rotated["primary_version"] == 2, rotated
        status, second = node.call("POST", "/v1/keys/pg-key/encrypt",
                                   {"plaintext": _b64(b"after rotation")}, role="service")
        assert status == 200 and second["key_version"] == 2, second
        for ct, plain in ((first, b"before rotation"), (second, b"after rotation")):
            status, out = node.call("POST", "/v1/keys/pg-key/decrypt",
                                    {"ciphertext": ct["ciphertext"]}, role="service")
            assert status == 200 and base64.b64decode(out["plaintext"]) == plain
        service = issue_token(JWT.encode(), subject="doomed", role="service", jti="doomed-1")
        assert node.call("GET", "/v1/keys/pg-key", token=service)[0] in (200, 403)
        assert node.call("POST", "/v1/tokens/revoke", {"jti": "doomed-1"})[0] == 200
        status, refused = node.call("GET", "/v1/keys/pg-key", token=service)
        assert status == 401, refused
        health = node.call("GET", "/healthz")[1]
        assert health["store"]["backend"] == "postgres" and health["store"]["keys"] == 1
        assert "password" not in json.dumps(health)
    finally:
        assert node.stop() == 0, node.log.read_text()
    again = Node(tmp_path, dsn)  # same database, same data directory (its audit log)
    try:
        status, out = again.call("POST", "/v1/keys/pg-key/decrypt",
                                 {"ciphertext": first["ciphertext"]}, role="service")
        assert status == 200 and base64.b64decode(out["plaintext"]) == b"before rotation"
        assert again.call("GET", "/v1/keys/pg-key", token=service)[0] == 401  # still revoked
    finally:
        assert again.stop() == 0, again.log.read_text()


@pytest.mark.slow
def test_serve_checks_freshness_once_per_turn_not_once_per_lookup(tmp_path: Path) -> None:
    """Each encrypt looks up its key and its token's jti: two checks if each lookup made its own
    (store/pgfresh.py), one when the server validates the turn (app.store_turn)."""
    node = Node(tmp_path, pgserver.shared().new_database())
    try:
        assert node.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt",
                                              "name": "turned"})[0] == 201
        token = issue_token(JWT.encode(), subject="svc", role="service", jti="svc-1")
        before = node.call("GET", "/healthz")[1]["store"]["freshness_checks"]
        for _ in range(10):  # one request per connection: one turn each
            assert node.call("POST", "/v1/keys/turned/encrypt", {"plaintext": _b64(b"x")},
                             token=token)[0] == 200
        after = node.call("GET", "/healthz")[1]["store"]["freshness_checks"]
        assert 10 <= after - before <= 11  # ten turns, and the second /healthz's own
    finally:
        assert node.stop() == 0, node.log.read_text()


def _serve(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    pki = make_dev_pki(tmp_path / "tls")
    env = {**env, "FERROHSM_TLS_CERT": str(pki.server_cert), "FERROHSM_TLS_KEY": str(pki.server_key)}
    return subprocess.run([sys.executable, "-m", "ferrohsm", "serve", "--data-dir",
                           str(tmp_path / "data"), "--listen", "127.0.0.1:0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_start_up_without_the_dsn_variable_says_which(tmp_path: Path) -> None:
    result = _serve(tmp_path, {**environment(None), "FERROHSM_KEY_STORE": "postgres"})
    assert result.returncode == 2
    assert "FERROHSM_POSTGRES_DSN" in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_database_stops_start_up_without_the_password(tmp_path: Path) -> None:
    pgserver.skip_unless_available()
    env = environment("postgresql://hsm:Pa55-w0rd-zz@127.0.0.1:1/keys")
    result = _serve(tmp_path, {**env, "FERROHSM_KEY_STORE": "postgres"})
    assert result.returncode == 1, result.stderr
    assert "cannot connect to PostgreSQL at hsm@127.0.0.1:1/keys" in result.stderr
    assert "Pa55-w0rd-zz" not in result.stderr + result.stdout
