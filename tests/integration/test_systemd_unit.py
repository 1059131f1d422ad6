"""deploy/ferrohsm.service booted the way systemd would, without systemd: its ExecStart command
line, with the built zip app, as the unprivileged `nobody` (HOME=/nonexistent), the credentials
in a 0500 folder of 0400 files, the state and cache folders made by "systemd" (this test), the
unit's Environment= lines with %d and %S expanded, and a NOTIFY_SOCKET in the abstract namespace
the test listens on (sender pid and uid checked from SCM_CREDENTIALS, as systemd does). The
kernel's MemoryDenyWriteExecute (prctl PR_SET_MDWE) is applied as the unit asks. READY=1 once it
serves, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM and a clean exit."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import http.client
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from notifykit import Notifications

from ferrohsm.auth.authn import issue_token
from ferrohsm.tls.context import client_context
from ferrohsm.tls.devpki import make_dev_pki

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "ferrohsm.service"
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None,
    reason="needs root and runuser to start the service as nobody")]


def unit_service_section(text: str) -> dict[str, list[str]]:
    """[Service] settings, each key with every value in order (systemd repeats keys)."""
    section, out = "", {}  # type: tuple[str, dict[str, list[str]]]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


class Box:
    """The folders systemd would set up for the unit, owned by nobody like a DynamicUser's."""

    def __init__(self, base: Path, zipapp: Path) -> None:
        self.base = base
        self.zipapp = zipapp
        self.creds = base / "credentials"
        self.state_root = base / "state"
        self.cache = base / "cache" / "ferrohsm"
        self.config = base / "ferrohsm.toml"
        self.jwt = secrets.token_urlsafe(48)
        nobody = pwd.getpwnam("nobody")
        self.uid, self.gid = nobody.pw_uid, nobody.pw_gid
        pki = make_dev_pki(base / "pki")
        self.ca = base / "ca.pem"
        shutil.copy(pki.ca_cert, self.ca)
        self.values = {"master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
                       "jwt_hs256_secret": self.jwt,
                       "audit_hmac_key": base64.b64encode(secrets.token_bytes(32)).decode(),
                       "tls.crt": pki.server_cert.read_text(),
                       "tls.key": pki.server_key.read_text()}

    def load_credentials(self, specs: list[str]) -> None:
        self.creds.mkdir()
        for spec in specs:
            name, _, _source = spec.partition(":")
            assert name in self.values, f"the test does not know credential {name}"
            path = self.creds / name
            path.write_text(self.values[name])
            os.chown(path, self.uid, self.gid)
            path.chmod(0o400)
        os.chown(self.creds, self.uid, self.gid)
        self.creds.chmod(0o500)

    def make_dirs(self, service: dict[str, list[str]]) -> None:
        """As systemd lays them out for a DynamicUser=: the state directory is
        ``private/<name>`` and ``<name>`` a root-owned symlink to it (which the data directory
        check once refused, so the shipped unit could not start)."""
        assert service.get("DynamicUser") == ["yes"]
        private = self.state_root / "private"
        private.mkdir(parents=True, mode=0o755)  # (0700 outside the unit's namespace)
        for name in service.get("StateDirectory", []):
            (private / name).mkdir(mode=0o700)
            os.chown(private / name, self.uid, self.gid)
            (self.state_root / name).symlink_to(f"private/{name}")
        self.cache.mkdir(parents=True, mode=0o700)
        os.chown(self.cache, self.uid, self.gid)
        self.config.write_text('[server]\nlisten = "127.0.0.1:0"\n[logging]\nlevel = "INFO"\n')
        self.config.chmod(0o644)

    def expand(self, value: str) -> str:
        return value.replace("%d", str(self.creds)).replace("%S", str(self.state_root))

    def command(self, exec_start: str) -> list[str]:
        argv = exec_start.split()
        assert argv[0] == "/usr/local/bin/ferrohsm"
        return [str(self.zipapp), *[a.replace("/etc/ferrohsm/ferrohsm.toml", str(self.config))
                                    for a in argv[1:]]]

    def environment(self, service: dict[str, list[str]], notify: str) -> dict[str, str]:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8",
               "CREDENTIALS_DIRECTORY": str(self.creds), "CACHE_DIRECTORY": str(self.cache),
               "STATE_DIRECTORY": str(self.state_root / "ferrohsm"), "NOTIFY_SOCKET": notify}
        for assignment in service.get("Environment", []):
            name, _, value = self.expand(assignment).partition("=")
            env[name] = value
        return env


@pytest.fixture(scope="module")
def zipapp() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="ferrohsm-unit-"))
    base.chmod(0o755)  # nobody must reach the zip app and the test's folders
    out = base / "bin" / "ferrohsm"
    subprocess.run([sys.executable, str(ROOT / "build.py"), "--out", str(out)], check=True,
                   cwd=ROOT, capture_output=True, timeout=600)
    out.parent.chmod(0o755)
    yield out
    shutil.rmtree(base, ignore_errors=True)


