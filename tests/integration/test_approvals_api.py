"""Dual control end to end: a real server over TLS, tag policies from a config file, the
approvals endpoints of docs/api.md, concurrent repeats, a restart, and scheduled destruction."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live import LiveServer

CONFIG = """
[policy.tags.pci]
approvals_required = 2
approval_actions = ["rollback", "rotate", "unwrap"]
approval_ttl_seconds = 3600
destroy_grace_hours = 0

[policy.tags.brief]
approvals_required = 1
approval_actions = ["rotate"]
approval_ttl_seconds = 1

[policy.tags.guarded]
approvals_required = 1
approval_actions = ["decrypt"]
"""
NO_GRACE = {("crypto", "destroy_grace_hours"): 0.0}


def B(data: bytes) -> str:  # noqa: N802  one letter, like b"": a base64 literal in bodies
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("approvals"), key_store="filesystem",
                        config_text=CONFIG, overrides=NO_GRACE)
    yield server
    server.close()


def as_(srv: LiveServer, role: str, subject: str) -> dict[str, Any]:
    return {"token": srv.token(role, subject)}


ALICE, BOB, CAROL = ("administrator", "alice"), ("operator", "bob"), ("administrator", "carol")


def create(srv: LiveServer, *tags: str, usage: str = "encrypt") -> str:
    status, _, key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": usage,
                                                   "tags": list(tags)}, **as_(srv, *ALICE))
    assert status == 201, key
    return str(key["id"])


def park(srv: LiveServer, method: str, path: str, body: Any, who: tuple[str, str] = ALICE
         ) -> dict[str, Any]:
    status, headers, reply = srv.call(method, path, body, **as_(srv, *who))
    assert status == 202, reply
    assert set(reply) == {"error", "approval"}
    assert set(reply["error"]) == {"code", "message", "request_id"}
    assert reply["error"]["code"] == "approval_required"
    assert reply["error"]["request_id"] == headers["x-request-id"]
    return reply["approval"]  # type: ignore[no-any-return]  # parsed JSON


def vote(srv: LiveServer, approval_id: str, who: tuple[str, str], verb: str = "approve",
         body: Any = None) -> tuple[int, Any]:
    status, _, reply = srv.call("POST", f"/v1/approvals/{approval_id}/{verb}", body or {},
                                **as_(srv, *who))
    return status, reply


def test_the_202_body_and_the_approvals_endpoints(srv: LiveServer) -> None:
    key = create(srv, "pci")
    approval = park(srv, "POST", f"/v1/keys/{key}/rotate", {})
    assert {"id", "action", "key_id", "request_hash", "required", "approvals", "state",
            "expires_at"} <= set(approval)
    assert (approval["action"], approval["key_id"], approval["required"], approval["state"],
            approval["approvals"]) == ("key.rotate", key, 2, "pending", [])
    status, _, listed = srv.call("GET", "/v1/approvals?state=pending", role="auditor")
    assert status == 200 and approval["id"] in [a["id"] for a in listed["approvals"]]
    status, _, one = srv.call("GET", f"/v1/approvals/{approval['id']}", role="auditor")
    assert status == 200 and one["request_hash"] == approval["request_hash"]
    assert srv.call("GET", f"/v1/approvals/{approval['id']}", role="service")[0] == 403
    assert srv.call("GET", "/v1/approvals/0190a5d0-0000-7000-8000-00000000dead")[0] == 404
    for bad in ("state=sleepy", "limit=0", "colour=red"):
        assert srv.call("GET", f"/v1/approvals?{bad}")[0] == 400, bad
    assert vote(srv, approval["id"], BOB, body={"comment": "x" * 300})[0] == 400


def test_self_approval_repeated_approver_and_quorum(srv: LiveServer) -> None:
    key = create(srv, "pci")
    approval_id = park(srv, "POST", f"/v1/keys/{key}/rotate", {})["id"]
    assert vote(srv, approval_id, ALICE)[0] == 403                       # the requester
    assert vote(srv, approval_id, ("auditor", "una"))[0] == 403          # not an approver role
    status, one = vote(srv, approval_id, BOB, body={"comment": "checked the ticket"})
    assert status == 200 and one["state"] == "pending" and len(one["approvals"]) == 1
    assert vote(srv, approval_id, BOB)[0] == 409                         # counted once
    assert vote(srv, approval_id, ("administrator", "bob"))[0] == 409    # same subject
    status, _, _ = srv.call("POST", f"/v1/keys/{key}/rotate", {}, **as_(srv, *ALICE),
                                headers={"X-Approval-ID": approval_id})
    assert status == 202                                                 # still pending
    status, two = vote(srv, approval_id, CAROL)
    assert status == 200 and two["state"] == "approved"
    assert [a["actor"] for a in two["approvals"]] == ["bob", "carol"]


def test_twenty_identical_requests_at_once_park_one_approval(srv: LiveServer) -> None:
    """A client retrying on timeouts sends one request many times at once: one approval for
    the approvers, not copies they cannot tell apart (each of which would run)."""
    key = create(srv, "pci")
    barrier, ids = threading.Barrier(20), []
    token = srv.token(*ALICE)

    def send() -> None:
        conn = srv.connect()
        conn.connect()  # the handshake before the barrier: the requests arrive together
        barrier.wait()
        conn.request("POST", f"/v1/keys/{key}/rotate", body=b"{}", headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        reply = json.loads(resp.read())
        conn.close()
        assert resp.status == 202, reply
        ids.append(reply["approval"]["id"])
    threads = [threading.Thread(target=send) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 20 and len(set(ids)) == 1, sorted(set(ids))
    _, _, listed = srv.call("GET", "/v1/approvals?state=pending&limit=1000", role="auditor")
    assert [a["id"] for a in listed["approvals"] if a["key_id"] == key] == ids[:1]


def test_ten_concurrent_repeats_execute_exactly_once(srv: LiveServer) -> None:
    key = create(srv, "pci")
    approval_id = park(srv, "POST", f"/v1/keys/{key}/rotate", {})["id"]
    vote(srv, approval_id, BOB)
    vote(srv, approval_id, CAROL)
    barrier, statuses = threading.Barrier(10), []
    token = srv.token(*ALICE)

    def repeat() -> None:
        barrier.wait()
        statuses.append(srv.call("POST", f"/v1/keys/{key}/rotate", {}, token=token,
                                 headers={"X-Approval-ID": approval_id})[0])
    threads = [threading.Thread(target=repeat) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [409] * 9
    _, _, described = srv.call("GET", f"/v1/keys/{key}")
    assert len(described["versions"]) == 2
    _, _, approval = srv.call("GET", f"/v1/approvals/{approval_id}")
    assert approval["state"] == "executed" and approval["executed_at"]


def test_an_approval_replayed_on_another_key_or_body_is_refused(srv: LiveServer) -> None:
    key, other = create(srv, "pci", usage="wrap"), create(srv, "pci", usage="wrap")
    svc = ("service", "payments-app")
    wrapped = [srv.call("POST", f"/v1/keys/{k}/wrap", {"key_material": B(m)},
                        **as_(srv, *svc))[2]["wrapped"] for k, m in ((key, b"a" * 32),
                                                                     (key, b"b" * 32),
                                                                     (other, b"a" * 32))]
    approval_id = park(srv, "POST", f"/v1/keys/{key}/unwrap", {"wrapped": wrapped[0]}, svc)["id"]
    vote(srv, approval_id, BOB)
    vote(srv, approval_id, CAROL)
    header = {"X-Approval-ID": approval_id}
    for path, body in ((f"/v1/keys/{other}/unwrap", {"wrapped": wrapped[2]}),   # another key
                       (f"/v1/keys/{key}/unwrap", {"wrapped": wrapped[1]})):    # another body
        status, _, err = srv.call("POST", path, body, headers=header, **as_(srv, *svc))
        assert status == 403 and err["error"]["code"] == "forbidden"
    status, _, out = srv.call("POST", f"/v1/keys/{key}/unwrap", {"wrapped": wrapped[0]},
                              headers=header, **as_(srv, *svc))
    assert status == 200 and base64.b64decode(out["key_material"]) == b"a" * 32
    assert srv.call("POST", f"/v1/keys/{key}/unwrap", {"wrapped": wrapped[0]}, headers=header,
                    **as_(srv, *svc))[0] == 409


def test_an_approval_named_on_a_call_that_needs_none_is_checked_not_credited(
        srv: LiveServer) -> None:
    """X-Approval-ID on a call its policy does not gate: the approval is still checked, so an
    executed one, or another key's, is refused instead of being recorded as authorising it."""
    key, plain = create(srv, "pci"), create(srv)
    approval_id = park(srv, "POST", f"/v1/keys/{key}/rotate", {})["id"]
    vote(srv, approval_id, BOB)
    vote(srv, approval_id, CAROL)
    header = {"X-Approval-ID": approval_id}
    assert srv.call("POST", f"/v1/keys/{key}/rotate", {}, headers=header,
                    **as_(srv, *ALICE))[0] == 200
    for method, path in (("POST", f"/v1/keys/{plain}/rotate"),       # no approval needed
                         ("POST", f"/v1/keys/{key}/encrypt")):        # not a gated action
        body = {"plaintext": B(b"x")} if path.endswith("encrypt") else {}
        status, _, err = srv.call(method, path, body, headers=header, **as_(srv, *ALICE))
        assert status in (403, 409) and err["error"]["code"] in ("forbidden", "conflict"), err
    # calls that can never be approved (reads, listings, a plain create) refuse it outright
    before = len(srv.call("GET", "/v1/keys?limit=1000")[2]["keys"])
    never: list[tuple[str, str, dict[str, str] | None]] = [
        ("GET", f"/v1/keys/{key}", None), ("GET", "/v1/keys", None),
        ("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt"})]
    for method, path, sent in never:
        status, _, err = srv.call(method, path, sent, headers=header, **as_(srv, *ALICE))
        assert status == 400 and "never needs an approval" in err["error"]["message"], err
    assert len(srv.call("GET", "/v1/keys?limit=1000")[2]["keys"]) == before
    _, _, page = srv.call("GET", "/v1/audit?limit=1000", **as_(srv, "auditor", "audrey"))
    credited = [r for r in page["records"] if r["outcome"] == "success"
                and (r.get("details") or {}).get("approval_id") == approval_id
                and r["action"] not in ("approval.requested", "approval.approved",
                                        "approval.executed", "approval.vote")]
    assert [r["key_id"] for r in credited] == [key], credited  # the rotation it was for only

