"""The Vault-compatible transit API with hvac, the real Python Vault client, over TLS 1.3.

hvac is used exactly as an application written for Vault would use it (``hvac.Client(url,
token, verify=ca)``, ``client.secrets.transit.*``); only the URL and the token (a FerroHSM
bearer token, sent by hvac as ``X-Vault-Token``) differ. Keys are created by an operator and
used by a service, because FerroHSM's roles apply to this surface exactly as to the native one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from live import LiveServer
from test_batch import positions, records_of

hvac = pytest.importorskip("hvac", reason="hvac is a test dependency: pip install -e '.[test]'")
vault_errors: Any = hvac.exceptions  # hvac has no type stubs


def B(data: bytes) -> str:  # noqa: N802  one letter, like b"": a base64 literal in bodies
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("transit"))
    yield server
    server.close()


def client(srv: LiveServer, role: str, subject: str | None = None, **kw: Any) -> Any:
    token = srv.token(role, subject, **kw) if subject or kw else srv.token(role)
    return hvac.Client(url=f"https://127.0.0.1:{srv.port}", token=token,
                       verify=str(srv.pki.ca_cert))


def new_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def operator(srv: LiveServer) -> Any:
    return client(srv, "operator")


@pytest.fixture(scope="module")
def service(srv: LiveServer) -> Any:
    return client(srv, "service", "transit-app")


def create(operator: Any, key_type: str = "aes256-gcm96") -> str:
    name = new_name(key_type)
    operator.secrets.transit.create_key(name=name, key_type=key_type)
    return name


def audit_records(srv: LiveServer, subject: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    after = 0
    while True:
        status, _, body = srv.call("GET", f"/v1/audit?limit=1000&after_seq={after}",
                                   role="auditor")
        assert status == 200, body
        records.extend(r for r in body["records"] if r["actor"] == subject)
        if body["next_after_seq"] is None:
            return records
        after = body["next_after_seq"]


def test_create_read_list_and_the_vault_envelope(srv: LiveServer, operator: Any,
                                                 service: Any) -> None:
    name = create(operator)
    info = service.secrets.transit.read_key(name=name)
    assert set(info) >= {"request_id", "lease_id", "renewable", "lease_duration", "data",
                         "wrap_info", "warnings", "auth"}
    data = info["data"]
    assert (data["name"], data["type"], data["latest_version"]) == (name, "aes256-gcm96", 1)
    assert data["min_decryption_version"] == 1 and list(data["keys"]) == ["1"]
    assert isinstance(data["keys"]["1"], int)
    assert data["deletion_allowed"] is False and data["exportable"] is False
    assert data["supports_encryption"] and data["supports_decryption"]
    assert not data["supports_signing"] and not data["derived"]
    assert name in operator.secrets.transit.list_keys()["data"]["keys"]  # the LIST method
    status, _, body = srv.call("GET", "/v1/transit/keys?list=true", role="operator")
    assert status == 200 and name in body["data"]["keys"]
    # the same key on the native API, by name
    status, _, native = srv.call("GET", f"/v1/keys/{name}", role="operator")
    assert status == 200 and native["algorithm"] == "aes-256-gcm"
    # creating it again answers the existing key with Vault's warning
    again = operator.secrets.transit.create_key(name=name)
    assert again["data"]["name"] == name and again["warnings"] == [f"key {name} already existed"]


@pytest.mark.parametrize("aad", [None, b"tenant-42"])
def test_encrypt_decrypt_with_and_without_associated_data(operator: Any, service: Any,
                                                          aad: bytes | None) -> None:
    name = create(operator)
    extra = {} if aad is None else {"associated_data": B(aad)}
    out = service.secrets.transit.encrypt_data(name=name, plaintext=B(b"card 4111"), **extra)
    ciphertext = out["data"]["ciphertext"]
    assert ciphertext.startswith("vault:v1:") and out["data"]["key_version"] == 1
    back = service.secrets.transit.decrypt_data(name=name, ciphertext=ciphertext, **extra)
    assert base64.b64decode(back["data"]["plaintext"]) == b"card 4111"
    if aad is not None:
        with pytest.raises(vault_errors.InvalidRequest):
            service.secrets.transit.decrypt_data(name=name, ciphertext=ciphertext,
                                                 associated_data=B(b"tenant-43"))


def test_ciphertexts_cross_the_two_surfaces(srv: LiveServer, operator: Any,
                                            service: Any) -> None:
    name = create(operator)
    vault_ct = service.secrets.transit.encrypt_data(name=name, plaintext=B(b"a"))["data"][
        "ciphertext"]
    status, _, native = srv.call("POST", f"/v1/keys/{name}/decrypt", {"ciphertext": vault_ct},
                                 role="service")
    assert status == 200 and native["plaintext"] == B(b"a")
    status, _, made = srv.call("POST", f"/v1/keys/{name}/encrypt", {"plaintext": B(b"b")},
                               role="service")
    assert status == 200 and made["ciphertext"].startswith("fhsm:v1:")
    back = service.secrets.transit.decrypt_data(name=name, ciphertext=made["ciphertext"])
    assert back["data"]["plaintext"] == B(b"b")


def test_batch_encrypt_and_decrypt_with_a_failing_item(operator: Any, service: Any) -> None:
    name = create(operator)
    items = [{"plaintext": B(f"item {i}".encode()), "reference": f"r{i}"} for i in range(20)]
    out = service.secrets.transit.encrypt_data(name=name, plaintext=None, batch_input=items)
    results = out["data"]["batch_results"]
    assert [r["reference"] for r in results] == [f"r{i}" for i in range(20)]
    assert all(r["ciphertext"].startswith("vault:v1:") for r in results)
    back = service.secrets.transit.decrypt_data(
        name=name, ciphertext=None, batch_input=[{"ciphertext": r["ciphertext"]} for r in results])
    assert [base64.b64decode(r["plaintext"]) for r in back["data"]["batch_results"]] == [
        f"item {i}".encode() for i in range(20)]
    # one bad item: that item carries its error, the others their results; Vault answers 400
    bad = [{"ciphertext": results[0]["ciphertext"]}, {"ciphertext": "vault:v1:AAAA"},
           {"ciphertext": results[1]["ciphertext"]}]
    resp = service.adapter.request("POST", f"/v1/transit/decrypt/{name}",
                                   json={"batch_input": bad}, raise_exception=False)
    assert resp.status_code == 400
    mixed = resp.json()["data"]["batch_results"]
    assert mixed[0]["plaintext"] == B(b"item 0") and mixed[2]["plaintext"] == B(b"item 1")
    assert "error" in mixed[1] and "plaintext" not in mixed[1]
    partial = service.adapter.request("POST", f"/v1/transit/decrypt/{name}", json={
        "batch_input": bad, "partial_failure_response_code": 207}, raise_exception=False)
    assert partial.status_code == 207


def test_rotate_then_decrypt_old_ciphertext_and_rewrap(operator: Any, service: Any) -> None:
    name = create(operator)
    old = service.secrets.transit.encrypt_data(name=name, plaintext=B(b"old"))["data"][
        "ciphertext"]
    rotated = operator.secrets.transit.rotate_key(name=name)
    assert rotated["data"]["latest_version"] == 2 and set(rotated["data"]["keys"]) == {"1", "2"}
    assert service.secrets.transit.decrypt_data(name=name, ciphertext=old)["data"][
        "plaintext"] == B(b"old")
    new = service.secrets.transit.encrypt_data(name=name, plaintext=B(b"new"))["data"]
    assert new["ciphertext"].startswith("vault:v2:") and new["key_version"] == 2
    rewrapped = service.secrets.transit.rewrap_data(name=name, ciphertext=old)["data"]
    assert rewrapped["ciphertext"].startswith("vault:v2:") and rewrapped["key_version"] == 2
    assert service.secrets.transit.decrypt_data(name=name, ciphertext=rewrapped["ciphertext"])[
        "data"]["plaintext"] == B(b"old")
    with pytest.raises(vault_errors.InvalidRequest, match="not supported by FerroHSM"):
        service.secrets.transit.encrypt_data(name=name, plaintext=B(b"x"), key_version=1)
    datakey = service.adapter.request("POST", f"/v1/transit/datakey/wrapped/{name}",
                                      json={"key_version": 1}, raise_exception=False)
    assert datakey.status_code == 400 and "not supported by FerroHSM" in datakey.json()[
        "errors"][0]
    # in a batch, another version is that item's own error (400 unless partial success allowed)
    rewrap = service.adapter.request("POST", f"/v1/transit/rewrap/{name}", json={
        "batch_input": [{"ciphertext": old, "key_version": 1},
                        {"ciphertext": old, "key_version": 2}],
        "partial_failure_response_code": 207}, raise_exception=False)
    first, second = rewrap.json()["data"]["batch_results"]
    assert rewrap.status_code == 207 and "not supported by FerroHSM" in first["error"]
    assert second["ciphertext"].startswith("vault:v2:")


@pytest.mark.parametrize("bits", [128, 256, 512])
def test_data_keys_plaintext_and_wrapped(operator: Any, service: Any, bits: int) -> None:
    name = create(operator)
    out = service.secrets.transit.generate_data_key(name=name, key_type="plaintext",
                                                    bits=bits)["data"]
    key = base64.b64decode(out["plaintext"])
    assert len(key) == bits // 8 and out["ciphertext"].startswith("vault:v1:")
    assert service.secrets.transit.decrypt_data(name=name, ciphertext=out["ciphertext"])[
        "data"]["plaintext"] == out["plaintext"]
    wrapped = service.secrets.transit.generate_data_key(name=name, key_type="wrapped")["data"]
    assert "plaintext" not in wrapped
    assert len(base64.b64decode(service.secrets.transit.decrypt_data(
        name=name, ciphertext=wrapped["ciphertext"])["data"]["plaintext"])) == 32


SIGNING = [("ecdsa-p256", "sha2-256", None), ("ecdsa-p384", "sha2-384", None),
           ("rsa-2048", "sha2-256", "pss"), ("rsa-2048", "sha2-256", "pkcs1v15"),
           ("rsa-4096", "sha2-256", "pss"), ("rsa-4096", "sha2-256", "pkcs1v15")]


@pytest.mark.slow
@pytest.mark.parametrize(("key_type", "hash_algorithm", "padding"), SIGNING)
def test_sign_and_verify_for_each_key_type(operator: Any, service: Any, key_type: str,
                                           hash_algorithm: str, padding: str | None) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.asymmetric import padding as pad

    name = create(operator, key_type)
    transit = service.secrets.transit
    message = b"release 1.2.3"
    options: dict[str, Any] = {"hash_algorithm": hash_algorithm}
    if padding:
        options["signature_algorithm"] = padding
    signed = transit.sign_data(name=name, hash_input=B(message), **options)["data"]
    assert signed["signature"].startswith("vault:v1:") and signed["key_version"] == 1
    assert transit.verify_signed_data(name=name, hash_input=B(message),
                                      signature=signed["signature"], **options)["data"]["valid"]
    assert not transit.verify_signed_data(name=name, hash_input=B(b"tampered"),
                                          signature=signed["signature"], **options)["data"][
        "valid"]
    # prehashed: the client hashes, FerroHSM signs the digest; the same signature verifies
    algo = hashes.SHA384() if hash_algorithm == "sha2-384" else hashes.SHA256()
    digest = hashlib.new(algo.name, message).digest()
    pre = transit.sign_data(name=name, hash_input=B(digest), prehashed=True, **options)["data"]
    assert transit.verify_signed_data(name=name, hash_input=B(message),
                                      signature=pre["signature"], **options)["data"]["valid"]
    # the public key in Vault's key info verifies it independently
    info = operator.secrets.transit.read_key(name=name)["data"]
    assert info["type"] == key_type and info["supports_signing"]
    public = serialization.load_pem_public_key(info["keys"]["1"]["public_key"].encode())
    der = base64.b64decode(signed["signature"].split(":", 2)[2])
    if isinstance(public, rsa.RSAPublicKey):
        scheme = (pad.PSS(pad.MGF1(algo), pad.PSS.AUTO) if padding == "pss"  # Vault's "auto"
                  else pad.PKCS1v15())
        public.verify(der, message, scheme, algo)
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(der, message, ec.ECDSA(algo))
    # the hash in the path, as Vault's sign/:name/:hash_algorithm
    path = service.adapter.post(f"/v1/transit/sign/{name}/{hash_algorithm}",
                                json={"input": B(message), **({"signature_algorithm": padding}
                                                              if padding else {})})
    assert path["data"]["signature"].startswith("vault:v1:")


def test_batch_sign_and_verify(operator: Any, service: Any) -> None:
    name = create(operator, "ecdsa-p256")
    items = [{"input": B(f"m{i}".encode())} for i in range(5)]
    signed = service.secrets.transit.sign_data(name=name, batch_input=items)["data"][
        "batch_results"]
    assert len(signed) == 5 and all(s["signature"].startswith("vault:v1:") for s in signed)
    checks = [{"input": B(f"m{i}".encode()), "signature": s["signature"]}
              for i, s in enumerate(signed)]
    checks[3]["input"] = B(b"other")
    resp = service.adapter.post(f"/v1/transit/verify/{name}", json={"batch_input": checks})
    assert [r["valid"] for r in resp["data"]["batch_results"]] == [True, True, True, False, True]


def test_sign_and_verify_batches_answer_200_with_each_items_error(srv: LiveServer,
                                                                  operator: Any) -> None:
    """Vault's sign and verify answer a batch 200 whatever its items' errors (only encrypt,
    decrypt and rewrap answer 400): hvac raised on the old 400 and lost the signatures made.
    Each item's refusal is still recorded."""
    name = create(operator, "ecdsa-p256")
    svc = client(srv, "service", "transit-batch-200")
    signed = svc.adapter.post(f"/v1/transit/sign/{name}", json={
        "batch_input": [{"input": B(b"m")}, {"input": "not-base64!", "reference": "r"}],
        "partial_failure_response_code": 207})
    results = signed["data"]["batch_results"]
    assert results[0]["signature"].startswith("vault:v1:")
    assert results[1]["reference"] == "r" and "base64" in results[1]["error"], results
    assert signed["warnings"] == [  # Vault's sign takes no partial_failure_response_code
        "Endpoint ignored these unrecognized parameters: [partial_failure_response_code]"]
    checked = svc.adapter.post(f"/v1/transit/verify/{name}", json={"batch_input": [
        {"input": B(b"m"), "signature": results[0]["signature"]},
        {"input": B(b"m"), "signature": "garbage"}]})["data"]["batch_results"]
    assert checked[0] == {"valid": True} and "invalid signature" in checked[1]["error"]
    for path in ("sign", "verify"):  # every item failing is still a 200
        resp = svc.adapter.post(f"/v1/transit/{path}/{name}", json={  # hvac raises on a 400
            "batch_input": [{"input": "!!", "signature": "vault:v1:AAAA"}]})
        assert "error" in resp["data"]["batch_results"][0]
    refused = [(r["action"], r["outcome"]) for r in audit_records(srv, "transit-batch-200")
               if r["outcome"] != "success"]
    assert refused == [("crypto.sign", "error"), ("crypto.verify", "error"),
                       ("crypto.sign", "error"), ("crypto.verify", "error")], refused


