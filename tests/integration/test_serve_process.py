"""`ferrohsm quickstart` / `serve` as real processes: exports, restart on the same data dir,
graceful SIGTERM (exit 0, audit closed cleanly), a wrong master key refused at start-up."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ferrohsm.tls.context import client_context

ROOT = Path(__file__).resolve().parents[2]


def start(data: Path, *extra: str, env: dict[str, str] | None = None
          ) -> tuple[subprocess.Popen[str], dict[str, str]]:
    log = open(data.parent / "server.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "ferrohsm", "quickstart", "--data-dir",
                             str(data), "--listen", "127.0.0.1:0", *extra], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=log,
                            env=env or {k: v for k, v in os.environ.items()
                                        if not k.startswith("FERROHSM_")})
    exports: dict[str, str] = {}
    assert proc.stdout is not None
    while len(exports) < 3:
        line = proc.stdout.readline()
        assert line, (data.parent / "server.log").read_text()
        assert line.startswith("export FERROHSM_"), line
        name, _, value = line.strip().removeprefix("export ").partition("=")
        exports[name] = value
    log.close()  # the child keeps its own descriptor
    return proc, exports


def call(exports: dict[str, str], method: str, path: str, body: object = None,
         token: str | None = None) -> tuple[int, dict[str, Any]]:
    url = exports["FERROHSM_URL"].removeprefix("https://")
    host, _, port = url.rpartition(":")
    conn = http.client.HTTPSConnection(host, int(port),
                                       context=client_context(exports["FERROHSM_CA_CERT"]))
    headers = {"Authorization": f"Bearer {token or exports['FERROHSM_TOKEN']}"}
    data = None if body is None else json.dumps(body).encode()
    if data:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    out = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, out


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    if proc.stdout:
        proc.stdout.close()
    return code


def service_token(data: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "ferrohsm", "token", "issue", "--data-dir",
                          str(data), "--subject", "ci", "--role", "service"], cwd=ROOT,
                         capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")})
    return out.stdout.strip()


def test_quickstart_restart_and_graceful_stop(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, exports = start(data)
    assert exports["FERROHSM_URL"].startswith("https://127.0.0.1:")
    assert Path(exports["FERROHSM_CA_CERT"]).is_file()
    assert oct(data.stat().st_mode & 0o777) == "0o700"
    for secret in ("master.key", "jwt.secret", "audit-hmac.key"):
        assert oct((data / secret).stat().st_mode & 0o777) == "0o600"
    status, _ = call(exports, "POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                   "usage": "encrypt", "name": "kept"})
    assert status == 201
    svc = service_token(data)
    status, ct = call(exports, "POST", "/v1/keys/kept/encrypt",
                      {"plaintext": base64.b64encode(b"survives").decode()}, token=svc)
    assert status == 200
    assert stop(proc) == 0

    proc, exports = start(data)  # same dir: same secrets, same keys
    try:
        status, out = call(exports, "POST", "/v1/keys/kept/decrypt",
                           {"ciphertext": ct["ciphertext"]}, token=svc)
        assert status == 200 and base64.b64decode(out["plaintext"]) == b"survives"
    finally:
        assert stop(proc) == 0
    verify = subprocess.run([sys.executable, "-m", "ferrohsm", "audit", "verify",
                             str(data / "audit"), "--hmac-key-file", str(data / "audit-hmac.key")],
                            cwd=ROOT, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    log = b"".join(p.read_bytes() for p in sorted((data / "audit").glob("audit-*.jsonl")))
    for action in (b"system.startup", b"system.shutdown", b"key.create", b"crypto.encrypt",
                   b"crypto.decrypt"):
        assert action in log
    assert b"survives" not in log and base64.b64encode(b"survives") not in log


def test_quickstart_makes_no_file_for_a_secret_from_the_environment(tmp_path: Path) -> None:
    """A file beside a secret given by the environment would hold another secret, which a
    restart without the variable would silently switch to (tokens stop working)."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
    env["FERROHSM_JWT_HS256_SECRET"] = "s" * 40
    proc, exports = start(data, env=env)
    try:
        assert not (data / "jwt.secret").exists()
        assert (data / "master.key").is_file() and (data / "audit-hmac.key").is_file()
        import jwt
        claims = jwt.decode(exports["FERROHSM_TOKEN"], "s" * 40, algorithms=["HS256"],
                            audience="ferrohsm")
        assert claims["role"] == "administrator"
        assert call(exports, "GET", "/v1/keys")[0] == 200
    finally:
        assert stop(proc) == 0