def test_a_change_that_cannot_happen_parks_nothing_and_spends_nothing(
        srv: LiveServer) -> None:
    """A rollback to a version the key does not have is refused (409) before an approval is
    asked for it; an approved rotation of a key revoked meanwhile is refused before its approval
    is spent: the approval stays approved, not "executed" by a call that never ran."""
    key = create(srv, "pci")
    status, _, err = srv.call("POST", f"/v1/keys/{key}/rollback", {"version": 99},
                              **as_(srv, *ALICE))
    assert status == 409 and "version 99" in err["error"]["message"], err
    _, _, pending = srv.call("GET", "/v1/approvals?state=pending&limit=1000",
                             **as_(srv, *BOB))
    assert not [a for a in pending["approvals"] if a["key_id"] == key]
    approval_id = park(srv, "POST", f"/v1/keys/{key}/rotate", {})["id"]
    vote(srv, approval_id, BOB)
    vote(srv, approval_id, CAROL)
    assert srv.call("POST", f"/v1/keys/{key}/revoke", {"reason": "compromised"},
                    **as_(srv, *ALICE))[0] == 200
    status, _, err = srv.call("POST", f"/v1/keys/{key}/rotate", {},
                              headers={"X-Approval-ID": approval_id}, **as_(srv, *ALICE))
    assert status == 409, err
    assert srv.call("GET", f"/v1/approvals/{approval_id}", **as_(srv, *BOB))[2]["state"] == \
        "approved"


