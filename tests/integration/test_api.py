"""Every Keys and Cryptographic-operations route of docs/api.md against a real server over TLS."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live import LiveServer

from ferrohsm.api.transit import is_vault
from ferrohsm.domain.errors import Unavailable
from ferrohsm.domain.model import is_uuid


def B(data: bytes) -> str:  # noqa: N802  one letter, like b"": a base64 literal in bodies
    return base64.b64encode(data).decode()


SVC = "service"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("api"), key_store="filesystem")
    yield server
    server.close()


def create(srv: LiveServer, algorithm: str = "aes-256-gcm", usage: str = "encrypt",
           **extra: object) -> dict[str, Any]:
    status, _, key = srv.call("POST", "/v1/keys", {"algorithm": algorithm, "usage": usage, **extra})
    assert status == 201, key
    return key  # type: ignore[no-any-return]  # parsed JSON


def test_create_describe_by_id_and_name(srv: LiveServer) -> None:
    key = create(srv, name="alpha", description="first", tags=["prod", "pci"])
    assert key["state"] == "active" and key["primary_version"] == 1
    assert key["created_by"] == "administrator-user" and key["tags"] == ["prod", "pci"]
    for ref in (key["id"], "alpha"):
        status, _, same = srv.call("GET", f"/v1/keys/{ref}", role="auditor")
        assert status == 200 and same["id"] == key["id"]
    assert srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt",
                                         "name": "alpha"})[0] == 409


@pytest.mark.parametrize("body,status", [
    ({"algorithm": "des", "usage": "encrypt"}, 400),
    ({"algorithm": "aes-256-gcm", "usage": "sign"}, 400),
    ({"algorithm": "ec-p256", "usage": "encrypt"}, 400),
    ({"algorithm": "aes-256-gcm"}, 400),
    ({"algorithm": "aes-256-gcm", "usage": "encrypt", "colour": "red"}, 400),
    ({"algorithm": "aes-256-gcm", "usage": "encrypt", "tags": "prod"}, 400),
    ({"algorithm": "aes-256-gcm", "usage": "encrypt", "name": "../etc"}, 400),
    ({"algorithm": 5, "usage": "encrypt"}, 400),
])
def test_create_rejects_bad_input(srv: LiveServer, body: dict[str, Any], status: int) -> None:
    code, _, err = srv.call("POST", "/v1/keys", body)
    assert code == status and err["error"]["code"] == "bad_request"
    assert err["error"]["request_id"]


@pytest.mark.parametrize(("member", "value", "field"), [
    ("tags", ["prod", "PCI"], "tags"), ("name", "x" * 200, "name"),
    ("description", "a\u202eb", "description"), ("algorithm", "des", None),
    ("tags", "prod", "tags"), ("tags", [1], "tags"), ("description", 7, "description"),
])
def test_a_refused_member_is_named_in_field(
        srv: LiveServer, member: str, value: object, field: str | None) -> None:
    """A form can mark the box to change; a refusal about no one member has no ``field``."""
    code, _, err = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt",
                                                 member: value})
    assert code == 400 and err["error"].get("field") == field
    if value == ["prod", "PCI"]:
        assert "tag 2 ('PCI')" in err["error"]["message"]


def test_list_filters_pagination_and_etag(srv: LiveServer) -> None:
    made = [create(srv, tags=["listing"], name=f"list-{i}")["id"] for i in range(5)]
    status, headers, page = srv.call("GET", "/v1/keys?tag=listing&limit=2")
    assert status == 200 and len(page["keys"]) == 2 and page["next_page_token"]
    seen = [k["id"] for k in page["keys"]]
    token = page["next_page_token"]
    while token:
        _, _, page = srv.call("GET", f"/v1/keys?tag=listing&limit=2&page_token={token}")
        seen += [k["id"] for k in page["keys"]]
        token = page.get("next_page_token")
    assert seen == made
    etag = headers["etag"]
    for match in (etag, f"W/{etag}", f'"other", {etag}', "*"):  # the weak comparison
        assert srv.call("GET", "/v1/keys?tag=listing&limit=2",
                        headers={"If-None-Match": match})[0] == 304, match
    assert srv.call("GET", "/v1/keys?tag=listing&limit=2",
                    headers={"If-None-Match": '"other"'})[0] == 200
    _, _, prefixed = srv.call("GET", "/v1/keys?name_prefix=list-&usage=encrypt&state=active")
    assert {k["id"] for k in prefixed["keys"]} == set(made)
    for bad in ("limit=0", "limit=1001", "limit=x", "state=sleepy", "page_token=zzz", "foo=1"):
        assert srv.call("GET", f"/v1/keys?{bad}")[0] == 400, bad


def test_update_rotate_rollback(srv: LiveServer) -> None:
    key = create(srv)
    ref = key["id"]
    status, _, updated = srv.call("PATCH", f"/v1/keys/{ref}", {"description": "new words"})
    assert status == 200 and updated["description"] == "new words"
    _, _, ct1 = srv.call("POST", f"/v1/keys/{ref}/encrypt", {"plaintext": B(b"v1 data")}, role=SVC)
    status, _, rotated = srv.call("POST", f"/v1/keys/{ref}/rotate", role="operator")
    assert status == 200 and rotated["id"] == ref and rotated["primary_version"] == 2
    _, _, ct2 = srv.call("POST", f"/v1/keys/{ref}/encrypt", {"plaintext": B(b"v2")}, role=SVC)
    assert ct1["ciphertext"].startswith("fhsm:v1:") and ct2["ciphertext"].startswith("fhsm:v2:")
    _, _, out = srv.call("POST", f"/v1/keys/{ref}/decrypt", {"ciphertext": ct1["ciphertext"]},
                         role=SVC)
    assert base64.b64decode(out["plaintext"]) == b"v1 data" and out["key_version"] == 1
    status, _, back = srv.call("POST", f"/v1/keys/{ref}/rollback", {"version": 1})
    assert status == 200 and back["primary_version"] == 1
    # a version the key does not have: 409 (the key exists; the number is well-formed)
    assert srv.call("POST", f"/v1/keys/{ref}/rollback", {"version": 9})[0] == 409
    assert srv.call("POST", f"/v1/keys/{ref}/rollback", {"version": 0})[0] == 400  # range
    assert srv.call("POST", f"/v1/keys/{ref}/rollback", {"version": "1"})[0] == 400
    # a fraction a float rounds to 1 is not the integer 1; 1.0 is (JSON Schema's "integer")
    assert srv.call("POST", f"/v1/keys/{ref}/rollback",
                    raw=b'{"version": 0.99999999999999999999}')[0] == 400
    assert srv.call("POST", f"/v1/keys/{ref}/rollback", raw=b'{"version": 1.0}')[0] == 409
    _, _, described = srv.call("GET", f"/v1/keys/{ref}")
    assert [h["action"] for h in described["history"]] == ["create", "update", "rotate",
                                                           "rollback"]


def test_encrypt_decrypt_with_aad(srv: LiveServer) -> None:
    ref = create(srv)["id"]
    _, _, ct = srv.call("POST", f"/v1/keys/{ref}/encrypt",
                        {"plaintext": B(b"secret"), "aad": B(b"ctx")}, role=SVC)
    assert ct["key_id"] == ref and ct["key_version"] == 1
    ok = srv.call("POST", f"/v1/keys/{ref}/decrypt", {"ciphertext": ct["ciphertext"],
                                                      "aad": B(b"ctx")}, role=SVC)
    assert ok[0] == 200 and base64.b64decode(ok[2]["plaintext"]) == b"secret"
    wrong = srv.call("POST", f"/v1/keys/{ref}/decrypt", {"ciphertext": ct["ciphertext"],
                                                         "aad": B(b"other")}, role=SVC)
    assert wrong[0] == 400 and "secret" not in str(wrong[2])
    tampered = ct["ciphertext"][:-6] + ("AAAA==" if not ct["ciphertext"].endswith("AAAA==")
                                        else "BBBB==")
    assert srv.call("POST", f"/v1/keys/{ref}/decrypt", {"ciphertext": tampered}, role=SVC)[0] == 400
    for bad in ("fhsm:v1:!!!", "nope", "fhsm:v7:AAAA", ct["ciphertext"][:20]):
        assert srv.call("POST", f"/v1/keys/{ref}/decrypt", {"ciphertext": bad},
                        role=SVC)[0] == 400, bad
    assert srv.call("POST", f"/v1/keys/{ref}/encrypt", {"plaintext": "not base64!"},
                    role=SVC)[0] == 400
    big = B(b"x" * (64 * 1024 + 1))
    assert srv.call("POST", f"/v1/keys/{ref}/encrypt", {"plaintext": big}, role=SVC)[0] == 413


@pytest.mark.parametrize("algorithm,scheme,hash_name", [
    ("ec-p256", None, "sha256"), ("ec-p384", None, "sha384"),
    ("rsa-2048", None, "sha256"), ("rsa-2048", "rsa-pkcs1v15-sha256", "sha256"),
])
def test_sign_verify_and_openssl(srv: LiveServer, tmp_path: Path, algorithm: str,
                                 scheme: str | None, hash_name: str) -> None:
    ref = create(srv, algorithm=algorithm, usage="sign")["id"]
    message = b"build artefact"
    body = {"message": B(message), **({"algorithm": scheme} if scheme else {})}
    status, _, sig = srv.call("POST", f"/v1/keys/{ref}/sign", body, role=SVC)
    assert status == 200 and sig["key_version"] == 1
    _, _, good = srv.call("POST", f"/v1/keys/{ref}/verify", {**body, "signature": sig["signature"]},
                          role=SVC)
    assert good["valid"] is True
    # the contract's verify has no algorithm member: a PKCS#1 v1.5 signature verifies without
    _, _, plain = srv.call("POST", f"/v1/keys/{ref}/verify", {
        "message": B(message), "signature": sig["signature"]}, role=SVC)
    assert plain["valid"] is True
    if scheme:  # but naming the other scheme does not accept it
        _, _, other = srv.call("POST", f"/v1/keys/{ref}/verify", {
            "message": B(message), "signature": sig["signature"],
            "algorithm": "rsa-pss-sha256"}, role=SVC)
        assert other["valid"] is False
    forged = B(b"\x30\x06\x02\x01\x01\x02\x01\x01")
    _, _, bad = srv.call("POST", f"/v1/keys/{ref}/verify", {**body, "signature": forged}, role=SVC)
    assert bad["valid"] is False
    digest = hashlib.new(hash_name, message).digest()
    dsig = srv.call("POST", f"/v1/keys/{ref}/sign", {"digest": B(digest),
                                                      **({"algorithm": scheme} if scheme else {})},
                    role=SVC)[2]
    assert srv.call("POST", f"/v1/keys/{ref}/sign", {"digest": B(b"short")}, role=SVC)[0] == 400
    assert srv.call("POST", f"/v1/keys/{ref}/sign", {"message": B(message),
                                                      "digest": B(digest)}, role=SVC)[0] == 400
    _, _, pub = srv.call("GET", f"/v1/keys/{ref}/public-key", role=SVC)
    (tmp_path / "pub.pem").write_text(pub["pem"])
    (tmp_path / "msg").write_bytes(message)
    for n, signature in enumerate((sig["signature"], dsig["signature"])):
        (tmp_path / f"sig{n}").write_bytes(base64.b64decode(signature))
        cmd = ["openssl", "dgst", f"-{hash_name}", "-verify", str(tmp_path / "pub.pem"),
               "-signature", str(tmp_path / f"sig{n}")]
        if algorithm.startswith("rsa") and scheme is None:
            cmd += ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"]
        out = subprocess.run([*cmd, str(tmp_path / "msg")], capture_output=True, text=True)
        assert "Verified OK" in out.stdout, out.stderr


def test_wrap_unwrap(srv: LiveServer) -> None:
    ref = create(srv, usage="wrap")["id"]
    material = bytes(range(32))
    _, _, wrapped = srv.call("POST", f"/v1/keys/{ref}/wrap", {"key_material": B(material)}, role=SVC)
    assert wrapped["wrapped"].startswith("fhsm:v1:")
    _, _, out = srv.call("POST", f"/v1/keys/{ref}/unwrap", {"wrapped": wrapped["wrapped"]}, role=SVC)
    assert base64.b64decode(out["key_material"]) == material
    assert srv.call("POST", f"/v1/keys/{ref}/encrypt", {"plaintext": B(b"x")}, role=SVC)[0] == 409


def test_state_rules_revoke_destroy_cancel(srv: LiveServer) -> None:
    ref = create(srv)["id"]
    _, _, ct = srv.call("POST", f"/v1/keys/{ref}/encrypt", {"plaintext": B(b"keep")}, role=SVC)
    status, _, revoked = srv.call("POST", f"/v1/keys/{ref}/revoke", {"reason": "rotation policy"})
    assert status == 200 and revoked["state"] == "revoked"
    assert srv.call("POST", f"/v1/keys/{ref}/encrypt", {"plaintext": B(b"x")}, role=SVC)[0] == 409
    assert srv.call("POST", f"/v1/keys/{ref}/decrypt", {"ciphertext": ct["ciphertext"]},
                    role=SVC)[0] == 200
    assert srv.call("POST", f"/v1/keys/{ref}/rotate")[0] == 409
    status, _, scheduled = srv.call("POST", f"/v1/keys/{ref}/destroy")
    assert status == 200 and scheduled["state"] == "destroy_scheduled"
    assert scheduled["destroy_after"]
    assert srv.call("POST", f"/v1/keys/{ref}/decrypt", {"ciphertext": ct["ciphertext"]},
                    role=SVC)[0] == 409
    status, _, back = srv.call("POST", f"/v1/keys/{ref}/cancel-destroy")
    assert status == 200 and back["state"] == "revoked" and back["destroy_after"] is None
    assert srv.call("POST", f"/v1/keys/{ref}/cancel-destroy")[0] == 409


def test_destroyed_key_answers_410(tmp_path: Path) -> None:
    srv = LiveServer(tmp_path, key_store="sqlite", overrides={("crypto", "destroy_grace_hours"): 0.0})
    try:
        ref = create(srv)["id"]
        _, _, ct = srv.call("POST", f"/v1/keys/{ref}/encrypt", {"plaintext": B(b"x")}, role=SVC)
        srv.call("POST", f"/v1/keys/{ref}/destroy")
        srv.rt.stop.wait(2.5)  # the scheduler ticks every second in tests
        _, _, key = srv.call("GET", f"/v1/keys/{ref}")
        assert key["state"] == "destroyed" and all(v["state"] == "destroyed" for v in key["versions"])
        assert srv.call("POST", f"/v1/keys/{ref}/decrypt", {"ciphertext": ct["ciphertext"]},
                        role=SVC)[0] == 410
        assert srv.call("POST", f"/v1/keys/{ref}/rotate")[0] == 410
    finally:
        srv.close()


def test_public_key_rules(srv: LiveServer) -> None:
    aes = create(srv)["id"]
    status, _, refused = srv.call("GET", f"/v1/keys/{aes}/public-key")
    assert status == 409 and "only signing keys have a public key" in \
        refused["error"]["message"], refused
    ec = create(srv, algorithm="ec-p256", usage="sign")["id"]
    status, _, pub = srv.call("GET", f"/v1/keys/{ec}/public-key?version=1")
    assert status == 200 and pub["version"] == 1 and "BEGIN PUBLIC KEY" in pub["pem"]
    assert srv.call("GET", f"/v1/keys/{ec}/public-key?version=2")[0] == 409  # no such version
    assert srv.call("GET", f"/v1/keys/{ec}/public-key?version=0")[0] == 400  # out of range
    assert srv.call("POST", f"/v1/keys/{ec}/destroy")[0] == 200
    status, _, refused = srv.call("GET", f"/v1/keys/{ec}/public-key")
    assert status == 409 and "its public key is not given out" in refused["error"]["message"]
    assert "verify" not in refused["error"]["message"]  # the caller asked for no verify


def test_errors_have_the_contract_shape(srv: LiveServer) -> None:
    status, headers, err = srv.call("GET", "/v1/keys/no-such-key")
    assert status == 404 and err["error"]["code"] == "not_found"
    assert err["error"]["request_id"] == headers["x-request-id"]
    status, headers, err = srv.call("DELETE", "/v1/keys")
    assert status == 405 and "GET" in headers["allow"] and "POST" in headers["allow"]
    status, headers, err = srv.call("GET", "/v1/keys", role=None)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert srv.call("GET", "/v1/keys", token="abc.def.ghi")[0] == 401  # noqa: S106  a bogus token on purpose
    assert srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt"},
                    role="auditor")[0] == 403
    assert srv.call("POST", "/v1/keys", raw=b"{nope")[0] == 400
    assert srv.call("POST", "/v1/keys", raw=b'{"usage":"encrypt","usage":"sign"}')[0] == 400
    assert srv.call("POST", "/v1/keys", raw=b"[]")[0] == 400


def test_request_correlation_and_trace_ids(srv: LiveServer) -> None:
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    status, headers, _ = srv.call("GET", "/v1/keys?limit=1", headers={
        "X-Request-ID": "req-123", "X-Correlation-ID": "build-42", "traceparent": trace})
    assert status == 200
    assert headers["x-request-id"] == "req-123" and headers["x-correlation-id"] == "build-42"
    assert headers["traceparent"] == trace
    later = "01" + trace[2:] + "-" + "x" * 7000 + "\t\u00ff"  # a later version: more after
    _, headers, _ = srv.call("GET", "/v1/keys?limit=1", headers={"traceparent": later})
    assert headers["traceparent"] == later[:55]  # its four fields, nothing unchecked
    _, headers, _ = srv.call("GET", "/v1/keys?limit=1", headers={"X-Request-ID": "bad id\x7f"})
    assert headers["x-request-id"] != "bad id"


def test_openapi_covers_every_route(srv: LiveServer) -> None:
    status, _, doc = srv.call("GET", "/v1/openapi.json", role="auditor")
    assert status == 200 and doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routed = {(r.method, r.template) for r in srv.rt.router.routes()
              if not is_vault(r.template)}  # Vault's API: README.md
    assert documented == routed


def test_health_and_metrics(srv: LiveServer) -> None:
    from prometheus_client.parser import text_string_to_metric_families
    ref = create(srv)["id"]
    srv.call("POST", f"/v1/keys/{ref}/encrypt", {"plaintext": B(b"m")}, role=SVC)
    status, _, health = srv.call("GET", "/healthz", role="auditor")
    assert status == 200 and health["status"] == "ok"
    for section in ("store", "audit", "auth", "rate_limit", "cache", "uptime_seconds"):
        assert section in health
    status, headers, body = srv.call("GET", "/metrics", role=None)
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert "ferrohsm_http_requests" in families
    assert "ferrohsm_http_request_duration_seconds" in families
    assert "ferrohsm_crypto_operations" in families
    routes = {s.labels.get("route") for s in families["ferrohsm_http_requests"].samples}
    assert "/v1/keys" in routes, routes
    ops = {(s.labels["algorithm"], s.labels["operation"])
           for s in families["ferrohsm_crypto_operations"].samples}
    assert ("aes-256-gcm", "encrypt") in ops


def test_audit_endpoint_pages_and_verifies(srv: LiveServer, tmp_path: Path) -> None:
    from ferrohsm.audit.chain import record_line
    from ferrohsm.audit.verify import verify_paths
    create(srv, name="audited", description="x")
    records, after = [], 0
    while True:
        status, _, page = srv.call("GET", f"/v1/audit?after_seq={after}&limit=50", role="auditor")
        assert status == 200
        records += page["records"]
        if page["next_after_seq"] is None:
            break
        after = page["next_after_seq"]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert any(r["action"] == "key.create" and r["actor"] == "administrator-user" for r in records)
    assert any(r["action"] == "auth.authenticate" and r["outcome"] == "denied" for r in records)
    export = tmp_path / "export.jsonl"
    export.write_bytes(b"".join(record_line(r) + b"\n" for r in records))
    result = verify_paths([str(export)], srv.secrets.audit_hmac_key, partial=True)
    assert result.ok, result.problem
    assert srv.call("GET", "/v1/audit", role="service")[0] == 403
    text = export.read_text()
    assert srv.token("administrator") not in text


def test_rate_limited_requests_are_refused_and_audited(tmp_path: Path) -> None:
    srv = LiveServer(tmp_path, overrides={("rate_limit", "requests_per_second"): 0.5,
                                          ("rate_limit", "burst"): 2})
    try:
        statuses = [srv.call("GET", "/v1/keys", role="auditor")[0] for _ in range(4)]
        assert statuses[:2] == [200, 200] and statuses[-1] == 429
        status, headers, err = srv.call("GET", "/v1/keys", role="auditor")
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert err["error"]["code"] == "rate_limited"
        records = srv.rt.audit.read(0, 1000)
        refused = [r for r in records if r["action"] == "ratelimit.refused"]
        assert refused and refused[0]["actor"] == "auditor-user"
        assert refused[0]["outcome"] == "denied"
    finally:
        srv.close()


def test_refusals_above_the_service_are_audited_once(srv: LiveServer) -> None:
    """Malformed bodies, unknown fields and unknown routes never reach the service: the HTTP
    layer records them; refusals the service already recorded are not recorded twice."""
    before = srv.rt.audit.head()[0]
    rid = "refused-body-1"
    assert srv.call("POST", "/v1/keys", raw=b"{nope", headers={"X-Request-ID": rid})[0] == 400
    assert srv.call("GET", "/v1/nowhere", headers={"X-Request-ID": "refused-route-1"})[0] == 404
    assert srv.call("POST", "/v1/keys", {"algorithm": "des", "usage": "encrypt"},
                    headers={"X-Request-ID": "refused-svc-1"})[0] == 400
    records = srv.rt.audit.read(before, 1000)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_id.setdefault(r["request_id"], []).append(r)
    assert [r["action"] for r in by_id[rid]] == ["request.refused"]
    assert by_id[rid][0]["outcome"] == "error" and "400" in by_id[rid][0]["message"]
    assert [r["action"] for r in by_id["refused-route-1"]] == ["request.refused"]
    assert [r["action"] for r in by_id["refused-svc-1"]] == ["key.create"]


def test_lone_surrogate_in_description_is_400_and_creates_nothing(srv: LiveServer) -> None:
    before = srv.call("GET", "/v1/keys?limit=200", role="auditor")[2]["keys"]
    status, _, err = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                   "usage": "encrypt", "description": "\udfff"})
    assert status == 400 and err["error"]["code"] == "bad_request"
    assert "Unicode" in err["error"]["message"]
    for role in ("administrator", "auditor", "service"):
        status, _, page = srv.call("GET", "/v1/keys?limit=200", role=role)
        assert status == 200 and len(page["keys"]) == len(before), role


@pytest.mark.parametrize("text", ["evil\u202etxt.exe", "a\u2066b", "x\u200fy", "c1\x85",
                                  "a\u200bb", "line\u2028sep", "para\u2029sep", "\ufeffbom",
                                  "w\u2060j", "al\u2062ice", "soft\xadhyphen", "m\u180en",
                                  "ann\ufff9otation", "tag\U000e0041hidden", "d\u206a"])
def test_a_description_that_would_display_as_other_text_is_400(srv: LiveServer,
                                                               text: str) -> None:
    status, _, err = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                   "usage": "encrypt", "description": text})
    assert status == 400 and "bidirectional" in err["error"]["message"]
    ref = create(srv)["id"]
    status, _, err = srv.call("PATCH", f"/v1/keys/{ref}", {"description": text})
    assert status == 400 and err["error"]["code"] == "bad_request"
    joined = "team \U0001f468\u200d\U0001f4bb\ttab\nline"  # a joiner (emoji), tab, newline
    status, _, key = srv.call("PATCH", f"/v1/keys/{ref}", {"description": joined})
    assert status == 200 and key["description"] == joined


def test_lone_surrogate_member_name_is_400_and_the_audit_log_stays_readable(
        srv: LiveServer) -> None:
    ref = create(srv)["id"]
    before = srv.rt.audit.head()[0]
    rid = "lone-surrogate-name-1"
    status, _, err = srv.call("POST", f"/v1/keys/{ref}/encrypt", raw=b'{"\\ud800":1}',
                              role=SVC, headers={"X-Request-ID": rid})
    assert status == 400 and err["error"]["code"] == "bad_request"
    records = [r for r in srv.rt.audit.read(before, 1000) if r["request_id"] == rid]
    assert records and all("400" in r["message"] for r in records)
    assert all("\ud800" not in json.dumps(r, ensure_ascii=False) for r in records)
    status, _, page = srv.call("GET", f"/v1/audit?after_seq={before}&limit=50", role="auditor")
    assert status == 200 and page["records"]


def test_unknown_field_name_is_escaped_in_the_error(srv: LiveServer) -> None:
    status, _, err = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                   "usage": "encrypt", "\x1b[2J" + "z" * 80: 1})
    assert status == 400
    message = err["error"]["message"]
    assert "\x1b" not in message and "z" * 41 not in message


def test_curl_streams_an_encrypt_body_chunked(srv: LiveServer, tmp_path: Path) -> None:
    """`curl -T -` sends a body of unknown length as Transfer-Encoding: chunked."""
    ref = create(srv)["id"]
    trace = tmp_path / "trace"
    result = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--cacert", str(srv.pki.ca_cert), "-T", "-",
         "-X", "POST", "-H", "Content-Type: application/json", "-H",
         f"Authorization: Bearer {srv.token(SVC)}", "--trace-ascii", str(trace),
         f"https://127.0.0.1:{srv.port}/v1/keys/{ref}/encrypt"],
        input=json.dumps({"plaintext": B(b"streamed")}).encode(), capture_output=True,
        timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Transfer-Encoding: chunked" in trace.read_text()
    ciphertext = json.loads(result.stdout)["ciphertext"]
    status, _, plain = srv.call("POST", f"/v1/keys/{ref}/decrypt", {"ciphertext": ciphertext},
                                role=SVC)
    assert status == 200 and plain["plaintext"] == B(b"streamed")


@pytest.mark.parametrize("role", [None, "service", "operator", "bogus-token"])
def test_healthz_tells_anyone_else_the_status_only(srv: LiveServer, role: str | None) -> None:
    token = "not.a.token" if role == "bogus-token" else None
    status, _, health = srv.call("GET", "/healthz", role=None if token else role, token=token)
    assert status == 200 and set(health) == {"status", "version", "sealed", "auth",
                                             "rate_limit", "cache"}, health
    assert health["status"] == "ok" and health["sealed"] is False
    assert {"failures", "cache_hits"} <= set(health["auth"])  # the counters the contract names
    assert {"limited_actor", "limited_ip"} <= set(health["rate_limit"])
    assert {"hits", "misses"} <= set(health["cache"])
    text = json.dumps(health)
    assert str(srv.data_dir) not in text and srv.rt.audit.head()[1] not in text


@pytest.mark.parametrize("role", ["auditor", "administrator"])
def test_healthz_details_need_an_auditor_or_administrator_token(srv: LiveServer,
                                                                role: str) -> None:
    status, _, health = srv.call("GET", "/healthz", role=role)
    assert status == 200 and health["audit"]["head_hash"] and "store" in health


@pytest.mark.parametrize("key_store", ["filesystem", "sqlite"])
def test_a_stored_lone_surrogate_never_breaks_listing_or_the_audit_page(
        tmp_path: Path, key_store: str) -> None:
    """Data stored before bodies refused lone surrogates still reads back, for every role."""
    from dataclasses import replace
    srv = LiveServer(tmp_path, key_store=key_store)
    try:
        key = srv.rt.store.get(create(srv, description="before")["id"])
        # bound to a later record, as a change through the service would be (the same binding
        # at another revision is a forked copy, refused by listings too)
        srv.rt.store.update(replace(key, description="\udfff", audit_seq=key.audit_seq + 1))
        for role in ("administrator", "auditor", "service"):
            status, _, page = srv.call("GET", "/v1/keys", role=role)
            assert status == 200 and page["keys"][0]["description"] == "\udfff", role
        assert srv.call("GET", "/v1/audit", role="auditor")[0] == 200
    finally:
        srv.close()


@pytest.mark.parametrize("query", ["algorithm=des", "algorithm=", "usage=null", "tag=UPPER",
                                   "tag=", "state=gone", "page_token=azE6", "limit=0",
                                   "limit=%C2%B2", "limit=1001"])
def test_listing_refuses_what_the_document_does_not_allow(srv: LiveServer, query: str) -> None:
    """Each of these is outside the listing's schema: a 400 (never an empty page, never a 500:
    "²" is a Unicode digit that int() refuses)."""
    status, _, body = srv.call("GET", f"/v1/keys?{query}", role="auditor")
    assert status == 400 and body["error"]["code"] == "bad_request", (query, body)


def test_page_tokens_and_large_audit_positions_are_what_the_document_says(srv: LiveServer) -> None:
    for _ in range(2):
        create(srv)
    _, _, page = srv.call("GET", "/v1/keys?limit=1", role="auditor")
    token = page["next_page_token"]
    assert token.startswith("k1.") and is_uuid(token[3:])
    assert srv.call("GET", f"/v1/keys?limit=1&page_token={token}", role="auditor")[0] == 200
    # after_seq goes to 10**15 as documented (it stopped at 9 digits)
    status, _, audit = srv.call("GET", "/v1/audit?after_seq=1000000000000", role="auditor")
    assert status == 200 and audit["records"] == []


def test_a_name_with_two_dots_is_refused_at_creation(srv: LiveServer) -> None:
    status, _, body = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                    "usage": "encrypt", "name": "a..b"})
    assert status == 400 and "'..'" in body["error"]["message"]


def test_a_tag_scoped_listing_names_no_hidden_key_in_its_page_tokens(tmp_path: Path) -> None:
    """A page token is the id of the last key of a page; the store's pages hold keys a scoped
    token may not see, so their tokens named hidden keys (and a filter that matched only
    hidden keys still answered with a token). Now every token names a key the caller saw."""
    own = LiveServer(tmp_path)
    try:
        visible, hidden = [], []
        for n in range(3):
            hidden.append(create(own, name=f"hidden-{n}a", tags=["other"])["id"])
            visible.append(create(own, name=f"app-{n}", tags=["app"])["id"])
            hidden.append(create(own, name=f"hidden-{n}b")["id"])
        scoped = own.token("service", subject="scoped-lister", tags=["app"])
        seen, token = [], None
        while True:
            query = "/v1/keys?limit=1" + (f"&page_token={token}" if token else "")
            status, _, page = own.call("GET", query, token=scoped)
            assert status == 200 and "total" not in page
            seen += [k["id"] for k in page["keys"]]
            token = page["next_page_token"]
            if token is None:
                break
            assert token[3:] in visible, "a page token named a key this token cannot see"
        assert seen == visible
        for query in ("name_prefix=hidden", "tag=other", "name_prefix=nothing"):
            status, _, page = own.call("GET", f"/v1/keys?limit=1&{query}", token=scoped)
            assert (status, page["keys"], page["next_page_token"]) == (200, [], None), query
    finally:
        own.close()


def test_an_approval_header_does_not_tell_a_hidden_key_from_a_missing_one(srv: LiveServer) -> None:
    """A tag-scoped token's answer for a key outside its tags is the missing key's, with or
    without an X-Approval-ID (the header's own refusal came first and told the key exists)."""
    hidden = create(srv, name="hidden-from-scoped", tags=["elsewhere"])
    scoped = srv.token("service", subject="scoped-prober", tags=["mine"])
    header = {"X-Approval-ID": "0190a2b3-c4d5-7e6f-8a9b-0c1d2e3f4a5b"}
    answers = set()
    for ref in (hidden["id"], "hidden-from-scoped", "no-such-key-at-all"):
        for path in (f"/v1/keys/{ref}", f"/v1/keys/{ref}/encrypt"):
            method = "GET" if path.count("/") == 3 else "POST"
            body = None if method == "GET" else {"plaintext": "eA=="}
            status, _, out = srv.call(method, path, body, token=scoped, headers=header)
            answers.add((method, status, out["error"]["message"]))
    assert answers == {("GET", 404, "no such key"), ("POST", 404, "no such key")}, answers


def test_an_unreachable_revocation_list_is_503_for_valid_tokens_never_429(
        tmp_path: Path) -> None:
    """The server's own failure to check a token (its revocation list's database down) is
    not the caller's: it spends nothing of the source address's bucket, which a flood of bad
    tokens empties. Valid clients hear 503 for the whole outage, not 429 "rate limited"."""
    srv = LiveServer(tmp_path, overrides={("rate_limit", "ip_requests_per_second"): 0.1,
                                          ("rate_limit", "ip_burst"): 2})
    try:
        deny_list = srv.rt.authenticator.deny_list

        def unreachable(jti: str | None, now: float) -> bool:
            raise Unavailable("revocation list unavailable: the database cannot be reached")

        deny_list.is_revoked = unreachable  # type: ignore[method-assign]
        before = srv.rt.audit.head()[0]
        statuses = [srv.call("GET", "/v1/keys", role="service")[0] for _ in range(6)]
        assert statuses == [503] * 6
        outages = [r for r in srv.rt.audit.read(before, 100)
                   if r["action"] == "auth.authenticate"]
        assert [r["outcome"] for r in outages] == ["error"] * 6  # the server failed: no denial
        del deny_list.is_revoked  # the instance attribute: back to the class's method
        assert srv.call("GET", "/v1/keys", role="service")[0] == 200
        bogus = [srv.call("GET", "/v1/keys", token="abc.def.ghi")[0]  # noqa: S106  bogus on purpose
                 for _ in range(4)]
        assert bogus[:2] == [401, 401] and bogus[-1] == 429  # a caller's failures still pay
    finally:
        srv.close()