def test_unsupported_features_answer_a_clear_vault_error(srv: LiveServer, operator: Any,
                                                         service: Any) -> None:
    name = create(operator)
    transit = service.secrets.transit
    cases: list[Callable[[], Any]] = [
        lambda: operator.secrets.transit.create_key(name=new_name("d"), derived=True),
        lambda: operator.secrets.transit.create_key(name=new_name("x"), exportable=True),
        lambda: operator.secrets.transit.create_key(name=new_name("c"), key_type="chacha20-poly1305"),
        lambda: transit.encrypt_data(name=name, plaintext=B(b"x"), context=B(b"ctx")),
        lambda: transit.generate_hmac(name=name, hash_input=B(b"x")),
        lambda: transit.hash_data(hash_input=B(b"x")),
        lambda: operator.secrets.transit.update_key_configuration(name=name,
                                                                  deletion_allowed=True),
        lambda: operator.secrets.transit.delete_key(name=name),
        lambda: operator.secrets.transit.export_key(name=name, key_type="encryption-key"),
        lambda: operator.secrets.transit.backup_key(name=name),
        lambda: operator.secrets.transit.trim_key(name=name, min_version=1),
    ]
    for case in cases:
        with pytest.raises(vault_errors.InvalidRequest, match="not supported by FerroHSM"):
            case()
    # a sign option FerroHSM does not have is refused, never replaced
    signer = create(operator, "ecdsa-p384")
    with pytest.raises(vault_errors.InvalidRequest, match="'sha2-256' with ec-p384"):
        transit.sign_data(name=signer, hash_input=B(b"x"))
    with pytest.raises(vault_errors.InvalidRequest, match="marshaling_algorithm"):
        transit.sign_data(name=signer, hash_input=B(b"x"), hash_algorithm="sha2-384",
                          marshaling_algorithm="jws")
    # unknown paths: Vault's 404 shape
    status, _, body = srv.call("POST", "/v1/transit/nothing/here", {}, role="service")
    assert status == 404 and isinstance(body["errors"], list)


