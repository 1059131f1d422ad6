"""Batches of encrypt, decrypt, sign and verify, and data keys, against a real server over TLS.

Each item of a batch gets what a request of its own would (docs/api.md, Batches): its own result
or error object, per-item authorization (tag scoping), key state, dual control and rate limit,
and a place in the audit log that names its key, version and outcome.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live import LiveServer

POLICY = """
[policy.tags.dual]
approvals_required = 1
approval_actions = ["encrypt"]
"""
SVC = "service"


def B(data: bytes) -> str:  # noqa: N802  one letter, like b"": a base64 literal in bodies
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("batch"), key_store="filesystem",
                        config_text=POLICY, overrides={("crypto", "max_batch_items"): 50})
    yield server
    server.close()


def create(srv: LiveServer, algorithm: str = "aes-256-gcm", usage: str = "encrypt",
           **extra: object) -> str:
    status, _, key = srv.call("POST", "/v1/keys", {"algorithm": algorithm, "usage": usage,
                                                   **extra})
    assert status == 201, key
    return str(key["id"])


def batch(srv: LiveServer, key: str, op: str, items: list[Any], *, status: int = 200,
          **kw: Any) -> list[dict[str, Any]]:
    kw.setdefault("role", SVC)
    rid = kw.pop("rid", None)
    headers = {**kw.pop("headers", {}), **({"X-Request-ID": rid} if rid else {})}
    code, _, reply = srv.call("POST", f"/v1/keys/{key}/{op}", {"batch": items},
                              headers=headers, **kw)
    assert code == status, reply
    if status != 200:
        return [reply]
    assert set(reply) == {"results"} and len(reply["results"]) == len(items), reply
    return reply["results"]  # type: ignore[no-any-return]


def codes(results: list[dict[str, Any]]) -> list[str]:
    return [r["error"]["code"] if "error" in r else "ok" for r in results]


def records_of(srv: LiveServer, rid: str) -> list[dict[str, Any]]:
    return [r for r in srv.audit_log() if r["request_id"] == rid]


def positions(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Item position -> the record that lists it (each position exactly once)."""
    out: dict[int, dict[str, Any]] = {}
    for record in records:
        for span in record["details"]["batch_items"].split(","):
            low, _, high = span.partition("-")
            for index in range(int(low), int(high or low) + 1):
                assert index not in out, (index, record)
                out[index] = record
    return out


def test_encrypt_batch_mixed_items_each_its_own_answer_and_record(srv: LiveServer) -> None:
    key = create(srv)
    rid = f"enc-{uuid.uuid4().hex}"
    items: list[Any] = [{"plaintext": B(b"one")}, {"plaintext": "not base64!"},
                        {"plaintext": B(b"two"), "aad": B(b"ctx")}, 7,
                        {"plaintext": B(b"x"), "colour": "red"}, {"aad": B(b"a")},
                        {"plaintext": B(b"three")}]
    results = batch(srv, key, "encrypt", items, rid=rid)
    assert codes(results) == ["ok", "bad_request", "ok", "bad_request", "bad_request",
                              "bad_request", "ok"]
    assert results[1]["error"]["message"] == "plaintext must be standard base64 with padding"
    assert "request_id" not in results[1]["error"]
    assert results[5]["error"]["field"] == "plaintext"  # missing: the member to add
    assert all(r["key_id"] == key and r["key_version"] == 1 for r in results if "error" not in r)
    # every item is in exactly one record, naming the key, the version and the outcome
    records = records_of(srv, rid)
    where = positions(records)
    assert sorted(where) == list(range(len(items)))
    good = where[0]
    assert good is where[2] is where[6]  # one record for the three good items
    assert (good["action"], good["outcome"], good["key_id"], good["key_version"]) == (
        "crypto.encrypt", "success", key, 1)
    assert good["details"] == {"batch_items": "0,2,6", "batch_size": 7}
    assert good["message"] == "encrypted 3 batch items, 11 bytes"
    for bad in (1, 3, 4, 5):
        assert where[bad]["outcome"] == "error" and where[bad]["action"] == "crypto.encrypt"
        assert "400 bad_request" in where[bad]["message"]
    # each good ciphertext decrypts, in a batch too, with its own AAD
    back = batch(srv, key, "decrypt", [{"ciphertext": results[0]["ciphertext"]},
                                       {"ciphertext": results[2]["ciphertext"], "aad": B(b"ctx")},
                                       {"ciphertext": results[6]["ciphertext"]}])
    assert [base64.b64decode(r["plaintext"]) for r in back] == [b"one", b"two", b"three"]


