"""A Go program using only the standard library speaks the transit API as Vault's Go client does
(examples/go/transit: X-Vault-Token, PUT without Content-Type, LIST, vault: ciphertexts), run
by ``go test`` against a live FerroHSM over TLS 1.3."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import LiveServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("transit-go"))
    yield server
    server.close()


@pytest.mark.slow
def test_go_stdlib_client_against_the_transit_api(srv: LiveServer) -> None:
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed (CI installs Debian's golang-go)")
    for name, key_type in (("go-data", "aes256-gcm96"), ("go-signing", "ecdsa-p256")):
        status, _, body = srv.call("POST", f"/v1/transit/keys/{name}", {"type": key_type},
                                   role="operator")
        assert status == 200, body
    env = {**os.environ, "VAULT_ADDR": f"https://127.0.0.1:{srv.port}",
           "VAULT_TOKEN": srv.token("service", "go-transit"),
           "VAULT_CACERT": str(srv.pki.ca_cert), "TRANSIT_KEY": "go-data",
           "TRANSIT_SIGN_KEY": "go-signing", "TRANSIT_OPERATOR_TOKEN": srv.token("operator"),
           "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    env.setdefault("GOCACHE", str(Path.home() / ".cache" / "go-build"))
    env.setdefault("GOPATH", str(Path.home() / "go"))
    result = subprocess.run([go, "test", "-count=1", "-v", "./..."],
                            cwd=ROOT / "examples/go/transit", capture_output=True, text=True,
                            timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--- PASS: TestTransitLive" in result.stdout, result.stdout
    status, _, audit = srv.call("GET", "/v1/audit?limit=1000", role="auditor")
    mine = {(r["action"], r["outcome"]) for r in audit["records"] if r["actor"] == "go-transit"}
    assert {("crypto.encrypt", "success"), ("crypto.decrypt", "success"),
            ("crypto.sign", "success"), ("key.rotate", "denied")} <= mine