def test_random_bytes(service: Any, operator: Any) -> None:
    out = service.secrets.transit.generate_random_bytes(n_bytes=48)["data"]["random_bytes"]
    assert len(base64.b64decode(out)) == 48
    hexed = service.adapter.post("/v1/transit/random/16", json={"format": "hex"})
    assert len(bytes.fromhex(hexed["data"]["random_bytes"])) == 16
    platform = service.adapter.post("/v1/transit/random/platform/8", json={})
    assert len(base64.b64decode(platform["data"]["random_bytes"])) == 8
    with pytest.raises(vault_errors.InvalidRequest, match="not supported"):
        service.adapter.post("/v1/transit/random/seal/8", json={})
    with pytest.raises(vault_errors.Forbidden):  # managers never use keys or the CSPRNG
        operator.secrets.transit.generate_random_bytes(n_bytes=8)


def test_roles_and_tag_scoping_in_vault_shapes(srv: LiveServer, operator: Any,
                                               service: Any) -> None:
    name = create(operator)
    ciphertext = service.secrets.transit.encrypt_data(name=name, plaintext=B(b"x"))["data"][
        "ciphertext"]
    auditor = client(srv, "auditor")
    with pytest.raises(vault_errors.Forbidden, match="permission denied"):
        auditor.secrets.transit.encrypt_data(name=name, plaintext=B(b"x"))
    with pytest.raises(vault_errors.Forbidden):
        service.secrets.transit.create_key(name=new_name("svc"))
    with pytest.raises(vault_errors.Forbidden):
        service.secrets.transit.rotate_key(name=name)
    # a Service token whose tags do not cover the key: the key does not exist for it
    scoped = client(srv, "service", "scoped-transit", tags=["prod"])
    with pytest.raises(vault_errors.InvalidRequest, match="encryption key not found"):
        scoped.secrets.transit.decrypt_data(name=name, ciphertext=ciphertext)
    with pytest.raises(vault_errors.InvalidPath):
        scoped.secrets.transit.read_key(name=name)
    missing = srv.call("POST", f"/v1/transit/decrypt/{new_name('none')}",
                       {"ciphertext": ciphertext}, role="service")
    scoped_answer = srv.call("POST", f"/v1/transit/decrypt/{name}", {"ciphertext": ciphertext},
                             token=srv.token("service", "scoped-transit", tags=["prod"]))
    assert (missing[0], missing[2]) == (scoped_answer[0], scoped_answer[2]) \
        and missing[0] == 400
    # a bad or missing token: Vault's 403
    bad = hvac.Client(url=f"https://127.0.0.1:{srv.port}", token="not-a-token",  # noqa: S106
                      verify=str(srv.pki.ca_cert))
    with pytest.raises(vault_errors.Forbidden):
        bad.secrets.transit.encrypt_data(name=name, plaintext=B(b"x"))
    status, _, body = srv.call("POST", f"/v1/transit/encrypt/{name}", {"plaintext": B(b"x")},
                               role=None)
    assert status == 403 and body["errors"][0].startswith("permission denied")
    # the token goes in one header, never two
    status, _, body = srv.call("POST", f"/v1/transit/encrypt/{name}", {"plaintext": B(b"x")},
                               role="service",
                               headers={"X-Vault-Token": srv.token("service")})
    assert status == 400 and "once" in body["errors"][0]


