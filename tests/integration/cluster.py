"""K real ``ferrohsm serve`` processes on one shared state, each on its own port (or one
``serve --processes N`` on one port), for the consistency tests of README "Running several
nodes". Only the public API is used: HTTPS calls, the CLI, signals.

Backends: ``sqlite`` (one data directory shared on this host, the SQLite audit sink) and
``postgres`` (a throwaway PostgreSQL from tests/pgserver.py; skipped until the PostgreSQL store
exists and where the server is not installed). Nodes that cannot share the audit log (an audit
sink that refuses a second writer) make the tests skip with that reason.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ferrohsm.auth.authn import issue_token
from ferrohsm.tls.context import client_context
from ferrohsm.tls.devpki import make_dev_pki

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # pgserver.py
NOT_SHARED = ("in use by another process", "another writer changed the audit")
SHARED_AUDIT_SKIP = "needs the audit log shared by many writers (issue 16): this sink refuses a second process"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def backend_env(backend: str) -> Iterator[dict[str, str]]:
    """Environment for the nodes of ``backend``: empty for sqlite, the DSN for postgres."""
    if backend == "sqlite":
        yield {}
        return
    pytest.importorskip("ferrohsm.store.postgres")
    import pgserver
    pgserver.skip_unless_available()
    with pgserver.running() as server:
        yield {"FERROHSM_POSTGRES_DSN": server.new_database()}


@dataclass
class Node:
    port: int
    log: Path
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Cluster:
    tmp: Path
    backend: str = "sqlite"
    config: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    storage: str = ""  # more lines of the [storage] table
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = self.tmp / "data"
        self.pki = make_dev_pki(self.tmp / "pki")
        self.ctx = client_context(str(self.pki.ca_cert))
        self.secrets = {name: base64.b64encode(secrets.token_bytes(32)).decode()
                        for name in ("FERROHSM_MASTER_KEY", "FERROHSM_JWT_HS256_SECRET",
                                     "FERROHSM_AUDIT_HMAC_KEY")}
        store = "postgres" if self.backend == "postgres" else "sqlite"
        (self.tmp / "ferrohsm.toml").write_text(
            f'[storage]\nkey_store = "{store}"\ndata_dir = "{self.data}"\n{self.storage}\n'
            f'[audit]\nsink = "{store}"\n'
            f'[tls]\ncert = "{self.pki.server_cert}"\nkey = "{self.pki.server_key}"\n'
            f"{self.config}")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
        self.env.update(self.secrets, **self.extra_env)

    # ---- processes ----

    def add(self, *extra: str, port: int | None = None) -> Node:
        port = port or free_port()
        argv = [sys.executable, "-m", "ferrohsm", "serve", "--config", str(self.tmp / "ferrohsm.toml"),
                "--listen", f"127.0.0.1:{port}", *extra]
        node = Node(port, self.tmp / f"node-{len(self.nodes)}.log", argv)
        self.nodes.append(node)
        self.start(len(self.nodes) - 1)
        return node

    def start(self, i: int, wait: bool = True) -> None:
        node = self.nodes[i]
        with open(node.log, "ab") as log:
            node.proc = subprocess.Popen(node.argv, cwd=ROOT, env=self.env, stdout=log,
                                         stderr=log)
        if wait:
            self.wait_ready(i)

    def wait_ready(self, i: int, timeout: float = 60.0) -> None:
        node = self.nodes[i]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = node.log.read_text(errors="replace")
            if any(why in text for why in NOT_SHARED):
                self.stop()
                pytest.skip(SHARED_AUDIT_SKIP)
            assert node.proc is not None
            if node.proc.poll() is not None:
                raise AssertionError(f"node {i} exited with {node.proc.returncode}:\n{text[-3000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.call(i, "GET", "/healthz", role=None)[0] == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"node {i} not ready:\n{node.log.read_text()[-3000:]}")

    def require_shared_audit(self) -> None:
        """Skip unless every node can write the one audit log after the others did: an audit
        log that refuses a second writer answers 503 to the second node's first write."""
        for _ in range(2):
            for i in range(len(self.nodes)):
                status, reply = self.call(i, "GET", "/v1/keys?limit=1")
                if status == 503 and any(why in str(reply) for why in NOT_SHARED):
                    self.stop()
                    pytest.skip(SHARED_AUDIT_SKIP)
                assert status == 200, reply

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.nodes[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(60)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(40)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()

    def alive(self, i: int) -> bool:
        proc = self.nodes[i].proc
        return proc is not None and proc.poll() is None

    # ---- calls ----

    @property
    def urls(self) -> str:
        return ",".join(f"https://127.0.0.1:{n.port}" for n in self.nodes)

    def token(self, role: str = "administrator", subject: str | None = None, **kw: Any) -> str:
        return issue_token(self.secrets["FERROHSM_JWT_HS256_SECRET"].encode(),
                           subject=subject or f"{role}-user", role=role, **kw)

    def call(self, i: int, method: str, path: str, body: Any = None, *,
             role: str | None = "administrator", token: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.nodes[i].port, context=self.ctx,
                                           timeout=30)
        try:
            hdrs = dict(headers or {})
            token = token or (self.token(role) if role else None)
            if token:
                hdrs["Authorization"] = f"Bearer {token}"
            data = None if body is None else json.dumps(body).encode()
            if data is not None:
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            parsed = json.loads(payload) if payload.startswith((b"{", b"[")) else payload
            return resp.status, parsed
        finally:
            conn.close()

    def cli(self, *argv: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")},
               "FERROHSM_URL": self.urls, "FERROHSM_CA_CERT": str(self.pki.ca_cert),
               "FERROHSM_TOKEN": token or self.token()}
        return subprocess.run([sys.executable, "-m", "ferrohsm", *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=False)


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a supervising ``serve --processes N``)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def B64(data: bytes) -> str:  # noqa: N802  reads like b"" in request bodies
    return base64.b64encode(data).decode()