def deny_write_execute() -> None:
    """MemoryDenyWriteExecute=yes, as the kernel enforces it (inherited across exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)


def https(port: int, ca: Path, method: str, path: str, token: str | None = None,
          body: object = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(str(ca)),
                                       timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_the_write_execute_rule_really_applies_to_the_child() -> None:
    """The boot test's MemoryDenyWriteExecute stand-in is in force (PR_GET_MDWE = 66 says 1)."""
    probe = subprocess.run(
        ["/usr/bin/python3", "-c", "import ctypes; print(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0))"],
        capture_output=True, text=True, timeout=30, preexec_fn=deny_write_execute)
    if probe.stdout.strip() == "-1":
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert probe.stdout.strip() == str(PR_MDWE_REFUSE_EXEC_GAIN), probe.stderr


def test_unit_file_verifies(zipapp: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "ferrohsm.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/ferrohsm", str(zipapp)))
    # the manual page installed as the README says (`ferrohsm man`), which verify looks up
    (tmp_path / "man" / "man1").mkdir(parents=True)
    page = subprocess.run([str(zipapp), "man"], capture_output=True, check=True, timeout=120,
                          env={**os.environ, "SHIV_ROOT": str(tmp_path / "shiv")})
    (tmp_path / "man" / "man1" / "ferrohsm.1").write_bytes(page.stdout)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "MANPATH": str(tmp_path / "man")})
    assert result.returncode == 0, result.stderr
    assert "ferrohsm.service" not in result.stderr, result.stderr


def test_unit_declares_an_unprivileged_hardened_notify_service() -> None:
    service = unit_service_section(UNIT.read_text())
    expected = {"Type": "notify", "DynamicUser": "yes", "StateDirectory": "ferrohsm",
                "NoNewPrivileges": "yes", "LimitCORE": "0",
                "ProtectSystem": "strict", "PrivateTmp": "yes",
                "CapabilityBoundingSet": "", "MemoryDenyWriteExecute": "yes",
                "SystemCallFilter": "@system-service",
                "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6"}
    for key, value in expected.items():
        assert service.get(key) == [value], key
    names = {spec.partition(":")[0] for spec in service["LoadCredential"]}
    assert {"master_key", "jwt_hs256_secret", "audit_hmac_key"} <= names
    # a configuration error (exit 2, README) fails the same way at every start: no restart loop
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2"]


def test_unit_documentation_is_what_the_install_steps_install() -> None:
    """Documentation= names the manual page the README's systemd steps install."""
    docs = [line.partition("=")[2] for line in UNIT.read_text().splitlines()
            if line.startswith("Documentation=")]
    assert docs == ["man:ferrohsm(1)"]
    readme = (ROOT / "README.md").read_text()
    assert "ferrohsm man | sudo tee /usr/local/share/man/man1/ferrohsm.1" in readme


def test_exec_start_as_nobody_notifies_serves_reloads_and_stops(zipapp: Path) -> None:
    service = unit_service_section(UNIT.read_text())
    box = Box(zipapp.parent.parent, zipapp)
    box.load_credentials(service["LoadCredential"])
    box.make_dirs(service)
    notes = Notifications()
    env = box.environment(service, notes.name)
    log = open(box.base / "server.log", "wb")
    proc = subprocess.Popen(
        ["runuser", "-u", "nobody", "--", "env", "-i",
         *[f"{k}={v}" for k, v in env.items()], *box.command(service["ExecStart"][0])],
        stdout=log, stderr=subprocess.STDOUT, cwd="/", preexec_fn=deny_write_execute)
    pid = 0
    try:
        ready, pid, uid = notes.next(timeout=90)
        assert ready.get("READY") == "1", (ready, (box.base / "server.log").read_text())
        assert uid == box.uid and pid > 0
        # not dumpable: its /proc entries are root's although it runs as nobody, and no core
        assert os.stat(f"/proc/{pid}/environ").st_uid == 0
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert re.search(r"Max core file size\s+0\s", limits), limits
        port = int(re.search(r"port (\d+)", ready["STATUS"]).group(1))  # type: ignore[union-attr]
        status, headers, body = https(port, box.ca, "GET", "/readyz")
        assert status == 200 and json.loads(body)["status"] == "ready", body
        assert headers["strict-transport-security"] == "max-age=31536000"
        token = issue_token(box.jwt.encode(), subject="ops", role="administrator")
        status, _, body = https(port, box.ca, "POST", "/v1/keys", token,
                                {"name": "unit-key", "algorithm": "aes-256-gcm",
                                 "usage": "encrypt"})
        assert status == 201, body
        assert any((box.state_root / "ferrohsm").iterdir())

        os.kill(pid, signal.SIGHUP)
        reloading, _, _ = notes.next(timeout=30)
        assert reloading.get("RELOADING") == "1"
        assert int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(
            time.CLOCK_MONOTONIC) // 1000
        again, _, _ = notes.next(timeout=30)
        assert again.get("READY") == "1"

        os.kill(pid, signal.SIGTERM)
        stopping, _, _ = notes.next(timeout=30)
        assert stopping.get("STOPPING") == "1"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            if pid:  # runuser's child, the server: a failed assertion must not leave it running
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
        log.close()
        notes.close()
    output = (box.base / "server.log").read_text()
    assert "Traceback" not in output, output