def test_decrypt_batch_one_bad_item_never_fails_the_others(srv: LiveServer) -> None:
    key, other = create(srv), create(srv)
    token = srv.call("POST", f"/v1/keys/{key}/encrypt", {"plaintext": B(b"secret"),
                                                          "aad": B(b"a")}, role=SVC)[2]
    foreign = srv.call("POST", f"/v1/keys/{other}/encrypt", {"plaintext": B(b"x")},
                       role=SVC)[2]
    ct = token["ciphertext"]
    tampered = ct[:-4] + ("AAAA" if not ct.endswith("AAAA") else "BBBB")
    results = batch(srv, key, "decrypt", [
        {"ciphertext": ct, "aad": B(b"a")}, {"ciphertext": ct},  # wrong (no) AAD
        {"ciphertext": tampered, "aad": B(b"a")}, {"ciphertext": foreign["ciphertext"]},
        {"ciphertext": "fhsm:v9:AAAA"}, {"ciphertext": ct, "aad": B(b"a")}])
    assert codes(results) == ["ok", "bad_request", "bad_request", "bad_request", "bad_request",
                              "ok"]
    assert base64.b64decode(results[5]["plaintext"]) == b"secret"
    # the opaque failure: the messages a request of its own gets, nothing more
    assert {r["error"]["message"] for r in results[1:5]} <= {"decryption failed",
                                                             "malformed ciphertext"}


@pytest.mark.parametrize("algorithm", ["ec-p256", "rsa-2048"])
def test_sign_and_verify_batches(srv: LiveServer, algorithm: str) -> None:
    key = create(srv, algorithm, "sign")
    signed = batch(srv, key, "sign", [{"message": B(b"m1")}, {"message": B(b"m2"),
                                                              "digest": B(b"d" * 32)},
                                      {"digest": B(b"\x01" * 32)}, {"algorithm": "md5"}])
    assert codes(signed) == ["ok", "bad_request", "ok", "bad_request"]
    sig = signed[0]["signature"]
    verified = batch(srv, key, "verify", [
        {"message": B(b"m1"), "signature": sig}, {"message": B(b"m2"), "signature": sig},
        {"digest": B(b"\x01" * 32), "signature": signed[2]["signature"]},
        {"message": B(b"m1"), "signature": sig, "key_version": 2},
        {"message": B(b"m1")}])
    assert codes(verified) == ["ok", "ok", "ok", "conflict", "bad_request"]
    assert [r.get("valid") for r in verified[:3]] == [True, False, True]


def test_sign_batches_run_on_the_worker_pool_and_encrypt_batches_on_the_loop(
        srv: LiveServer) -> None:
    from ferrohsm.api.handlers.crypto import is_batch
    from ferrohsm.api.http import Headers, Request

    def request(op: str, body: bytes) -> Request:
        return Request("POST", f"/v1/keys/k/{op}", f"/v1/keys/k/{op}", {}, Headers(), body,
                       "127.0.0.1", 1, None, "rid", 0.0)
    app = srv.rt.app
    assert not app.runs_inline(request("sign", b' { "batch" : [{"message": "bQ=="}]}'))
    assert not app.runs_inline(request("verify", b'{"batch":[]}'))
    assert app.runs_inline(request("sign", b'{"message": "bQ=="}'))
    assert app.runs_inline(request("encrypt", b'{"batch":[{"plaintext": "bQ=="}]}'))
    assert is_batch(request("sign", b'{"batch": [1]}'))


def test_a_tag_scoped_token_per_item(srv: LiveServer) -> None:
    """The key outside the token's tags does not exist for it, item by item, exactly as for a
    request of its own (404, the message of a missing key); the record names the key."""
    prod, dev = create(srv, tags=["prod"]), create(srv, tags=["dev"])
    scoped = srv.token(SVC, "batch-scoped", tags=["prod"])
    items = [{"plaintext": B(b"a")}, {"plaintext": B(b"b")}]
    assert codes(batch(srv, prod, "encrypt", items, role=None, token=scoped)) == ["ok", "ok"]
    rid = f"scope-{uuid.uuid4().hex}"
    hidden = batch(srv, dev, "encrypt", items, role=None, token=scoped, rid=rid)
    missing = batch(srv, "no-such-key-anywhere", "encrypt", items, role=None, token=scoped)
    assert codes(hidden) == codes(missing) == ["not_found", "not_found"]
    assert hidden[0]["error"]["message"] == missing[0]["error"]["message"]
    [record] = records_of(srv, rid)
    assert (record["outcome"], record["key_id"]) == ("denied", dev)
    assert record["details"]["batch_items"] == "0-1" and "tags do not cover" in record["message"]