def test_an_input_that_could_never_be_unwrapped_or_decrypted_parks_nothing(
        srv: LiveServer) -> None:
    """Junk given to unwrap (or to decrypt) under dual control was parked; the quorum
    approved it, the redemption failed "malformed ciphertext", and the approval showed
    "executed" (an outside tester). A 133 KB junk input was parked too (202), where any other
    input that large is a 413. Each is refused before anyone is asked to approve it."""
    wrapper, guarded = create(srv, "pci", usage="wrap"), create(srv, "guarded")
    svc = as_(srv, "service", "svc")
    for path, field in ((f"/v1/keys/{wrapper}/unwrap", "wrapped"),
                        (f"/v1/keys/{guarded}/decrypt", "ciphertext")):
        for junk, status in (("aGVsbG8=", 400), ("fhsm:v7:" + B(bytes(32)), 400),
                             ("fhsm:v1:" + B(bytes(133_000)), 413)):
            got, _, err = srv.call("POST", path, {field: junk}, **svc)
            assert got == status, (path, junk[:12], err)
    _, _, pending = srv.call("GET", "/v1/approvals?state=pending&limit=1000", **as_(srv, *BOB))
    assert not [a for a in pending["approvals"] if a["key_id"] in (wrapper, guarded)]


def test_a_rewrap_under_dual_control_is_refused_before_either_half(srv: LiveServer) -> None:
    """One X-Approval-ID cannot cover a rewrap's decrypt and its encrypt: refused up front (400),
    nothing parked, no decrypt run, rather than a decrypt approval spent (and the plaintext
    recovered) for an encrypt that is then refused."""
    key = create(srv, "guarded")
    status, _, sealed = srv.call("POST", f"/v1/transit/encrypt/{key}",
                                 {"plaintext": B(b"secret")}, **as_(srv, "service", "svc"))
    assert status == 200, sealed
    ciphertext = sealed["data"]["ciphertext"]
    status, _, reply = srv.call("POST", f"/v1/transit/rewrap/{key}",
                                {"ciphertext": ciphertext}, **as_(srv, "service", "svc"))
    assert status == 400 and "both halves of a rewrap" in " ".join(reply["errors"]), reply  # Vault says 400
    _, _, pending = srv.call("GET", "/v1/approvals?state=pending&limit=1000", **as_(srv, *BOB))
    assert not [a for a in pending["approvals"] if a["key_id"] == key]
    _, _, page = srv.call("GET", "/v1/audit?limit=1000", **as_(srv, "auditor", "audrey"))
    assert not [r for r in page["records"] if r["key_id"] == key
                and r["action"] == "crypto.decrypt" and r["outcome"] == "success"]