def test_quickstart_refuses_a_bad_value_in_its_config_file(tmp_path: Path) -> None:
    """quickstart keeps its own TLS, but a bad value in the file it was given still stops it,
    naming the setting, as serve would."""
    config = tmp_path / "bad.toml"
    config.write_text('[tls]\nmode = "foo"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
    result = subprocess.run([sys.executable, "-m", "ferrohsm", "quickstart", "--data-dir",
                             str(tmp_path / "data"), "--listen", "127.0.0.1:0", "--config",
                             str(config)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "[tls].mode" in result.stderr, result.stderr


def test_quickstart_uses_the_data_dir_its_config_file_names(tmp_path: Path) -> None:
    config = tmp_path / "qs.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "from-config"}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
    proc = subprocess.Popen([sys.executable, "-m", "ferrohsm", "quickstart", "--config",
                             str(config), "--listen", "127.0.0.1:0"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("export FERROHSM_URL=")
    assert stop(proc) == 0
    assert (tmp_path / "from-config" / "master.key").is_file()
    assert not (tmp_path / "ferrohsm-data").exists()


def test_wrong_master_key_stops_start_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc, _ = start(data)
    assert stop(proc) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
    env["FERROHSM_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "ferrohsm", "quickstart", "--data-dir",
                             str(data), "--listen", "127.0.0.1:0"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "master key" in result.stderr and "Traceback" not in result.stderr
    assert env["FERROHSM_MASTER_KEY"] not in result.stderr + result.stdout
    assert time.monotonic() - started < 30
    # quickstart is read by a person: the line that says why stays plain text (`serve`
    # writes it as a JSON line: tests/integration/test_custody.py, the busy port)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ferrohsm: ") and "master key" in last


def test_serve_without_tls_settings_explains(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
    env.update(FERROHSM_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(),
               FERROHSM_JWT_HS256_SECRET="s" * 40,
               FERROHSM_AUDIT_HMAC_KEY=base64.b64encode(os.urandom(32)).decode())
    result = subprocess.run([sys.executable, "-m", "ferrohsm", "serve", "--data-dir",
                             str(tmp_path / "d"), "--listen", "127.0.0.1:0"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "[tls].cert" in result.stderr


def test_read_only_data_directory_is_a_one_line_config_error(tmp_path: Path) -> None:
    """A data directory made read-only (a read-only bind mount, in a private user and mount
    namespace) after a first run: exit 2 and one line naming the directory and the operation."""
    data = tmp_path / "data"
    proc, _ = start(data)
    assert stop(proc) == 0
    mount = f"mount --bind {data} {data} && mount -o remount,bind,ro {data}"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"{mount} && ! touch {data}/probe"],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("no unprivileged user and mount namespaces here for a read-only mount")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$0" -m ferrohsm quickstart '
         f"--data-dir {data} --listen 127.0.0.1:0", sys.executable],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("ferrohsm: configuration error: "), lines
    assert str(data) in lines[0] and "chmod" in lines[0] and "unexpected" not in lines[0]


def test_a_second_group_of_processes_is_refused_the_port_of_a_first(tmp_path: Path) -> None:
    """SO_REUSEPORT would let a second ``--processes 2`` (another data directory, another CA)
    join a port already served and take half its connections: it is refused in one line, exit
    4, as a second single server is, and the first keeps serving every connection."""
    (tmp_path / "a").mkdir()
    first, exports = start(tmp_path / "a" / "data", "--key-store", "sqlite", "--processes", "2")
    try:
        port = exports["FERROHSM_URL"].rpartition(":")[2]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
        for extra in (["--processes", "2"], []):
            second = subprocess.run(
                [sys.executable, "-m", "ferrohsm", "quickstart", "--data-dir",
                 str(tmp_path / f"b{len(extra)}"), "--key-store", "sqlite",
                 "--listen", f"127.0.0.1:{port}", *extra],
                cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
            assert second.returncode == 4, second.stderr[-2000:]
            assert "already in use" in second.stderr and "Traceback" not in second.stderr
            assert "export FERROHSM_URL" not in second.stdout
        for _ in range(8):  # every connection still reaches the first group (its CA verifies)
            assert call(exports, "GET", "/v1/whoami")[0] == 200
    finally:
        assert stop(first) == 0