def test_a_revoked_key_refuses_encrypt_items_and_still_decrypts(srv: LiveServer) -> None:
    key = create(srv)
    ct = batch(srv, key, "encrypt", [{"plaintext": B(b"before")}])[0]["ciphertext"]
    assert srv.call("POST", f"/v1/keys/{key}/revoke", {"reason": "batch test"})[0] == 200
    rid = f"revoked-{uuid.uuid4().hex}"
    refused = batch(srv, key, "encrypt", [{"plaintext": B(b"x")}] * 3, rid=rid)
    assert codes(refused) == ["conflict"] * 3
    [record] = records_of(srv, rid)
    assert record["outcome"] == "error" and record["details"]["batch_items"] == "0-2"
    assert record["key_id"] == key and record["message"].startswith("3 batch items refused: 409")
    back = batch(srv, key, "decrypt", [{"ciphertext": ct}])
    assert base64.b64decode(back[0]["plaintext"]) == b"before"


def test_rotation_between_batches_keeps_old_items_readable(srv: LiveServer) -> None:
    key = create(srv)
    old = batch(srv, key, "encrypt", [{"plaintext": B(b"v1")}])[0]
    assert srv.call("POST", f"/v1/keys/{key}/rotate", {})[0] == 200
    new = batch(srv, key, "encrypt", [{"plaintext": B(b"v2")}])[0]
    assert (old["key_version"], new["key_version"]) == (1, 2)
    rid = f"versions-{uuid.uuid4().hex}"
    back = batch(srv, key, "decrypt", [{"ciphertext": old["ciphertext"]},
                                       {"ciphertext": new["ciphertext"]}], rid=rid)
    assert [r["key_version"] for r in back] == [1, 2]
    by_version = {r["key_version"]: r["details"]["batch_items"] for r in records_of(srv, rid)}
    assert by_version == {1: "0", 2: "1"}


def test_the_maximum_the_empty_batch_and_malformed_batches(srv: LiveServer) -> None:
    key = create(srv)
    item = {"plaintext": B(b"x")}
    assert len(batch(srv, key, "encrypt", [item] * 50)) == 50
    [too_many] = batch(srv, key, "encrypt", [item] * 51, status=400)
    assert too_many["error"]["code"] == "bad_request"
    assert "at most 50 items" in too_many["error"]["message"]
    [empty] = batch(srv, key, "encrypt", [], status=400)
    assert empty["error"]["code"] == "bad_request"
    for body in ({"batch": {"plaintext": B(b"x")}}, {"batch": "x"},
                 {"batch": [item], "plaintext": B(b"x")}):
        status, _, reply = srv.call("POST", f"/v1/keys/{key}/encrypt", body, role=SVC)
        assert status == 400 and reply["error"]["code"] == "bad_request", reply
    # "batch": null is no batch: a single request, which has no member "batch"
    status, _, reply = srv.call("POST", f"/v1/keys/{key}/encrypt", {"batch": None}, role=SVC)
    assert status == 400 and reply["error"]["code"] == "bad_request"
    # an item over the input limit is that item's 413
    results = batch(srv, key, "encrypt", [{"plaintext": B(b"x" * 70_000)}, item])
    assert codes(results) == ["payload_too_large", "ok"]


def test_a_role_that_never_encrypts_is_refused_whole(srv: LiveServer) -> None:
    key = create(srv)
    [reply] = batch(srv, key, "encrypt", [{"plaintext": B(b"x")}], role="administrator",
                    status=403)
    assert reply["error"]["code"] == "forbidden"


def test_dual_control_per_item(srv: LiveServer) -> None:
    """An item under an approval rule is parked with its own approval; once approved, the
    batch repeated with X-Approval-ID runs the item whose arguments were approved."""
    dual = create(srv, tags=["dual"])
    svc = srv.token(SVC, "batch-dual")
    items = [{"plaintext": B(b"approve me")}]
    [parked] = batch(srv, dual, "encrypt", items, role=None, token=svc)
    assert parked["error"]["code"] == "approval_required"
    approval = parked["approval"]
    assert approval["state"] == "pending" and approval["key_id"] == dual
    status, _, voted = srv.call("POST", f"/v1/approvals/{approval['id']}/approve", {},
                                token=srv.token("operator", "batch-approver"))
    assert status == 200 and voted["state"] == "approved", voted
    [done] = batch(srv, dual, "encrypt", items, role=None, token=svc,
                   headers={"X-Approval-ID": approval["id"]})
    assert done["key_id"] == dual
    [again] = batch(srv, dual, "encrypt", items, role=None, token=svc,
                    headers={"X-Approval-ID": approval["id"]})
    assert again["error"]["code"] in ("forbidden", "conflict")  # executed: runs once