def test_denied_and_expired_approvals_are_refused(srv: LiveServer) -> None:
    key = create(srv, "pci")
    denied = park(srv, "POST", f"/v1/keys/{key}/rotate", {})["id"]
    status, reply = vote(srv, denied, BOB, "deny", {"comment": "not in the change window"})
    assert status == 200 and reply["state"] == "denied" and reply["denied_by"]["actor"] == "bob"
    header = {"X-Approval-ID": denied}
    assert srv.call("POST", f"/v1/keys/{key}/rotate", {}, headers=header,
                    **as_(srv, *ALICE))[0] == 409
    brief = create(srv, "brief")
    expiring = park(srv, "POST", f"/v1/keys/{brief}/rotate", {})["id"]
    srv.rt.stop.wait(1.1)  # approval_ttl_seconds = 1
    assert vote(srv, expiring, BOB)[0] == 409
    _, _, listed = srv.call("GET", "/v1/approvals?state=expired&limit=1000")
    assert expiring in [a["id"] for a in listed["approvals"]]


def test_every_transition_is_in_the_audit_log(srv: LiveServer) -> None:
    key = create(srv, "pci")
    approval_id = park(srv, "POST", f"/v1/keys/{key}/rotate", {})["id"]
    vote(srv, approval_id, BOB)
    vote(srv, approval_id, CAROL)
    srv.call("POST", f"/v1/keys/{key}/rotate", {}, headers={"X-Approval-ID": approval_id},
             **as_(srv, *ALICE))
    records = srv.rt.audit.read(0, 100000)
    mine = [r for r in records if (r["details"] or {}).get("approval_id") == approval_id]
    transitions = [("approval.requested", "alice"), ("approval.approved", "bob"),
                   ("approval.approved", "carol"), ("approval.executed", "alice"),
                   ("key.rotate", "alice")]
    # each recorded before it is applied (intent) and confirmed after (success)
    assert [(r["action"], r["actor"], r["outcome"]) for r in mine] == [
        (action, actor, outcome) for action, actor in transitions
        for outcome in ("intent", "success")]
    assert all(r["key_id"] == key for r in mine)


