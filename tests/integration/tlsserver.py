"""A real FerroHSM server wired as ``serve`` wires it for TLS (tls_provider + wire_tls: file
polling, OCSP stapling, /healthz ``tls``, metrics, audit events), for the TLS tests."""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
from pathlib import Path
from typing import Any

from ferrohsm import app as wiring
from ferrohsm.auth.authn import issue_token
from ferrohsm.config import Secrets, load_config
from ferrohsm.tls.context import client_context


class TlsServer:
    def __init__(self, tmp_path: Path, cert_file: Path, key_file: Path, ca_file: Path,
                 **tls: Any) -> None:
        settings = {("storage", "key_store"): "memory",
                    ("storage", "data_dir"): str(tmp_path / "data"),
                    ("server", "listen"): "127.0.0.1:0",
                    ("tls", "cert"): str(cert_file), ("tls", "key"): str(key_file),
                    **{("tls", name): value for name, value in tls.items()}}
        self.config = load_config(None, env={}, overrides=settings)
        self.secrets = Secrets(secrets.token_bytes(32), secrets.token_bytes(32),
                               secrets.token_bytes(32))
        self.rt = wiring.build_runtime(self.config, self.secrets)
        self.provider = wiring.tls_provider(self.config)
        wiring.wire_tls(self.rt, self.provider)
        self.server = wiring.make_server(self.rt, self.provider)
        self.server.start()
        self.port = self.server.server_address[1]
        self.ca_file = ca_file

    def close(self) -> None:
        wiring.shutdown(self.rt, self.server)

    def context(self) -> ssl.SSLContext:
        return client_context(str(self.ca_file))

    def connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(),
                                           timeout=10)

    def get(self, conn: http.client.HTTPSConnection, path: str,
            role: str | None = None) -> tuple[int, Any]:
        headers = {}
        if role is not None:
            headers["Authorization"] = "Bearer " + issue_token(
                self.secrets.jwt_hs256_secret, subject="t", role=role)
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        if "json" in (response.getheader("Content-Type") or ""):
            return response.status, json.loads(body)
        return response.status, body.decode()

    def health(self, role: str | None = None) -> dict[str, Any]:
        conn = self.connect()
        try:
            status, body = self.get(conn, "/healthz", role)
        finally:
            conn.close()
        assert status == 200, body
        result: dict[str, Any] = body
        return result

    def metric(self, prefix: str) -> list[str]:
        conn = self.connect()
        try:
            _, text = self.get(conn, "/metrics")
        finally:
            conn.close()
        return [line for line in str(text).splitlines() if line.startswith(prefix)]

    def events(self, prefix: str = "tls.") -> list[dict[str, Any]]:
        return [r for r in self.rt.audit.read(0, 10000) if r["action"].startswith(prefix)]


def answered(srv: TlsServer, chain_pem: bytes, key_pem: bytes, folder: Path) -> bool:
    """Whether a request presenting this client certificate gets an HTTP answer from ``srv``
    (a refused handshake, or a connection closed for it, is no answer)."""
    (folder / "c.pem").write_bytes(chain_pem)
    (folder / "c-key.pem").write_bytes(key_pem)
    context = srv.context()
    context.load_cert_chain(folder / "c.pem", folder / "c-key.pem")
    conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=context, timeout=10)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except (ssl.SSLError, OSError):
        return False
    finally:
        conn.close()