def test_rate_limit_counts_each_item(tmp_path: Path) -> None:
    """A batch of n spends n tokens: what the bucket holds is served, the rest 429 per item,
    and the next request finds the bucket empty."""
    srv = LiveServer(tmp_path, overrides={("rate_limit", "service_requests_per_second"): 0.01,
                                          ("rate_limit", "service_burst"): 10})
    try:
        key = create(srv)
        svc = srv.token(SVC, "batch-limited")
        rid = f"limit-{uuid.uuid4().hex}"
        results = batch(srv, key, "encrypt", [{"plaintext": B(b"x")}] * 15, role=None,
                        token=svc, rid=rid)
        assert codes(results) == ["ok"] * 10 + ["rate_limited"] * 5
        assert "retry in" in results[-1]["error"]["message"]
        by_outcome = {r["outcome"]: r["details"]["batch_items"] for r in records_of(srv, rid)}
        assert by_outcome == {"success": "0-9", "denied": "10-14"}
        status, headers, _ = srv.call("POST", f"/v1/keys/{key}/encrypt",
                                      {"plaintext": B(b"x")}, token=svc, role=None)
        assert status == 429 and "retry-after" in headers
        other = srv.token(SVC, "batch-unlimited")  # another actor, another bucket
        assert codes(batch(srv, key, "encrypt", [{"plaintext": B(b"x")}] * 3, role=None,
                           token=other)) == ["ok"] * 3
    finally:
        srv.close()


def test_a_long_list_of_positions_is_split_over_records(srv: LiveServer) -> None:
    key = create(srv)
    items: list[Any] = [{"plaintext": B(b"x")} if i % 2 else 0 for i in range(50)]
    rid = f"split-{uuid.uuid4().hex}"
    results = batch(srv, key, "encrypt", items, rid=rid)
    assert codes(results) == ["bad_request", "ok"] * 25
    records = records_of(srv, rid)
    assert sorted(positions(records)) == list(range(50))
    assert all(len(r["details"]["batch_items"]) <= 200 for r in records)


# ---- data keys ----

@pytest.mark.parametrize("bits", [128, 192, 256])
def test_a_data_key_decrypts_to_itself(srv: LiveServer, bits: int) -> None:
    key = create(srv)
    rid = f"dk-{uuid.uuid4().hex}"
    status, _, made = srv.call("POST", f"/v1/keys/{key}/data-key", {"bits": bits}, role=SVC,
                               headers={"X-Request-ID": rid})
    assert status == 200, made
    assert set(made) == {"plaintext", "ciphertext", "key_id", "key_version"}
    data_key = base64.b64decode(made["plaintext"])
    assert len(data_key) == bits // 8 and made["ciphertext"].startswith("fhsm:v1:")
    status, _, back = srv.call("POST", f"/v1/keys/{key}/decrypt",
                               {"ciphertext": made["ciphertext"]}, role=SVC)
    assert status == 200 and base64.b64decode(back["plaintext"]) == data_key
    [record] = records_of(srv, rid)
    assert (record["action"], record["outcome"], record["key_id"]) == (
        "crypto.encrypt", "success", key)
    assert record["message"] == f"generated a {bits}-bit data key (plaintext returned)"
    assert made["plaintext"] not in str(record)


def test_a_data_key_without_plaintext_and_with_aad(srv: LiveServer) -> None:
    key = create(srv)
    status, _, made = srv.call("POST", f"/v1/keys/{key}/data-key",
                               {"include_plaintext": False, "aad": B(b"tenant-7")}, role=SVC)
    assert status == 200 and "plaintext" not in made and made["key_version"] == 1
    status, _, _ = srv.call("POST", f"/v1/keys/{key}/decrypt",
                            {"ciphertext": made["ciphertext"]}, role=SVC)
    assert status == 400  # the AAD is bound
    status, _, back = srv.call("POST", f"/v1/keys/{key}/decrypt",
                               {"ciphertext": made["ciphertext"], "aad": B(b"tenant-7")},
                               role=SVC)
    assert status == 200 and len(base64.b64decode(back["plaintext"])) == 32
    # default body: 256 bits with plaintext
    status, _, default = srv.call("POST", f"/v1/keys/{key}/data-key", {}, role=SVC)
    assert status == 200 and len(base64.b64decode(default["plaintext"])) == 32


