"""SIGHUP reads the configuration file again, with start-up's checks, in a real ``ferrohsm``
process: a file that no longer loads is warned about (the server keeps serving on its settings),
and changed settings are listed by name, to take effect at the next restart."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from test_serve_process import call, start, stop

pytestmark = pytest.mark.slow


def warnings_of(log: Path) -> list[str]:
    out = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("level") == "warning" and "SIGHUP" in record.get("message", ""):
            out.append(record["message"])
    return out


def hup_and_wait(proc: object, log: Path, count: int) -> list[str]:
    proc.send_signal(signal.SIGHUP)  # type: ignore[attr-defined]
    deadline = time.monotonic() + 15
    while len(found := warnings_of(log)) < count:
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    return found


def test_sighup_checks_the_configuration_file(tmp_path: Path) -> None:
    data, config = tmp_path / "data", tmp_path / "ferrohsm.toml"
    secret = tmp_path / "not-yet.key"
    config.write_text("[server]\nworkers = 16\n[crypto]\ncache_ttl_seconds = 300.0\n")
    proc, exports = start(data, "--config", str(config))
    log = tmp_path / "server.log"
    try:
        # unchanged: SIGHUP says nothing about the file (the keysets and TLS still reload)
        proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert warnings_of(log) == []
        config.write_text(config.read_text() + "[server\n")
        broken = hup_and_wait(proc, log, 1)[-1]
        assert f"the configuration file {config} no longer loads" in broken
        assert "not valid TOML" in broken and "a restart would fail" in broken
        assert proc.poll() is None and call(exports, "GET", "/v1/keys")[0] == 200
        config.write_text('[server]\nworkers = 16\nheader_timeout_seconds = 0\n')
        invalid = hup_and_wait(proc, log, 2)[-1]
        assert "[server].header_timeout_seconds must be a number from 0.1 to 3600" in invalid
        config.write_text(f'[server]\nworkers = 8\n[crypto]\ncache_ttl_seconds = 60.0\n'
                          f'[approvals]\napprover_keys_file = "{secret}"\n')
        changed = hup_and_wait(proc, log, 3)[-1]
        assert "take effect at the next restart" in changed
        assert changed.endswith(": [server].workers, [crypto].cache_ttl_seconds, "
                                "[approvals].approver_keys_file"), changed
        assert str(secret) not in changed  # names only, never values
        assert call(exports, "GET", "/v1/keys")[0] == 200
    finally:
        assert stop(proc) == 0
