"""The user journeys FerroHSM is built for, end to end, the way their users meet them.

Journey 1: an operator in a fresh shell (only PATH and HOME) runs the built ``dist/ferrohsm
quickstart``, pastes its export lines, creates a symmetric key with policy tags, finds it in
``keys list``, rotates it (timed: the target is < 30 s end to end) and describes it.

Journey 2: a pipeline signs a build artefact with a designated key through the Python SDK example
and the Go example, with a correlation id; the DER signature verifies with ``openssl dgst`` and
the correlation id is in the audit record of the signature.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
ROTATE_BUDGET = 5.0  # seconds; the target is 30 s, we hold ourselves to far less
POLICY = "[policy.tags.pci]\nrotation_days = 90\narchive_after_days = 365\n"


@pytest.fixture(scope="module")
def zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "ferrohsm"
    subprocess.run([sys.executable, str(ROOT / "build.py"), "--out", str(out)], check=True,
                   cwd=ROOT, capture_output=True, timeout=600)
    return out


class Quickstart:
    """``dist/ferrohsm quickstart`` as a background process, and a fresh shell to talk to it."""

    def __init__(self, zipapp: Path, home: Path) -> None:
        self.zipapp, self.home = zipapp, home
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                    "SHIV_ROOT": str(home / "shiv")}
        config = home / "ferrohsm.toml"
        config.write_text(POLICY)
        self.log = (home / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(zipapp), "quickstart", "--data-dir", str(home / "data"),
             "--listen", "127.0.0.1:0", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=self.log, env=self.env, cwd=home, text=True)
        self.exports = self._first_lines(3, timeout=60)

    def _first_lines(self, count: int, timeout: float) -> str:
        lines: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            while len(lines) < count and (line := self.proc.stdout.readline()):
                lines.append(line)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        assert len(lines) == count, f"quickstart printed {lines!r}; see {self.log.name}"
        return "".join(lines)

    def shell(self, command: str) -> tuple[subprocess.CompletedProcess[str], float]:
        """Run ``command`` in bash after pasting the export lines; ``ferrohsm`` is the zip app."""
        script = (f'eval "$QUICKSTART_EXPORTS"\n'
                  f'ferrohsm() {{ "{sys.executable}" -I "{self.zipapp}" "$@"; }}\n{command}\n')
        start = time.perf_counter()
        result = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                                timeout=120, cwd=self.home, check=False,
                                env={**self.env, "QUICKSTART_EXPORTS": self.exports})
        return result, time.perf_counter() - start

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            if self.proc.stdout:
                self.proc.stdout.close()
            self.log.close()


@pytest.fixture
def quickstart(zipapp: Path, tmp_path: Path) -> Iterator[Quickstart]:
    qs = Quickstart(zipapp, tmp_path)
    yield qs
    qs.stop()


def ok(step: tuple[subprocess.CompletedProcess[str], float]) -> str:
    result, _ = step
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def test_journey_1_operator_creates_lists_rotates_and_describes(quickstart: Quickstart) -> None:
    exports = quickstart.exports.splitlines()
    assert [line.split("=", 1)[0] for line in exports] == [
        "export FERROHSM_URL", "export FERROHSM_CA_CERT", "export FERROHSM_TOKEN"]
    created = ok(quickstart.shell(
        "ferrohsm keys create --algorithm aes-256-gcm --usage encrypt --name payments "
        "--description 'card data' --tag pci --tag prod --json"))
    key = json.loads(created)
    assert key["tags"] == ["pci", "prod"] and key["state"] == "active"

    listing = ok(quickstart.shell("ferrohsm keys list --tag pci"))
    row = next(line for line in listing.splitlines() if line.startswith("payments "))
    assert key["id"] in row and "active" in row and "v1 of 1" in row and "pci,prod" in row

    rotate = quickstart.shell("ferrohsm keys rotate payments")
    seconds = rotate[1]
    assert "v2 is now primary" in ok(rotate)
    print(f"\nJourney 1: `ferrohsm keys rotate` took {seconds:.3f} s end to end "
          "(fresh bash, zip app start-up, TLS, request)")
    assert seconds < ROTATE_BUDGET, f"rotating took {seconds:.1f} s"

    shown = ok(quickstart.shell("ferrohsm keys show payments"))
    assert key["id"] in shown and "v2 (primary)" in shown and "pci, prod" in shown
    described = json.loads(ok(quickstart.shell("ferrohsm keys show payments --json")))
    assert described["id"] == key["id"] and described["primary_version"] == 2
    assert [v["version"] for v in described["versions"]] == [1, 2]
    refused, _ = quickstart.shell("ferrohsm keys show nonexistent")
    assert refused.returncode == 1 and "request id" in refused.stderr


# ---- Journey 2 ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("journey2"))
    yield server
    server.close()


def signing_key(live: LiveServer, algorithm: str) -> str:
    name = f"release-{algorithm}-{uuid.uuid4().hex[:6]}"
    status, _, _ = live.call("POST", "/v1/keys", {"algorithm": algorithm, "usage": "sign",
                                                  "name": name})
    assert status == 201
    return name


def pipeline_env(live: LiveServer, **extra: str) -> dict[str, str]:
    return {**os.environ, "FERROHSM_URL": f"https://127.0.0.1:{live.port}",
            "FERROHSM_CA_CERT": str(live.pki.ca_cert),
            "FERROHSM_TOKEN": live.token("service", subject="ci-pipeline"), **extra}


def audited_signatures(live: LiveServer, correlation_id: str) -> list[dict[str, object]]:
    _, _, body = live.call("GET", "/v1/audit?limit=1000", role="auditor")
    return [r for r in body["records"]
            if r["correlation_id"] == correlation_id and r["action"] == "crypto.sign"]


@pytest.mark.parametrize("algorithm", ["ec-p256", "ec-p384", "rsa-2048"])
def test_journey_2_python_sdk_signs_an_artefact(live: LiveServer, tmp_path: Path,
                                                algorithm: str) -> None:
    key = signing_key(live, algorithm)
    artefact = tmp_path / "app.tar.gz"
    artefact.write_bytes(os.urandom(200_000))
    correlation = f"build-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples/python/sign_artifact.py"), "--key", key,
         "--correlation-id", correlation, str(artefact)],
        capture_output=True, text=True, timeout=60, env=pipeline_env(live), cwd=tmp_path,
        check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verified OK" in result.stdout
    signature = (tmp_path / "app.tar.gz.sig").read_bytes()
    if algorithm.startswith("ec-"):
        assert signature[:1] == b"\x30"  # ECDSA-Sig-Value, a DER SEQUENCE
    [record] = audited_signatures(live, correlation)
    assert record["outcome"] == "success" and record["actor"] == "ci-pipeline"


def test_journey_2_python_sdk_reports_api_errors(live: LiveServer, tmp_path: Path) -> None:
    artefact = tmp_path / "a"
    artefact.write_bytes(b"x")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples/python/sign_artifact.py"), "--key", "no-such-key",
         str(artefact)], capture_output=True, text=True, timeout=60, env=pipeline_env(live),
        check=False)
    assert result.returncode == 1 and "(not_found, request id " in result.stderr
    assert "Traceback" not in result.stderr


def test_journey_2_go_example_signs_an_artefact(live: LiveServer) -> None:
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed (CI installs Debian's golang-go)")
    key = signing_key(live, "ec-p256")
    correlation = f"go-build-{uuid.uuid4().hex[:8]}"
    env = pipeline_env(live, FERROHSM_KEY=key, FERROHSM_CORRELATION_ID=correlation,
                       GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    env.setdefault("GOCACHE", str(Path.home() / ".cache" / "go-build"))  # go needs a cache dir
    env.setdefault("GOPATH", str(Path.home() / "go"))
    result = subprocess.run([go, "test", "-count=1", "-v", "./..."], cwd=ROOT / "examples/go",
                            capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--- PASS: TestSignArtefactLive" in result.stdout, result.stdout
    [record] = audited_signatures(live, correlation)
    assert record["outcome"] == "success"


def test_journey_2_over_mutual_tls(tmp_path: Path) -> None:
    """The DevOps persona "integrates with mutual TLS": the SDK (example) and the CLI present a
    client certificate from FERROHSM_CLIENT_CERT/KEY or --client-cert/--client-key."""
    from ferrohsm.tls.devpki import make_dev_pki
    pki = make_dev_pki(tmp_path / "pki")
    srv = LiveServer(tmp_path, overrides={("tls", "client_ca"): str(pki.ca_cert),
                                          ("tls", "require_client_cert"): True})
    try:
        from ferrohsm.client import Client
        cert, key_file = pki.issue_client_cert("ci-runner")
        with Client(f"https://127.0.0.1:{srv.port}", srv.token("operator"), ca_cert=str(
                srv.pki.ca_cert), client_cert=str(cert), client_key=str(key_file)) as admin:
            key = admin.create_key("ec-p256", "sign", name="mtls-release")["name"]
        artefact = tmp_path / "app.bin"
        artefact.write_bytes(os.urandom(1000))
        example = [sys.executable, str(ROOT / "examples/python/sign_artifact.py"), "--key", key,
                   str(artefact)]
        refused = subprocess.run(example, capture_output=True, text=True, timeout=60,
                                 env=pipeline_env(srv), check=False)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        signed = subprocess.run(example, capture_output=True, text=True, timeout=60, check=False,
                                env=pipeline_env(srv, FERROHSM_CLIENT_CERT=str(cert),
                                                 FERROHSM_CLIENT_KEY=str(key_file)))
        assert signed.returncode == 0 and "Verified OK" in signed.stdout, signed.stderr
        cli = subprocess.run([sys.executable, "-m", "ferrohsm", "keys", "show", key,
                              "--client-cert", str(cert), "--client-key", str(key_file)],
                             capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
                             env=pipeline_env(srv))
        assert cli.returncode == 0 and key in cli.stdout, cli.stderr
    finally:
        srv.close()