@pytest.mark.parametrize("body,status,code", [
    ({"bits": 100}, 400, "bad_request"),
    ({"bits": "256"}, 400, "bad_request"),
    ({"include_plaintext": "no"}, 400, "bad_request"),
    ({"size": 32}, 400, "bad_request"),
])
def test_data_key_bad_input(srv: LiveServer, body: dict[str, Any], status: int,
                            code: str) -> None:
    key = create(srv)
    got, _, reply = srv.call("POST", f"/v1/keys/{key}/data-key", body, role=SVC)
    assert got == status and reply["error"]["code"] == code


def test_data_key_needs_an_encrypt_key_and_a_service_token_in_scope(srv: LiveServer) -> None:
    wrap_key, sign_key = create(srv, usage="wrap"), create(srv, "ec-p256", "sign")
    for key in (wrap_key, sign_key):
        assert srv.call("POST", f"/v1/keys/{key}/data-key", {}, role=SVC)[0] == 409
    dev = create(srv, tags=["dev"])
    scoped = srv.token(SVC, "dk-scoped", tags=["prod"])
    assert srv.call("POST", f"/v1/keys/{dev}/data-key", {}, token=scoped, role=None)[0] == 404
    assert srv.call("POST", f"/v1/keys/{dev}/data-key", {}, role="operator")[0] == 403
    revoked = create(srv)
    srv.call("POST", f"/v1/keys/{revoked}/revoke", {})
    assert srv.call("POST", f"/v1/keys/{revoked}/data-key", {}, role=SVC)[0] == 409


def test_no_item_is_answered_when_the_records_cannot_be_written(tmp_path: Path) -> None:
    """Fail closed, on the loop (encrypt) and on the worker pool (sign) alike: once the audit
    log refuses records, a batch answers 503 and no item's result leaves."""
    srv = LiveServer(tmp_path, key_store="filesystem")
    try:
        enc, sig = create(srv), create(srv, "ec-p256", "sign")
        assert codes(batch(srv, enc, "encrypt", [{"plaintext": B(b"x")}])) == ["ok"]
        srv.rt.audit.fail_closed("batch test: the audit disk is gone")
        for key, op, item in ((enc, "encrypt", {"plaintext": B(b"secret")}),
                              (sig, "sign", {"message": B(b"m")})):
            [reply] = batch(srv, key, op, [item, item], status=503)
            assert set(reply) == {"error"} and reply["error"]["code"] == "unavailable"
    finally:
        srv.close()


def test_a_batch_to_a_reference_no_key_can_have_is_404_not_200(srv: LiveServer) -> None:
    """Items that all fail their own checks never look the key up: a reference no key can
    have (not an id, not a name) is answered 404 for the whole batch, as a single request is,
    not 200 with an error per item (found by schemathesis: a schema-violating request
    accepted)."""
    bad = "%E0%A4%AA%20x"  # a space and a Devanagari letter: outside the name pattern
    reply = batch(srv, bad, "encrypt", [7, []], status=404)[0]
    assert reply["error"]["code"] == "not_found"


def test_a_transit_batch_refused_for_its_size_spends_nothing(tmp_path: Path) -> None:
    """A Vault batch is paid for whole or refused whole (429): refused, it took only the
    request's own token, so the actor's next requests are served (they found the bucket
    emptied by the refused batch)."""
    srv = LiveServer(tmp_path, overrides={("rate_limit", "service_requests_per_second"): 0.01,
                                          ("rate_limit", "service_burst"): 10})
    try:
        create(srv, name="paid-whole")
        svc = srv.token(SVC, "transit-batcher")

        def single() -> int:
            return srv.call("POST", "/v1/transit/encrypt/paid-whole", {"plaintext": B(b"x")},
                            token=svc, role=None)[0]
        assert [single() for _ in range(5)] == [200] * 5  # 5 of the burst of 10 left
        body = {"batch_input": [{"plaintext": B(b"x")}] * 8}
        status, _, _ = srv.call("POST", "/v1/transit/encrypt/paid-whole", body, token=svc,
                                role=None)
        assert status == 429  # 8 wanted, 5 held: none spent but the request's own
        assert [single() for _ in range(5)] == [200] * 4 + [429]
    finally:
        srv.close()


