"""The Vault transit surface where a Vault client's habits meet FerroHSM's rules: batches under
dual control, options checked before items run, the spellings Vault's own tools send, and the
order of checks (permission before parameters), against a real server over TLS.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from live import LiveServer
from test_batch import records_of

POLICY = """
[policy.tags.dc]
approvals_required = 1
approval_actions = ["decrypt"]

[policy.tags.pub]
approvals_required = 1
approval_actions = ["public-key"]
"""


def B(data: bytes) -> str:  # noqa: N802  one letter, like b"": a base64 literal in bodies
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("transit-edges"), key_store="filesystem",
                        config_text=POLICY)
    yield server
    server.close()


def vault(srv: LiveServer, method: str, path: str, body: Any = None, *, role: str = "service",
          headers: dict[str, str] | None = None, raw: bytes | None = None
          ) -> tuple[int, dict[str, Any]]:
    """A call as a Vault client makes it: X-Vault-Token, not Authorization."""
    hdrs = {"X-Vault-Token": srv.token(role), **(headers or {})}
    status, _, answer = srv.call(method, path, body, role=None, headers=hdrs, raw=raw)
    return status, answer


def create(srv: LiveServer, key_type: str = "aes256-gcm96", tags: list[str] | None = None
           ) -> str:
    name = f"edge-{secrets.token_hex(4)}"
    if tags:  # tags are given at creation only, natively
        status, _, key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                       "usage": "encrypt", "name": name,
                                                       "tags": tags})
        assert status == 201, key
        return name
    assert vault(srv, "POST", f"/v1/transit/keys/{name}", {"type": key_type},
                 role="operator")[0] == 200
    return name


def test_an_approval_that_covers_one_batch_item_fails_only_the_others(srv: LiveServer) -> None:
    """Item 0 redeems the approval and decrypts; item 1 (other arguments) is refused as ITS
    error, not by failing the request after item 0's approval was spent and its plaintext
    recorded as decrypted."""
    name = create(srv, tags=["dc"])
    first = vault(srv, "POST", f"/v1/transit/encrypt/{name}", {"plaintext": B(b"one")})
    second = vault(srv, "POST", f"/v1/transit/encrypt/{name}", {"plaintext": B(b"two")})
    c1, c2 = first[1]["data"]["ciphertext"], second[1]["data"]["ciphertext"]
    status, parked = vault(srv, "POST", f"/v1/transit/decrypt/{name}", {"ciphertext": c1})
    assert status == 400 and "dual control" in parked["errors"][0], parked
    approval = srv.call("GET", "/v1/approvals?state=pending")[2]["approvals"][-1]["id"]
    voted = srv.call("POST", f"/v1/approvals/{approval}/approve", {},
                     token=srv.token("operator", "edge-approver"))
    assert voted[0] == 200, voted
    rid = f"edge-{secrets.token_hex(6)}"
    status, answer = vault(srv, "POST", f"/v1/transit/decrypt/{name}",
                           {"batch_input": [{"ciphertext": c1}, {"ciphertext": c2}]},
                           headers={"X-Approval-ID": approval, "X-Request-ID": rid})
    assert status == 400, answer
    results = answer["data"]["batch_results"]
    assert results[0] == {"plaintext": B(b"one")}
    assert "different request" in results[1]["error"], results
    outcomes = sorted((r["action"], r["outcome"]) for r in records_of(srv, rid))
    assert ("crypto.decrypt", "success") in outcomes and ("approval.executed", "success") \
        in outcomes, outcomes


def test_partial_failure_response_code_is_checked_before_any_item_runs(
        srv: LiveServer) -> None:
    name = create(srv)
    for bad in (100, "abc", 600):
        rid = f"edge-{secrets.token_hex(6)}"
        status, answer = vault(srv, "POST", f"/v1/transit/encrypt/{name}", {
            "partial_failure_response_code": bad,
            "batch_input": [{"plaintext": B(b"a")}, {"plaintext": "!!"}]},
            headers={"X-Request-ID": rid})
        assert status == 400 and "from 200 to 599" in answer["errors"][0], answer
        assert not [r for r in records_of(srv, rid) if r["outcome"] == "success"], bad


def test_a_sign_batch_with_an_escaped_member_name_runs_on_the_worker_pool(
        srv: LiveServer) -> None:
    from ferrohsm.api.http import Headers, Request

    def request(body: bytes) -> Request:
        return Request("POST", "/v1/keys/k/sign", "/v1/keys/k/sign", {}, Headers(), body,
                       "127.0.0.1", 1, None, "rid", 0.0)
    for body in (b'{"\\u0062atch": [{"message": "bQ=="}]}',
                 b'{"b\\u0061tch": []}', b'{"scheme": null, "batch": []}'):
        assert not srv.rt.app.runs_inline(request(body)), body
    assert srv.rt.app.runs_inline(request(b'{"message": "bQ==", "scheme": null}'))


def test_the_listing_spellings_of_vaults_cli_and_go_client(srv: LiveServer) -> None:
    name = create(srv)
    for method, path in (("LIST", "/v1/transit/keys/"), ("GET", "/v1/transit/keys/?list=true"),
                         ("GET", "/v1/transit/keys?list=true&foo=1"),
                         ("LIST", "/v1/transit/keys")):
        status, answer = vault(srv, method, path, role="operator")
        assert status == 200 and name in answer["data"]["keys"], (path, answer)


def test_bodies_are_json_whatever_content_type_they_declare(srv: LiveServer) -> None:
    """curl --data (Vault's documented examples) declares a form; Vault reads JSON anyway."""
    name = create(srv)
    for declared in ("application/x-www-form-urlencoded", "text/plain"):
        status, answer = vault(srv, "POST", f"/v1/transit/encrypt/{name}",
                               raw=json.dumps({"plaintext": B(b"x")}).encode(),
                               headers={"Content-Type": declared})
        assert status == 200 and answer["data"]["ciphertext"].startswith("vault:v1:"), answer
    status, answer = vault(srv, "POST", f"/v1/transit/encrypt/{name}", raw=b"plaintext=eA==",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and "form-encoded" in answer["errors"][0], answer


def test_permission_is_checked_before_sign_options(srv: LiveServer) -> None:
    """As Vault checks its ACL first: a role that may not sign hears 403 whatever the options,
    recorded as a refused sign, and a sign is not also recorded as a read of the key."""
    name = create(srv, "ecdsa-p256")
    rid = f"edge-{secrets.token_hex(6)}"
    status, answer = vault(srv, "POST", f"/v1/transit/sign/{name}",
                           {"input": B(b"m"), "hash_algorithm": "sha2-512"}, role="auditor",
                           headers={"X-Request-ID": rid})
    assert status == 403 and answer["errors"][0].startswith("permission denied"), answer
    assert [(r["action"], r["outcome"]) for r in records_of(srv, rid)] == [
        ("crypto.sign", "denied")]
    rid = f"edge-{secrets.token_hex(6)}"
    status, answer = vault(srv, "POST", f"/v1/transit/sign/{name}", {"input": B(b"m")},
                           headers={"X-Request-ID": rid})
    assert status == 200, answer
    assert [r["action"] for r in records_of(srv, rid)] == ["crypto.sign"]


def test_messages_a_vault_client_can_act_on(srv: LiveServer) -> None:
    name = create(srv)
    status, _, answer = srv.call("POST", f"/v1/transit/encrypt/{name}", {"plaintext": "eA=="},
                                 role=None, headers={"X-Vault-Token": " "})
    assert status == 403 and "empty X-Vault-Token" in answer["errors"][0], answer
    status, answer = vault(srv, "POST", "/v1/transit/random/-1")
    assert status == 400 and "bytes must be an integer" in answer["errors"][0], answer
    big = json.dumps({"plaintext": "A" * (2 << 20)}).encode()
    status, answer = vault(srv, "POST", f"/v1/transit/encrypt/{name}", raw=big)
    assert status == 413 and "prehashed" in answer["errors"][0], answer
    assert '"digest" member' not in answer["errors"][0]


def test_base64_with_line_breaks_and_versions_with_leading_zeros(srv: LiveServer) -> None:
    """What Vault reads (Go's StdEncoding skips '\\r' and '\\n'; strconv.Atoi reads "v01" as
    1) is read here too: base64 wrapped at 76 columns, a ciphertext with a file's newline."""
    name, signer = create(srv), create(srv, "ecdsa-p256")
    wrapped = base64.encodebytes(b"A" * 100).decode()
    status, out = vault(srv, "POST", f"/v1/transit/encrypt/{name}",
                        {"plaintext": wrapped, "associated_data": B(b"aad") + "\r\n"})
    assert status == 200, out
    ciphertext = out["data"]["ciphertext"]
    for spelled in (ciphertext + "\n", ciphertext.replace("vault:v1:", "vault:v01:"),
                    ciphertext[:40] + "\r\n" + ciphertext[40:] + "\r\n"):
        status, out = vault(srv, "POST", f"/v1/transit/decrypt/{name}",
                            {"ciphertext": spelled, "associated_data": B(b"aad")})
        assert status == 200 and out["data"]["plaintext"] == B(b"A" * 100), out
    status, out = vault(srv, "POST", f"/v1/transit/rewrap/{name}",
                        {"ciphertext": ciphertext + "\n", "associated_data": B(b"aad")})
    assert status == 200, out
    status, out = vault(srv, "POST", f"/v1/transit/sign/{signer}", {"input": wrapped})
    assert status == 200, out
    signature = out["data"]["signature"]
    status, out = vault(srv, "POST", f"/v1/transit/verify/{signer}", {
        "input": wrapped, "signature": signature.replace("v1:", "v01:") + "\n"})
    assert status == 200 and out["data"]["valid"] is True, out
    # still refused: any other character, bad padding, a sign or v0; natively, any of it
    for bad in (ciphertext + " ", ciphertext + "=", ciphertext.replace("v1:", "v+1:"),
                ciphertext.replace("v1:", "v0:")):
        status, out = vault(srv, "POST", f"/v1/transit/decrypt/{name}",
                            {"ciphertext": bad, "associated_data": B(b"aad")})
        assert status == 400 and "malformed ciphertext" in out["errors"][0], (bad, out)
    status, out = vault(srv, "POST", f"/v1/transit/encrypt/{name}", {"plaintext": "QQ==\t"})
    assert status == 400 and "plaintext must be standard base64" in out["errors"][0], out
    status, _, native = srv.call("POST", f"/v1/keys/{name}/decrypt",
                                 {"ciphertext": ciphertext + "\n", "aad": B(b"aad")},
                                 role="service")
    assert status == 400 and native["error"]["message"] == "malformed ciphertext", native


@pytest.mark.parametrize(("method", "path", "body", "role", "status", "message", "action"), [
    ("POST", "decrypt/{k}", {"ciphertext": "vault:v1:AAAA"}, "service", 400,
     "encryption key not found", "crypto.decrypt"),
    ("POST", "rewrap/{k}", {"ciphertext": "vault:v1:AAAA"}, "service", 400,
     "encryption key not found", "crypto.decrypt"),
    ("POST", "datakey/plaintext/{k}", {}, "service", 400, "encryption key not found",
     "crypto.encrypt"),
    ("POST", "sign/{k}", {"input": "aGk="}, "service", 400, "signing key not found",
     "crypto.sign"),
    ("POST", "verify/{k}/sha2-256", {"input": "aGk=", "signature": "vault:v1:AAAA"}, "service",
     400, "signature verification key not found", "crypto.verify"),
    ("POST", "keys/{k}/rotate", {}, "operator", 400, "key not found", "key.rotate"),
    ("GET", "keys/{k}", None, "operator", 404, "no such key", "key.read"),
    ("POST", "encrypt/{k}", {"plaintext": "aGk="}, "service", 404, "no such key",
     "crypto.encrypt"),
])
def test_a_missing_key_is_answered_in_vaults_words(
        srv: LiveServer, method: str, path: str, body: Any, role: str, status: int,
        message: str, action: str) -> None:
    """Vault answers a missing key 400 with its own words per endpoint (hvac: InvalidRequest);
    only reading a key is 404 (and encrypt, which Vault would create the key on). A key outside
    a tag-scoped token's tags gets the very same answer; the audit record says what it was."""
    hidden = create(srv, tags=["other"]) if role == "service" else None
    answers = []
    for name, tags in ((f"none-{secrets.token_hex(4)}", None), (hidden, ["prod"])):
        if name is None:
            continue
        rid = f"missing-{secrets.token_hex(6)}"
        token = srv.token(role, "missing-key-probe", tags=tags) if tags else srv.token(role)
        got, _, answer = srv.call(method, f"/v1/transit/{path.format(k=name)}", body,
                                  role=None, headers={"X-Vault-Token": token,
                                                      "X-Request-ID": rid})
        answers.append((got, answer))
        assert [(r["action"], r["outcome"]) for r in records_of(srv, rid)] == [
            (action, "denied" if tags else "error")], records_of(srv, rid)
    assert answers[0] == (status, {"errors": [message]}), answers
    assert all(a == answers[0] for a in answers), answers


def test_vaults_weakly_typed_defaults_are_taken(srv: LiveServer) -> None:
    """``auto_rotate_period: "0s"`` (Vault's "disabled") creates the key, ``prehashed: 1`` is
    true; a real period and a number that is no boolean are still refused."""
    for zero in ("0s", "0m", "0h"):
        name = f"edge-{secrets.token_hex(4)}"
        status, out = vault(srv, "POST", f"/v1/transit/keys/{name}",
                            {"type": "ecdsa-p256", "auto_rotate_period": zero}, role="operator")
        assert status == 200 and out["data"]["auto_rotate_period"] == 0, out
    status, out = vault(srv, "POST", f"/v1/transit/keys/edge-{secrets.token_hex(4)}",
                        {"auto_rotate_period": "24h"}, role="operator")
    assert status == 400 and "auto_rotate_period" in out["errors"][0], out
    digest = B(b"\0" * 32)
    status, out = vault(srv, "POST", f"/v1/transit/sign/{name}",
                        {"input": digest, "prehashed": 1})
    assert status == 200, out
    status, checked = vault(srv, "POST", f"/v1/transit/verify/{name}", {
        "input": digest, "prehashed": True, "signature": out["data"]["signature"]})
    assert status == 200 and checked["data"]["valid"] is True, checked
    status, out = vault(srv, "POST", f"/v1/transit/sign/{name}",
                        {"input": digest, "prehashed": 2})
    assert status == 400 and out["errors"] == ["prehashed must be a boolean"], out


def test_a_name_outside_ferrohsms_rule_is_told_what_is_allowed(srv: LiveServer) -> None:
    """Transit keys follow the native name rule (not Vault's, which takes a leading '_' or a
    UUID-shaped name): the refusal says which characters are allowed."""
    for name in ("user@example.com", "_lead", "k" * 129, "01900000-0000-7000-8000-000000000001"):
        status, out = vault(srv, "POST", f"/v1/transit/keys/{name}", {}, role="operator")
        assert status == 400 and out["errors"] == [
            "name must be 1-128 characters of letters, digits, '.', '_' or '-', start with a "
            "letter or digit, and not look like a UUID"], (name, out)


def test_a_repeated_member_inside_an_ignored_batch_member_is_refused(srv: LiveServer) -> None:
    """On a Vault route only batch_input holds items; a "batch" member is an ignored one, and
    a repeated name inside it is refused like any other (not forgiven as a native item)."""
    raw = b'{"plaintext":"aGk=","batch":[{"a":1,"a":2}]}'
    status, reply = vault(srv, "POST", f"/v1/transit/encrypt/{create(srv)}", raw=raw)
    assert status == 400, reply


# ---- what an outside tester found with hvac, curl and Vault's documentation (P) ---------------

def test_a_key_whose_public_key_needs_an_approval_is_read_without_it(srv: LiveServer) -> None:
    """Reading it parked an approval for its public key, and the approval then given was
    refused ("key.read never needs one"): hvac's read_key failed for good. Vault shows a
    key's info whatever its policies; FerroHSM shows it without the public key."""
    name = f"pub-{secrets.token_hex(4)}"
    assert srv.call("POST", "/v1/keys", {"algorithm": "ec-p256", "usage": "sign", "name": name,
                                         "tags": ["pub"]})[0] == 201
    status, answer = vault(srv, "GET", f"/v1/transit/keys/{name}")
    assert status == 200, answer
    [entry] = answer["data"]["keys"].values()
    assert entry["name"] == "P-256" and "public_key" not in entry
    _, _, pending = srv.call("GET", "/v1/approvals?state=pending&limit=1000")
    assert not [a for a in pending["approvals"] if a["key_name"] == name]


def test_permission_is_checked_before_parameters(srv: LiveServer) -> None:
    """An Auditor's encrypt of bad base64 was a 400 recorded with no key, its well-formed one
    a 403: Vault checks its ACL before any parameter, and so does this surface now."""
    name = create(srv)
    for path, body in ((f"/v1/transit/encrypt/{name}", {"plaintext": "!!"}),
                       (f"/v1/transit/encrypt/{name}", {"plaintext": B(b"x"), "context": "YQ=="}),
                       (f"/v1/transit/datakey/plaintext/{name}", {"bits": 64}),
                       (f"/v1/transit/decrypt/{name}", {"ciphertext": "vault:v1:!!"}),
                       (f"/v1/transit/rewrap/{name}", {"ciphertext": "x", "context": "YQ=="}),
                       (f"/v1/transit/encrypt/{name}", {"batch_input": [{"plaintext": "!!"}]})):
        status, answer = vault(srv, "POST", path, body, role="auditor")
        assert status == 403, (path, body, answer)
        assert "errors" in answer
    assert vault(srv, "POST", f"/v1/transit/encrypt/{name}", {"plaintext": "!!"})[0] == 400


def test_response_wrapping_and_namespaces_are_refused_not_ignored(srv: LiveServer) -> None:
    """Ignored, X-Vault-Wrap-TTL gave the data key in clear where hvac expected a wrapping
    token, and X-Vault-Namespace used the root namespace's key of that name."""
    name = create(srv)
    path = f"/v1/transit/datakey/plaintext/{name}"
    status, answer = vault(srv, "POST", path, {}, headers={"X-Vault-Wrap-TTL": "60s"})
    assert status == 400 and "X-Vault-Wrap-TTL" in answer["errors"][0]
    assert "plaintext" not in json.dumps(answer)
    status, answer = vault(srv, "POST", path, {}, headers={"X-Vault-Namespace": "team-a"})
    assert status == 400 and "X-Vault-Namespace" in answer["errors"][0]
    assert vault(srv, "POST", path, {}, headers={"X-Vault-Namespace": "root/"})[0] == 200


def test_a_revoked_keys_name_is_not_answered_as_an_existing_usable_key(srv: LiveServer) -> None:
    """Creating over a revoked (or destroyed) key answered 200 "already existed" with
    supports_encryption true; the next encrypt failed."""
    name = create(srv)
    assert srv.call("POST", f"/v1/keys/{name}/revoke", {"reason": "test"})[0] == 200
    status, answer = vault(srv, "POST", f"/v1/transit/keys/{name}", {}, role="operator")
    assert status == 400 and "is revoked" in answer["errors"][0], answer
    status, answer = vault(srv, "GET", f"/v1/transit/keys/{name}")
    assert status == 200 and answer["data"]["supports_encryption"] is False


def test_vault_auth_paths_take_untyped_json_and_put(srv: LiveServer) -> None:
    """Vault's Go client writes JSON with no Content-Type, and with PUT: lookup-self answered
    415, then 405."""
    conn = srv.connect()
    try:
        conn.request("PUT", "/v1/auth/token/lookup-self", body=b"{}",
                     headers={"X-Vault-Token": srv.token("service")})
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200, answer
    assert answer["data"]["id"] or answer["data"]["display_name"]


def test_json_sent_as_curl_data_gets_its_own_mistake_named(srv: LiveServer) -> None:
    """`curl --data` declares a form; a JSON body with a duplicate member was told "form-encoded
    bodies are not read", not what is wrong with it."""
    name = create(srv)
    raw = b'{"plaintext": "aGk=", "plaintext": "aGk="}'
    status, answer = vault(srv, "POST", f"/v1/transit/encrypt/{name}", raw=raw,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and "duplicate" in answer["errors"][0], answer
    status, answer = vault(srv, "POST", f"/v1/transit/encrypt/{name}", raw=b"plaintext=aGk=",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and "form-encoded" in answer["errors"][0], answer


def test_a_batch_reference_that_is_not_a_string_is_refused(srv: LiveServer) -> None:
    """It was dropped from the result without a word: a caller matching results by
    reference lost the match (Vault refuses the request)."""
    name = create(srv)
    status, answer = vault(srv, "POST", f"/v1/transit/encrypt/{name}",
                           {"batch_input": [{"plaintext": "aGk=", "reference": 7}]})
    assert status == 400 and "'[0].reference' expected type 'string'" in answer["errors"][0]


def test_a_body_under_vaults_limit_but_over_ours_is_answered_413_after_it_is_sent(
        srv: LiveServer) -> None:
    """hvac sends a whole body before it reads the answer: a 24 MiB one (under Vault's 32 MiB
    limit) met a closed connection, a TLS error, where 2 MiB met the 413 (the server drained
    16 bodies of 1 MiB, then closed)."""
    name = create(srv)
    conn = srv.connect()
    try:
        conn.request("POST", f"/v1/transit/encrypt/{name}", body=b"{" + b" " * (24 << 20) + b"}",
                     headers={"X-Vault-Token": srv.token("service"),
                              "Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 413 and "errors" in answer