def test_every_operation_is_audited(srv: LiveServer, operator: Any) -> None:
    subject = f"audited-{secrets.token_hex(3)}"
    svc = client(srv, "service", subject)
    name = create(operator)
    ct = svc.secrets.transit.encrypt_data(name=name, plaintext=B(b"x"))["data"]["ciphertext"]
    svc.secrets.transit.decrypt_data(name=name, ciphertext=ct)
    svc.secrets.transit.encrypt_data(name=name, plaintext=None,
                                     batch_input=[{"plaintext": B(b"1")}, {"plaintext": B(b"2")}])
    with pytest.raises(vault_errors.Forbidden):
        svc.secrets.transit.rotate_key(name=name)
    records = audit_records(srv, subject)
    actions = [(r["action"], r["outcome"]) for r in records]
    # the single request's record, and ONE for both batch items (their positions listed)
    assert actions.count(("crypto.encrypt", "success")) == 2
    batched = [r for r in records if "batch_items" in r["details"]]
    assert [(r["message"], r["details"]) for r in batched] == [
        ("encrypted 2 batch items, 2 bytes", {"batch_items": "0-1", "batch_size": 2})]
    assert ("crypto.decrypt", "success") in actions
    assert ("key.rotate", "denied") in actions
    key_id = json.loads(json.dumps(operator.secrets.transit.read_key(name=name)))["data"][
        "ferrohsm"]["id"]
    assert all(r["key_id"] == key_id for r in records if r["action"].startswith("crypto."))