def test_destruction_under_quorum_then_the_scheduler(srv: LiveServer) -> None:
    key = create(srv, "pci")
    approval_id = park(srv, "POST", f"/v1/keys/{key}/destroy", {})["id"]
    vote(srv, approval_id, BOB)
    vote(srv, approval_id, CAROL)
    status, _, scheduled = srv.call("POST", f"/v1/keys/{key}/destroy", {},
                                    headers={"X-Approval-ID": approval_id}, **as_(srv, *ALICE))
    assert status == 200 and scheduled["state"] == "destroy_scheduled"
    for _ in range(50):  # the scheduler ticks every second in tests
        if srv.call("GET", f"/v1/keys/{key}")[2]["state"] == "destroyed":
            break
        srv.rt.stop.wait(0.1)
    _, _, gone = srv.call("GET", f"/v1/keys/{key}")
    assert gone["state"] == "destroyed" and gone["history"]
    attest = [r for r in srv.rt.audit.read(0, 100000) if r["action"] == "key.destroy_complete"
              and r["key_id"] == key and r["outcome"] == "success"]
    assert len(attest) == 1 and attest[0]["details"]["approval_id"] == approval_id
    assert attest[0]["message"].startswith("attestation:") and attest[0]["actor"] == "system"


def test_pending_approvals_survive_a_restart(tmp_path: Path) -> None:
    first = LiveServer(tmp_path, key_store="sqlite", config_text=CONFIG)
    try:
        key = create(first, "pci")
        approval_id = park(first, "POST", f"/v1/keys/{key}/rotate", {})["id"]
        vote(first, approval_id, BOB)
    finally:
        first.close()
    assert (tmp_path / "data" / "approvals.sqlite3").stat().st_mode & 0o777 == 0o600
    second = LiveServer(tmp_path, key_store="sqlite", config_text=CONFIG,
                        secrets_=first.secrets)
    try:
        _, _, pending = second.call("GET", "/v1/approvals?state=pending")
        assert [a["id"] for a in pending["approvals"]] == [approval_id]
        assert vote(second, approval_id, CAROL)[1]["state"] == "approved"
        status, _, rotated = second.call("POST", f"/v1/keys/{key}/rotate", {},
                                         headers={"X-Approval-ID": approval_id},
                                         **as_(second, *ALICE))
        assert status == 200 and rotated["primary_version"] == 2
    finally:
        second.close()


@pytest.mark.parametrize("path", ["/v1/openapi.json", "/healthz", "/readyz", "/metrics", "/ui/"])
def test_an_approval_id_on_a_public_route_is_refused_not_ignored(srv: LiveServer,
                                                                 path: str) -> None:
    """README: an X-Approval-ID is always checked. The public routes never reach the service,
    whose guard refuses one on a call that can never be approved: they refused a malformed id
    but ignored a well-formed one (GET /v1/openapi.json answered 200 as if it were not sent)."""
    approval_id = "0191f3a2-7b4c-7d8e-9f00-112233445566"  # one approval id in form, lowercase
    status, _, err = srv.call("GET", path, headers={"X-Approval-ID": approval_id},
                              role="auditor")
    assert status == 400 and err["error"]["code"] == "bad_request", err
    assert f"GET {path} never needs an approval" in err["error"]["message"], err
    assert approval_id not in err["error"]["message"]
    assert srv.call("GET", path, role="auditor")[0] in (200, 503)  # /readyz: not ready


@pytest.mark.parametrize("header", ["../../x", "not-an-approval", "0" * 36,
                                    "0191F3A2-7B4C-7D8E-9F00-112233445566", "x" * 200])
def test_malformed_approval_id_header_is_400_and_creates_no_approval(
        srv: LiveServer, header: str) -> None:
    key = create(srv, "pci")
    pending = srv.call("GET", "/v1/approvals?limit=200", **as_(srv, *ALICE))[2]["approvals"]
    status, _, err = srv.call("POST", f"/v1/keys/{key}/rotate", {},
                              headers={"X-Approval-ID": header}, **as_(srv, *ALICE))
    assert status == 400 and err["error"]["code"] == "bad_request", err
    assert "X-Approval-ID" in err["error"]["message"] and header not in err["error"]["message"]
    after = srv.call("GET", "/v1/approvals?limit=200", **as_(srv, *ALICE))[2]["approvals"]
    assert len(after) == len(pending)
