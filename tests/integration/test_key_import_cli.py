"""`ferrohsm keys import` against a real server over real TLS: key files made by `openssl`
(raw AES-256, EC and RSA PEM in PKCS#8 and traditional form) wrapped locally and imported, the
imported keys checked with openssl and a local AES-GCM, new versions, refusals with their exit
codes, and an import parked for dual control then repeated with --approval-id."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from live import LiveServer
from test_cli import Cli, assert_api_error, unique

pytestmark = pytest.mark.slow  # RSA-3072 wrapping keys: ~0.1-1 s each

POLICY = """
[policy.tags.byok]
approvals_required = 1
approval_actions = ["import"]
"""


def B(data: bytes) -> str:  # noqa: N802  one letter, like b"": a base64 literal in bodies
    return base64.b64encode(data).decode()


def openssl(*args: str | Path) -> bytes:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, check=False,
                          timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("byok-cli"), config_text=POLICY)
    yield server
    server.close()


@pytest.fixture
def cli(live: LiveServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Cli:
    return Cli(live, monkeypatch, tmp_path)


def test_an_aes_key_file_is_imported_and_is_the_same_key(cli: Cli, live: LiveServer,
                                                          tmp_path: Path) -> None:
    key_file = tmp_path / "payments.key"
    key_file.write_bytes(openssl("rand", "32"))
    name = unique("payments")
    result = cli("keys", "import", "--material", str(key_file), "--name", name,
                 "--tag", "pci", role="operator")
    assert result.code == 0, result.err
    assert f"Imported key {name}" in result.text and "origin imported" in result.text
    assert "Origin" in result.text and "imported" in result.text
    status, _, enc = live.call("POST", f"/v1/keys/{name}/encrypt", {"plaintext": B(b"card")},
                               role="service")
    assert status == 200, enc
    blob = base64.b64decode(enc["ciphertext"].split(":", 2)[2])
    assert AESGCM(key_file.read_bytes()).decrypt(blob[:12], blob[12:], None) == b"card"
    # a new version from another file
    second = tmp_path / "payments-2027.key"
    second.write_bytes(openssl("rand", "32"))
    result = cli("keys", "import", name, "--material", str(second), "--json")
    assert result.code == 0, result.err
    key = result.json()
    assert key["primary_version"] == 2
    assert [v["origin"] for v in key["versions"]] == ["imported", "imported"]
    # new-key flags make no sense with KEY
    assert cli("keys", "import", name, "--material", str(second), "--name", "x").code == 2


@pytest.mark.parametrize("genkey", [
    ("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"),
    ("ecparam", "-genkey", "-name", "secp384r1", "-noout"),  # SEC1 "EC PRIVATE KEY"
    ("genrsa", "-traditional", "2048"),  # PKCS#1 "RSA PRIVATE KEY"
], ids=["ec-p256-pkcs8", "ec-p384-sec1", "rsa-2048-pkcs1"])
def test_private_keys_from_openssl_sign_for_openssl(cli: Cli, live: LiveServer, tmp_path: Path,
                                                    genkey: tuple[str, ...]) -> None:
    pem = tmp_path / "signing.pem"
    pem.write_bytes(openssl(*genkey))
    openssl("pkey", "-in", pem, "-pubout", "-out", tmp_path / "pub.pem")
    name = unique("signing")
    result = cli("keys", "import", "--material", str(pem), "--name", name, "--json")
    assert result.code == 0, result.err
    key = result.json()
    assert key["origin"] == "imported" and key["usage"] == "sign"
    message = b"release 2.0"
    status, _, signed = live.call("POST", f"/v1/keys/{name}/sign", {"message": B(message)},
                                  role="service")
    assert status == 200, signed
    (tmp_path / "msg").write_bytes(message)
    (tmp_path / "sig").write_bytes(base64.b64decode(signed["signature"]))
    digest = "-sha384" if key["algorithm"] == "ec-p384" else "-sha256"
    extra = (["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"]
             if key["algorithm"].startswith("rsa") else [])
    out = openssl("dgst", digest, *extra, "-verify", tmp_path / "pub.pem",
                  "-signature", tmp_path / "sig", tmp_path / "msg")
    assert b"Verified OK" in out


def test_refusals_and_exit_codes(cli: Cli, tmp_path: Path) -> None:
    pem = tmp_path / "p256.pem"
    pem.write_bytes(openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"))
    result = cli("keys", "import", "--material", str(pem), "--algorithm", "ec-p384")
    assert_api_error(result, "bad_request")
    assert "curve" in result.err and "PRIVATE" not in result.err
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(10))
    result = cli("keys", "import", "--material", str(junk))
    assert result.code == 2 and "neither 32 raw bytes" in result.err
    result = cli("keys", "import", "--material", str(tmp_path / "missing.key"))
    assert result.code == 2 and "cannot read" in result.err
    assert_api_error(cli("keys", "import", "--material", str(pem), role="auditor"), "forbidden")
    assert_api_error(cli("keys", "import", "no-such-key", "--material", str(pem)), "not_found")


def test_a_parked_import_is_repeated_with_its_approval(cli: Cli, live: LiveServer,
                                                       tmp_path: Path) -> None:
    key_file = tmp_path / "dual.key"
    key_file.write_bytes(openssl("rand", "32"))
    name = unique("dual")
    argv = ("keys", "import", "--material", str(key_file), "--name", name, "--tag", "byok")
    parked = cli(*argv)
    assert parked.code == 1 and "approval required" in parked.err, parked.err
    saved = Path(str(key_file) + ".import-request.json")
    assert saved.exists() and oct(saved.stat().st_mode & 0o777) == "0o600"
    assert B(key_file.read_bytes()) not in saved.read_text()
    approval_id = parked.err.split("parked as approval ")[1].split()[0]
    status, _, reply = live.call("POST", f"/v1/approvals/{approval_id}/approve", {},
                                 token=live.token("operator", "bob"))
    assert status == 200, reply
    other = cli("keys", "import", "--material", str(key_file), "--name", name + "-x", "--tag",
                "byok", "--approval-id", approval_id)  # was dropped without a word
    assert other.code == 2 and "--name differs from the import parked" in other.err
    done = cli(*argv, "--approval-id", approval_id, "--json")
    assert done.code == 0, done.err
    assert done.json()["name"] == name and done.json()["tags"] == ["byok"]
    assert not saved.exists()
    result = cli(*argv, "--approval-id", approval_id)
    assert result.code == 2 and "is not there" in result.err