def test_a_batch_spends_one_rate_limit_token_per_item(tmp_path_factory: pytest.TempPathFactory
                                                      ) -> None:
    """Batching is no way around the rate limit: 30 items would spend 30 tokens, more than a
    burst of 20 can ever hold: refused whole before any item ran, as a batch to split (400),
    not a 429 whose Retry-After a client would follow forever."""
    tight = LiveServer(tmp_path_factory.mktemp("transit-limit"), overrides={
        ("rate_limit", "requests_per_second"): 0.5, ("rate_limit", "burst"): 20})
    try:
        name = create(client(tight, "operator"))
        svc = client(tight, "service", "batch-limited")
        items = [{"plaintext": B(b"x")} for _ in range(30)]
        resp = svc.adapter.request("POST", f"/v1/transit/encrypt/{name}",
                                   json={"batch_input": items}, raise_exception=False)
        assert resp.status_code == 400
        assert "split it into batches of at most 20" in resp.json()["errors"][0]
        records = audit_records(tight, "batch-limited")
        assert [r["outcome"] for r in records] == ["denied"]  # refused before any item ran
    finally:
        tight.close()


def test_a_batch_is_recorded_per_group_of_like_items_and_spends_a_token_per_item(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A batch_input takes the native batch path: one record per group of like items (key,
    version, outcome and the items' positions), n rate-limit tokens for n items (a rewrap item
    is one token, recorded as a decrypt and an encrypt)."""
    tight = LiveServer(tmp_path_factory.mktemp("transit-groups"), overrides={
        ("rate_limit", "service_requests_per_second"): 0.01, ("rate_limit", "service_burst"): 10})
    try:
        operator = client(tight, "operator")
        name = create(operator)
        key_id = tight.rt.store.get_by_name(name).id
        writer = client(tight, "service", "transit-writer")
        old = writer.secrets.transit.encrypt_data(name=name, plaintext=B(b"old"))["data"][
            "ciphertext"]
        operator.secrets.transit.rotate_key(name=name)
        new = writer.secrets.transit.encrypt_data(name=name, plaintext=B(b"new"))["data"][
            "ciphertext"]
        prefix, _, payload = new.rpartition(":")
        flipped = bytearray(base64.b64decode(payload))
        flipped[-1] ^= 1
        svc = client(tight, "service", "transit-grouped")
        items = [{"ciphertext": old}, {"ciphertext": new}, {"ciphertext": old, "reference": "r"},
                 {"ciphertext": f"{prefix}:{B(bytes(flipped))}"}, {"associated_data": B(b"a")}]
        resp = svc.adapter.request("POST", f"/v1/transit/decrypt/{name}",
                                   json={"batch_input": items}, raise_exception=False)
        assert resp.status_code == 400  # failed items, no partial_failure_response_code
        results = resp.json()["data"]["batch_results"]
        assert [base64.b64decode(r["plaintext"]) for r in results[:3]] == [b"old", b"new", b"old"]
        assert results[2]["reference"] == "r" and all("error" in r for r in results[3:])
        records = audit_records(tight, "transit-grouped")
        assert len(records) == 4 and all(
            (r["action"], r["key_id"], r["details"]["batch_size"]) == ("crypto.decrypt", key_id, 5)
            for r in records)
        where = positions(records)
        assert sorted(where) == list(range(5))  # every item in exactly one record
        assert where[0] is where[2] and where[0]["message"] == "decrypted 2 batch items, 6 bytes"
        assert [(where[i]["outcome"], where[i]["key_version"]) for i in range(5)] == [
            ("success", 1), ("success", 2), ("success", 1), ("error", None), ("error", None)]
        # a rewrap item: one token, a decrypt and an encrypt record
        rewrap = svc.secrets.transit.rewrap_data(name=name, ciphertext=None, batch_input=[
            {"ciphertext": old}, {"ciphertext": old}])["data"]["batch_results"]
        assert all(r["ciphertext"].startswith("vault:v2:") for r in rewrap)
        encrypt = svc.secrets.transit.encrypt_data(name=name, plaintext=None, batch_input=[
            {"plaintext": B(b"x")}] * 3)["data"]["batch_results"]
        assert all(r["key_version"] == 2 for r in encrypt)
        later = [(r["action"], r["key_version"], r["details"]["batch_items"], r["message"])
                 for r in audit_records(tight, "transit-grouped")[4:]]
        assert later == [("crypto.decrypt", 1, "0-1", "decrypted 2 batch items, 6 bytes"),
                         ("crypto.encrypt", 2, "0-1", "encrypted 2 batch items, 6 bytes"),
                         ("crypto.encrypt", 2, "0-2", "encrypted 3 batch items, 3 bytes")]
        # 5 + 2 + 3 items spent the burst of 10 exactly: the next request finds it empty
        with pytest.raises(vault_errors.RateLimitExceeded):
            svc.secrets.transit.encrypt_data(name=name, plaintext=B(b"x"))
    finally:
        tight.close()


@pytest.mark.parametrize(("method", "path", "body", "role", "status", "action"), [
    ("POST", "/v1/transit/encrypt/{key}", {"plaintext": "eA=="}, "auditor", 403,
     "crypto.encrypt"),
    ("POST", "/v1/transit/keys/{key}/rotate", {}, "service", 403, "key.rotate"),
    ("POST", "/v1/transit/encrypt/{key}", {"plaintext": "eA=="}, None, 403, "auth.authenticate"),
    ("POST", "/v1/transit/hmac/{key}", {"input": "eA=="}, "service", 400, "request.refused"),
    ("POST", "/v1/transit/nowhere", {}, "service", 404, "request.refused"),
    ("GET", "/v1/transit/encrypt/{key}", None, "service", 405, "request.refused"),
    ("POST", "/v1/transit/decrypt/{key}", {"ciphertext": "vault:v1:AAAA"}, "service", 400,
     "crypto.decrypt"),
])
def test_a_refused_transit_request_leaves_exactly_one_record(
        srv: LiveServer, operator: Any, method: str, path: str, body: Any, role: str | None,
        status: int, action: str) -> None:
    name = create(operator)
    rid = f"transit-refusal-{secrets.token_hex(8)}"
    answer = srv.call(method, path.format(key=name), body, role=role,
                      headers={"X-Request-ID": rid})
    assert answer[0] == status and isinstance(answer[2]["errors"], list), answer
    audited = records_of(srv, rid)
    assert [r["action"] for r in audited] == [action], audited


def test_fail_closed_when_the_audit_log_cannot_take_a_record(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """No record, no answer: a batch, a rotation and a data key all answer Vault's 503 shape,
    and the rotation did not happen."""
    tmp = tmp_path_factory.mktemp("transit-audit")
    broken = LiveServer(tmp, key_store="filesystem")
    try:
        name = create(client(broken, "operator"))
        live = sorted((broken.data_dir / "audit").glob("audit-*.jsonl"))[-1]
        copy = live.read_bytes()
        live.unlink()
        live.write_bytes(copy)  # another inode underneath the sink: it refuses every record
        calls = [("POST", f"/v1/transit/encrypt/{name}",
                  {"batch_input": [{"plaintext": B(b"1")}, {"plaintext": B(b"2")}]}, "service"),
                 ("POST", f"/v1/transit/datakey/plaintext/{name}", {}, "service"),
                 ("POST", f"/v1/transit/keys/{name}/rotate", {}, "operator")]
        for method, path, body, role in calls:
            status, _, answer = broken.call(method, path, body, role=role)
            assert status == 503 and "plaintext" not in json.dumps(answer), (path, answer)
            assert list(answer) == ["errors"], answer
        assert broken.rt.store.get_by_name(name).primary_version == 1
    finally:
        broken.close()


def test_errors_say_the_real_limits_in_vault_shape(srv: LiveServer, operator: Any,
                                                    service: Any) -> None:
    """Every error under /v1/transit/ is Vault's {"errors": [...]}, refusals made while the
    request was read included; each message states the limit that applies."""
    name = create(operator)
    token = srv.token("service", "transit-app")
    form = srv.call("POST", f"/v1/transit/encrypt/{name}", token=token, raw=b"plaintext=eA==",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form[0] == 400 and isinstance(form[2]["errors"], list) and "error" not in form[2]
    for fields, status in (([("Content-Type", "application/json"),
                             ("Content-Length", "999999999")], 413),
                           ([("Content-Length", "2"), ("Content-Length", "3")], 400)):
        conn = srv.connect()
        try:
            conn.putrequest("POST", f"/v1/transit/encrypt/{name}")
            conn.putheader("X-Vault-Token", token)
            for field, value in fields:
                conn.putheader(field, value)
            conn.endheaders()
            resp = conn.getresponse()
            body = json.loads(resp.read())
        finally:
            conn.close()
        assert resp.status == status and isinstance(body["errors"], list), body
    transit = service.secrets.transit
    for size in (10**9, 100000):
        with pytest.raises(vault_errors.InvalidRequest, match="must be an integer from 1 to 65536,"):
            transit.generate_random_bytes(n_bytes=size)
    with pytest.raises(vault_errors.InvalidRequest, match="must be an integer from 1 to 65536,"):
        service.adapter.post("/v1/transit/random", json={"bytes": 100000})
    for bits in ("abc", 4096, 192):
        with pytest.raises(vault_errors.InvalidRequest, match="bits must be one of 128, 256, 512"):
            service.adapter.post(f"/v1/transit/datakey/plaintext/{name}", json={"bits": bits})
    ciphertext = transit.encrypt_data(name=name, plaintext=B(b"x"))["data"]["ciphertext"]
    unknown = "vault:v999:" + ciphertext.split(":", 2)[2]
    with pytest.raises(vault_errors.InvalidRequest, match="key has no version 999"):
        transit.decrypt_data(name=name, ciphertext=unknown)
    batch = service.adapter.request("POST", f"/v1/transit/decrypt/{name}", json={
        "batch_input": [{"ciphertext": unknown}, {"ciphertext": ciphertext}],
        "partial_failure_response_code": 207}, raise_exception=False)
    assert batch.status_code == 207
    assert batch.json()["data"]["batch_results"][0]["error"] == "key has no version 999"