def test_a_transit_batch_larger_than_the_burst_is_a_400_not_an_endless_429(
        tmp_path: Path) -> None:
    """Paid for whole, a batch above the actor's burst could never be served: a 429 with
    Retry-After 1 had clients retry it forever."""
    srv = LiveServer(tmp_path, overrides={("rate_limit", "service_requests_per_second"): 1.0,
                                          ("rate_limit", "service_burst"): 10})
    try:
        create(srv, name="too-big")
        svc = srv.token(SVC, "transit-big-batcher")
        status, _, body = srv.call("POST", "/v1/transit/encrypt/too-big",
                                   {"batch_input": [{"plaintext": B(b"x")}] * 11}, token=svc,
                                   role=None)
        assert status == 400 and "split it into batches of at most 10" in body["errors"][0]
        status, _, _ = srv.call("POST", "/v1/transit/encrypt/too-big",
                                {"batch_input": [{"plaintext": B(b"x")}] * 8}, token=svc,
                                role=None)
        assert status == 200
    finally:
        srv.close()


def test_an_item_that_repeats_a_member_is_its_own_error(srv: LiveServer) -> None:
    key = create(srv)
    raw = (b'{"batch":[{"plaintext":"QQ=="},{"plaintext":"QQ==","plaintext":"Qg=="},'
           b'{"plaintext":"Qw==","aad":{"a":1,"a":2}}]}')
    code, _, reply = srv.call("POST", f"/v1/keys/{key}/encrypt", raw=raw, role=SVC)
    assert code == 200, reply
    assert codes(reply["results"]) == ["ok", "bad_request", "bad_request"]
    assert "duplicate JSON member 'plaintext'" in reply["results"][1]["error"]["message"]
    # a repetition outside the items is the whole body's: refused whole, as before
    for whole in (b'{"batch":[{"plaintext":"QQ=="}],"batch":[]}',
                  b'{"plaintext":"QQ==","aad":"QQ==","aad":"Qg=="}'):
        code, _, reply = srv.call("POST", f"/v1/keys/{key}/encrypt", raw=whole, role=SVC)
        assert code == 400 and "duplicate JSON member" in reply["error"]["message"], reply


def test_a_null_batch_member_is_absent(srv: LiveServer) -> None:
    key = create(srv)
    code, _, reply = srv.call("POST", f"/v1/keys/{key}/encrypt",
                              {"batch": None, "plaintext": B(b"A")}, role=SVC)
    assert code == 200 and reply["ciphertext"].startswith("fhsm:v1:"), reply


@pytest.mark.parametrize("path", ["encrypt?foo=1", "verify?key_version=7", "rotate?x=1&x=2"])
def test_a_route_without_query_parameters_refuses_any(srv: LiveServer, path: str) -> None:
    key = create(srv, "ec-p256", "sign") if "verify" in path else create(srv)
    body: dict[str, Any] = {"plaintext": B(b"A")} if "encrypt" in path else {}
    if "verify" in path:
        body = {"message": B(b"m"), "signature": B(b"s")}
    role = "administrator" if "rotate" in path else SVC  # a role the route allows
    code, _, reply = srv.call("POST", f"/v1/keys/{key}/{path}", body, role=role)
    assert code == 400 and "unknown query parameter" in reply["error"]["message"], reply
    for get in (f"/v1/keys/{key}?foo=1", "/v1/whoami?foo=1"):
        assert srv.call("GET", get)[0] == 400
    assert srv.call("GET", f"/v1/keys/{key}")[0] == 200


def test_invalid_json_says_where(srv: LiveServer) -> None:
    key = create(srv)
    code, _, reply = srv.call("POST", f"/v1/keys/{key}/encrypt", raw=b'{"plaintext":"aGk=",}',
                              role=SVC)
    assert code == 400 and reply["error"]["message"] == (
        "request body is not valid JSON: Expecting property name enclosed in double quotes "
        "(line 1, column 21)"), reply
    code, _, reply = srv.call("GET", "/v1/keys?state=bogus")
    assert code == 400 and "active" in reply["error"]["message"], reply


def test_a_number_beyond_int_digits_is_named(srv: LiveServer) -> None:
    key = create(srv)
    raw = b'{"plaintext":"QQ==","aad":' + b"9" * 5000 + b"}"
    code, _, reply = srv.call("POST", f"/v1/keys/{key}/encrypt", raw=raw, role=SVC)
    assert code == 400 and "too many digits" in reply["error"]["message"], reply
