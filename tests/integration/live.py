"""A real FerroHSM server on 127.0.0.1:0 over real TLS, and a tiny client for tests."""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ferrohsm import app as wiring
from ferrohsm.auth.authn import issue_token
from ferrohsm.config import Config, Secrets, load_config
from ferrohsm.tls.context import client_context
from ferrohsm.tls.devpki import make_dev_pki


class LiveServer:
    def __init__(self, tmp_path: Path, key_store: str = "memory",
                 overrides: dict[tuple[str, str], Any] | None = None,
                 config_text: str | None = None, secrets_: Secrets | None = None) -> None:
        self.data_dir = tmp_path / "data"
        self.pki = make_dev_pki(tmp_path / "pki")
        config_path = None
        if config_text is not None:
            config_path = tmp_path / "config.toml"
            config_path.write_text(config_text)
        settings = {("storage", "key_store"): key_store,
                    ("storage", "data_dir"): str(self.data_dir),
                    ("server", "listen"): "127.0.0.1:0",
                    ("tls", "cert"): str(self.pki.server_cert),
                    ("tls", "key"): str(self.pki.server_key),
                    ("scheduler", "interval_seconds"): 1.0,
                    **(overrides or {})}
        self.config: Config = load_config(str(config_path) if config_path else None, env={},
                                          overrides=settings)
        self.secrets = secrets_ or Secrets(secrets.token_bytes(32), secrets.token_bytes(32),
                                           secrets.token_bytes(32))
        self.rt = wiring.build_runtime(self.config, self.secrets)
        self.server = wiring.make_server(self.rt, wiring.tls_provider(self.config))
        self.server.start()
        wiring.start_scheduler(self.rt)
        self.port = self.server.server_address[1]
        self.ctx: ssl.SSLContext = client_context(str(self.pki.ca_cert))
        self.tokens: dict[tuple[str, str], str] = {}

    def token(self, role: str = "administrator", subject: str | None = None,
              **kw: Any) -> str:
        subject = subject or f"{role}-user"
        cache_key = (role, subject) if not kw else None
        if cache_key and cache_key in self.tokens:
            return self.tokens[cache_key]
        token = issue_token(self.secrets.jwt_hs256_secret, subject=subject, role=role, **kw)
        if cache_key:
            self.tokens[cache_key] = token
        return token

    def connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)

    def call(self, method: str, path: str, body: Any = None, *, role: str | None = "administrator",
             token: str | None = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
        conn = self.connect()
        try:
            hdrs = dict(headers or {})
            if token is None and role is not None:
                token = self.token(role)
            if token is not None:
                hdrs["Authorization"] = f"Bearer {token}"
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            if data is not None:
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            ctype = resp.getheader("Content-Type") or ""
            parsed = json.loads(payload) if payload and "json" in ctype else payload
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed
        finally:
            conn.close()

    def audit_log(self) -> Iterator[dict[str, Any]]:
        """Every audit record, page by page, through the API (as an auditor)."""
        after = 0
        while True:
            _, _, page = self.call("GET", f"/v1/audit?after_seq={after}&limit=1000",
                                   role="auditor")
            yield from page["records"]
            if page["next_after_seq"] is None:
                return
            after = page["next_after_seq"]

    def close(self) -> None:
        wiring.shutdown(self.rt, self.server)


def reap(proc: subprocess.Popen[str]) -> None:
    """A server started as a subprocess, killed if a failed test left it running, and its
    stdout pipe closed."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()
