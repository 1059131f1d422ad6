"""A FerroHSM data directory driven through the real CLI (init, serve, unseal, rekey) in
subprocesses, for the custody tests: split-knowledge (``[secrets] unseal = "shamir"``) or the
environment master key."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferrohsm.auth.authn import issue_token
from ferrohsm.tls.context import client_context
from ferrohsm.tls.devpki import make_dev_pki

ROOT = Path(__file__).resolve().parents[2]
SHARE_RE = re.compile(r"fhsm1-[0-9a-f]{8}-[0-9]+-[A-Za-z0-9_-]+")


@dataclass
class Home:
    """A config file, a dev PKI and the non-master secrets in ``root``."""

    root: Path
    store: str = "filesystem"
    shamir: bool = True
    jwt: str = field(default_factory=lambda: secrets.token_urlsafe(40))
    hmac_key: str = field(default_factory=lambda: base64.b64encode(os.urandom(32)).decode())
    master: str = field(default_factory=lambda: base64.b64encode(os.urandom(32)).decode())

    def __post_init__(self) -> None:
        pki = make_dev_pki(self.root / "pki")
        self.ca = str(pki.ca_cert)
        self.data = self.root / "data"
        self.config = self.root / "ferrohsm.toml"
        self.config.write_text(
            f'[server]\nlisten = "127.0.0.1:0"\n[storage]\nkey_store = "{self.store}"\n'
            f'data_dir = "{self.data}"\n[secrets]\nunseal = "{"shamir" if self.shamir else "env"}"\n'
            f'[tls]\ncert = "{pki.server_cert}"\nkey = "{pki.server_key}"\n'
            '[rate_limit]\nrequests_per_second = 100000\nburst = 100000\n')

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
        env.update(FERROHSM_JWT_HS256_SECRET=self.jwt, FERROHSM_AUDIT_HMAC_KEY=self.hmac_key,
                   FERROHSM_CA_CERT=self.ca, PYTHONPATH=str(ROOT))
        if not self.shamir:
            env["FERROHSM_MASTER_KEY"] = self.master
        env.update(extra)
        env.setdefault("FERROHSM_DEBUG", os.environ.get("FERROHSM_TEST_DEBUG", ""))
        return env

    def cli(self, *args: str, stdin: str = "", env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ferrohsm", *args], cwd=ROOT, input=stdin,
                              capture_output=True, text=True, env=env or self.env(),
                              timeout=timeout)

    def init(self, shares: int = 5, threshold: int = 3, *extra: str) -> list[str]:
        out = self.cli("init", "--config", str(self.config), "--shares", str(shares),
                       "--threshold", str(threshold), *extra)
        assert out.returncode == 0, out.stderr
        return SHARE_RE.findall(out.stdout)

    def token(self, role: str = "administrator") -> str:
        return issue_token(self.jwt.encode(), subject=f"{role}-user", role=role, ttl=600)

    def serve(self, env: dict[str, str] | None = None) -> Server:
        log = self.root / "server.log"
        with open(log, "a") as f:
            proc = subprocess.Popen([sys.executable, "-m", "ferrohsm", "serve", "--config",
                                     str(self.config)], cwd=ROOT, env=env or self.env(),
                                    stdout=subprocess.DEVNULL, stderr=f, text=True)
        start = log.stat().st_size if log.exists() else 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = log.read_text()
            found = re.findall(r"listening on 127\.0\.0\.1:(\d+)", text)
            if len(found) > self._starts:
                self._starts = len(found)
                return Server(proc, int(found[-1]), self)
            if proc.poll() is not None:
                raise AssertionError(f"the server exited: {text[start:][-3000:]}")
            time.sleep(0.1)
        proc.kill()
        raise AssertionError("the server did not start")

    _starts = 0

    def audit_records(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        for path in sorted((self.data / "audit").glob("audit-*.jsonl")):
            lines += [json.loads(line) for line in path.read_text().splitlines() if line]
        return lines

    def everything_written(self) -> str:
        """Every file of the home (logs, audit log, custody file, store), as text."""
        parts = []
        for path in self.root.rglob("*"):
            if path.is_file() and path.suffix != ".enc":
                parts.append(path.read_bytes().decode("latin-1"))
        return "\n".join(parts)


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    home: Home

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30,
                                           context=client_context(self.home.ca))
        try:
            headers = {**(headers or {}),
                       **({"Content-Type": "application/json"} if body is not None else {})}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            conn.request(method, path, None if body is None else json.dumps(body).encode(),
                         headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def unseal_cli(self, share: str) -> subprocess.CompletedProcess[str]:
        return self.home.cli("unseal", "--server", self.url, stdin=share + "\n")

    def unseal(self, shares: list[str]) -> None:
        for share in shares:
            out = self.unseal_cli(share)
            assert out.returncode == 0, out.stderr
        assert "unsealed" in out.stdout

    def wait_sealed(self, sealed: bool) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            _, health = self.call("GET", "/healthz")
            if health.get("sealed") is sealed or time.monotonic() > deadline:
                return health  # type: ignore[no-any-return]
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0
