"""Retention to the end of a key's life through the public interfaces of a live TLS server:
``POST /v1/keys/{key}/versions/{n}/destroy`` (roles, refusals, dual control, the attestation
record), ``ferrohsm keys destroy-version``, and the real scheduler purging an archived version
and parking, then executing, an approval for a key past ``max_key_age_days``. (The decisions and
the scheduler's timing are tested with a controllable clock in tests/unit/test_endoflife.py;
here the ages are fractions of a second so the live scheduler meets them.)"""

from __future__ import annotations

import base64
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from live import LiveServer

from ferrohsm.cli.main import main

SECOND = 1 / 86400  # one second, in days
CONFIG = f"""
[policy.tags.dual]
approvals_required = 1

[policy.tags.short-lived]
archive_after_days = {SECOND}
purge_after_days = {SECOND}

[policy.tags.old-dual]
approvals_required = 1
max_key_age_days = {2 * SECOND}
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("eol"), config_text=CONFIG,
                        overrides={("scheduler", "interval_seconds"): 1.0})
    yield server
    server.close()


def new_key(live: LiveServer, *tags: str) -> dict[str, Any]:
    status, _, key = live.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                    "usage": "encrypt", "tags": list(tags)})
    assert status == 201, key
    return key  # type: ignore[no-any-return]


def records(live: LiveServer, action: str, key_id: str) -> list[dict[str, Any]]:
    return [r for r in live.rt.audit.read(0, 1000000)
            if r["action"] == action and r["key_id"] == key_id]


def wait_for(check: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the scheduler did not get there in time"
        time.sleep(0.2)


# ---- REST -----------------------------------------------------------------------------------

def test_destroying_one_version(live: LiveServer) -> None:
    key = new_key(live)
    kid = key["id"]
    status, _, old = live.call("POST", f"/v1/keys/{kid}/encrypt",
                               {"plaintext": base64.b64encode(b"old").decode()}, role="service")
    assert status == 200
    live.call("POST", f"/v1/keys/{kid}/rotate", {})
    path = f"/v1/keys/{kid}/versions/1/destroy"
    assert live.call("POST", path, {}, role="operator")[0] == 403
    assert live.call("POST", f"/v1/keys/{kid}/versions/2/destroy", {})[0] == 409  # primary
    assert live.call("POST", f"/v1/keys/{kid}/versions/7/destroy", {})[0] == 409  # no such
    assert live.call("POST", f"/v1/keys/{kid}/versions/x/destroy", {})[0] == 400
    status, _, after = live.call("POST", path, {})
    assert status == 200, after
    assert [v["state"] for v in after["versions"]] == ["destroyed", "enabled"]
    assert live.call("POST", path, {})[0] == 410
    status, _, _ = live.call("POST", f"/v1/keys/{kid}/decrypt",
                             {"ciphertext": old["ciphertext"]}, role="service")
    assert status == 410
    # the operator, the primary, no such version, then the change, then the second attempt
    assert [r["outcome"] for r in records(live, "key.destroy_version", kid)] == [
        "denied", "error", "error", "intent", "success", "error"]
    (done,) = [r for r in records(live, "key.destroy_version", kid) if r["outcome"] == "success"]
    assert done["details"]["destroyed_version"] == 1 and len(done["details"]["sealed_sha256"]) == 64


def test_destroying_a_version_under_dual_control(live: LiveServer) -> None:
    kid = new_key(live, "dual")["id"]
    live.call("POST", f"/v1/keys/{kid}/rotate", {})
    path = f"/v1/keys/{kid}/versions/1/destroy"
    status, _, parked = live.call("POST", path, {})
    assert status == 202 and parked["approval"]["action"] == "key.destroy_version"
    approval = parked["approval"]["id"]
    other = live.token("administrator", "second-admin")
    assert live.call("POST", f"/v1/approvals/{approval}/approve", {}, token=other)[0] == 200
    status, _, after = live.call("POST", path, {}, headers={"X-Approval-ID": approval})
    assert status == 200 and after["versions"][0]["state"] == "destroyed"
    (done,) = [r for r in records(live, "key.destroy_version", kid) if r["outcome"] == "success"]
    assert done["details"]["approval_id"] == approval


# ---- the CLI --------------------------------------------------------------------------------

def run(live: LiveServer, monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str, str]:
    for name in list(os.environ):
        if name.startswith("FERROHSM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FERROHSM_URL", f"https://127.0.0.1:{live.port}")
    monkeypatch.setenv("FERROHSM_CA_CERT", str(live.pki.ca_cert))
    monkeypatch.setenv("FERROHSM_TOKEN", live.token("administrator"))
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.multiple(sys, stdout=out, stderr=err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    assert "Traceback" not in err.getvalue()
    return code, out.getvalue(), err.getvalue()


def test_cli_destroy_version(live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    kid = new_key(live)["id"]
    live.call("POST", f"/v1/keys/{kid}/rotate", {})
    code, out, err = run(live, monkeypatch, "keys", "destroy-version", kid, "--version", "1")
    assert code == 0, err
    assert "Destroyed version 1" in out
    code, _, err = run(live, monkeypatch, "keys", "destroy-version", kid, "--version", "1")
    assert code == 1 and "gone" in err
    assert run(live, monkeypatch, "keys", "destroy-version", kid)[0] == 2  # --version needed


# ---- the live scheduler ------------------------------------------------------------------------

@pytest.mark.slow
def test_the_scheduler_purges_archived_versions(live: LiveServer) -> None:
    kid = new_key(live, "short-lived")["id"]
    live.call("POST", f"/v1/keys/{kid}/rotate", {})

    def purged() -> bool:
        return bool(live.call("GET", f"/v1/keys/{kid}")[2]["versions"][0]["state"] == "destroyed")
    wait_for(purged)
    assert [r["outcome"] for r in records(live, "scheduler.archive", kid)][-1] == "success"
    (done,) = [r for r in records(live, "scheduler.purge", kid) if r["outcome"] == "success"]
    assert done["actor"] == "system" and done["details"]["destroyed_version"] == 1


@pytest.mark.slow
def test_the_scheduler_parks_an_approval_for_an_old_key_and_executes_it(
        live: LiveServer) -> None:
    kid = new_key(live, "old-dual")["id"]

    def parked() -> list[dict[str, Any]]:
        page = live.call("GET", "/v1/approvals?state=pending")[2]["approvals"]
        return [a for a in page if a["key_id"] == kid]
    wait_for(lambda: bool(parked()))
    time.sleep(2.5)  # a few more ticks: still one approval, requested by the scheduler
    (approval,) = parked()
    assert approval["requested_by"] == "system" and approval["action"] == "key.destroy"
    assert live.call("GET", f"/v1/keys/{kid}")[2]["state"] == "active"
    assert live.call("POST", f"/v1/approvals/{approval['id']}/approve", {})[0] == 200

    def scheduled() -> bool:
        return bool(live.call("GET", f"/v1/keys/{kid}")[2]["state"] == "destroy_scheduled")
    wait_for(scheduled)
    state = live.call("GET", f"/v1/approvals/{approval['id']}")[2]["state"]
    assert state == "executed"
    (done,) = [r for r in records(live, "scheduler.max_age", kid) if r["outcome"] == "success"]
    assert done["details"]["approval_id"] == approval["id"]
    requested = [r for r in records(live, "approval.requested", kid) if r["outcome"] == "success"]
    assert len(requested) == 1 and requested[0]["actor"] == "system"
