"""Every role × every /v1 route over real TLS: the expected 2xx, or 403.

The expectations are written out here route by route, from the README's role table, NOT derived
from ``authz.PERMISSIONS``: a change to one without the other fails. Each cell gets fresh
resources (a new key in the right state, a ciphertext, a signature…) made by separate setup
principals, so no cell depends on another.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from live import LiveServer

from ferrohsm.api.transit import is_vault
from ferrohsm.crypto.importwrap import wrap_for_import

ROLES = ("administrator", "operator", "auditor", "service")
A, AO, AOU, ALL, S = ({"administrator"}, {"administrator", "operator"},
                      {"administrator", "operator", "auditor"}, set(ROLES), {"service"})
AU = {"administrator", "auditor"}  # the audit log's readers
Call = tuple[str, str, Any]  # method, path, body


def B(data: bytes) -> str:  # noqa: N802  one letter, like b"": a base64 literal in bodies
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("matrix"), overrides={
        ("rate_limit", "requests_per_second"): 100000.0, ("rate_limit", "burst"): 100000})
    yield server
    server.close()


def ok(result: tuple[int, dict[str, str], Any], status: int = 200) -> Any:
    assert result[0] == status, result
    return result[2]


def admin(srv: LiveServer, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    return ok(srv.call(method, path, body, token=srv.token("administrator", "setup-admin")),
              status)


def service(srv: LiveServer, path: str, body: Any) -> Any:
    return ok(srv.call("POST", path, body, token=srv.token("service", "setup-service")))


def new_key(srv: LiveServer, algorithm: str = "aes-256-gcm", usage: str = "encrypt") -> str:
    key = admin(srv, "POST", "/v1/keys", {"algorithm": algorithm, "usage": usage}, 201)
    return key["id"]  # type: ignore[no-any-return]  # parsed JSON


def _rollback(srv: LiveServer) -> Call:
    key = new_key(srv)
    admin(srv, "POST", f"/v1/keys/{key}/rotate", {})
    return "POST", f"/v1/keys/{key}/rollback", {"version": 1}


def _cancel(srv: LiveServer) -> Call:
    key = new_key(srv)
    admin(srv, "POST", f"/v1/keys/{key}/destroy", {})
    return "POST", f"/v1/keys/{key}/cancel-destroy", {}


def _destroy_version(srv: LiveServer) -> Call:
    key = new_key(srv)
    admin(srv, "POST", f"/v1/keys/{key}/rotate", {})
    return "POST", f"/v1/keys/{key}/versions/1/destroy", {}


def _decrypt(srv: LiveServer) -> Call:
    key = new_key(srv)
    ct = service(srv, f"/v1/keys/{key}/encrypt", {"plaintext": B(b"matrix")})["ciphertext"]
    return "POST", f"/v1/keys/{key}/decrypt", {"ciphertext": ct}


def _verify(srv: LiveServer) -> Call:
    key = new_key(srv, "ec-p256", "sign")
    sig = service(srv, f"/v1/keys/{key}/sign", {"message": B(b"m")})["signature"]
    return "POST", f"/v1/keys/{key}/verify", {"message": B(b"m"), "signature": sig}


def _unwrap(srv: LiveServer) -> Call:
    key = new_key(srv, usage="wrap")
    wrapped = service(srv, f"/v1/keys/{key}/wrap", {"key_material": B(b"k" * 32)})["wrapped"]
    return "POST", f"/v1/keys/{key}/unwrap", {"wrapped": wrapped}


def _import(srv: LiveServer) -> Call:
    job = admin(srv, "POST", "/v1/import-jobs", {}, 201)
    wrapped = wrap_for_import(job["public_key"], "RSA_OAEP_SHA256", secrets.token_bytes(32))
    return "POST", f"/v1/keys/{new_key(srv)}/import", {
        "import_job_id": job["import_job_id"], "wrapping_algorithm": "RSA_OAEP_SHA256",
        "wrapped_material": B(wrapped)}


def on_key(method: str, suffix: str, body: Any = None, algorithm: str = "aes-256-gcm",
           usage: str = "encrypt") -> Callable[[LiveServer], Call]:
    return lambda srv: (method, f"/v1/keys/{new_key(srv, algorithm, usage)}{suffix}", body)


# (method, route template) → (roles that get 2xx, how to make the request)
MATRIX: dict[tuple[str, str], tuple[set[str], Callable[[LiveServer], Call]]] = {
    ("POST", "/v1/keys"): (AO, lambda srv: ("POST", "/v1/keys",
                                            {"algorithm": "aes-256-gcm", "usage": "encrypt"})),
    ("GET", "/v1/keys"): (ALL, lambda srv: ("GET", "/v1/keys", None)),
    ("GET", "/v1/keys/{key}"): (ALL, on_key("GET", "")),
    ("PATCH", "/v1/keys/{key}"): (AO, on_key("PATCH", "", {"description": "matrix"})),
    ("POST", "/v1/keys/{key}/rotate"): (AO, on_key("POST", "/rotate", {})),
    ("POST", "/v1/keys/{key}/rollback"): (AO, _rollback),
    ("POST", "/v1/keys/{key}/revoke"): (AO, on_key("POST", "/revoke", {"reason": "matrix"})),
    ("POST", "/v1/keys/{key}/destroy"): (A, on_key("POST", "/destroy", {})),
    ("POST", "/v1/keys/{key}/cancel-destroy"): (A, _cancel),
    ("POST", "/v1/keys/{key}/versions/{n}/destroy"): (A, _destroy_version),
    ("GET", "/v1/keys/{key}/public-key"): (ALL, on_key("GET", "/public-key", None, "ec-p256",
                                                       "sign")),
    ("POST", "/v1/keys/{key}/encrypt"): (S, on_key("POST", "/encrypt", {"plaintext": B(b"x")})),
    ("POST", "/v1/keys/{key}/decrypt"): (S, _decrypt),
    ("POST", "/v1/keys/{key}/sign"): (S, on_key("POST", "/sign", {"message": B(b"x")},
                                                "ec-p256", "sign")),
    ("POST", "/v1/keys/{key}/verify"): (S, _verify),
    ("POST", "/v1/keys/{key}/wrap"): (S, on_key("POST", "/wrap", {"key_material": B(b"k" * 32)},
                                                usage="wrap")),
    ("POST", "/v1/keys/{key}/unwrap"): (S, _unwrap),
    ("POST", "/v1/keys/{key}/data-key"): (S, on_key("POST", "/data-key", {"bits": 256})),
    ("GET", "/v1/openapi.json"): (ALL, lambda srv: ("GET", "/v1/openapi.json", None)),
    ("POST", "/v1/tokens/revoke"): (A, lambda srv: ("POST", "/v1/tokens/revoke",
                                                    {"jti": secrets.token_hex(8)})),
    ("GET", "/v1/audit"): (AU, lambda srv: ("GET", "/v1/audit?limit=5", None)),
    ("GET", "/v1/whoami"): (ALL, lambda srv: ("GET", "/v1/whoami", None)),
    ("POST", "/v1/sys/backup"): (A, lambda srv: ("POST", "/v1/sys/backup", None)),
    ("GET", "/v1/approvals"): (AOU, lambda srv: ("GET", "/v1/approvals?state=pending", None)),
    ("POST", "/v1/import-jobs"): (AO, lambda srv: ("POST", "/v1/import-jobs", {})),
    ("POST", "/v1/keys/{key}/import"): (AO, _import),
}
# Routes whose allowed roles need a pending approval to reach 2xx; until the matrix creates one,
# an allowed role must get past authorization (anything but 401/403) and the others get 403.
PAST_AUTHZ_ONLY: dict[tuple[str, str], tuple[set[str], Callable[[LiveServer], Call]]] = {
    ("POST", "/v1/approvals/{id}/approve"): (AO, lambda srv: (
        "POST", "/v1/approvals/00000000-0000-4000-8000-000000000000/approve", {})),
    ("POST", "/v1/approvals/{id}/deny"): (AO, lambda srv: (
        "POST", "/v1/approvals/00000000-0000-4000-8000-000000000000/deny", {})),
    # an environment-variable master key: nothing to unseal (the seal status)
    ("POST", "/v1/sys/unseal"): (ALL, lambda srv: ("POST", "/v1/sys/unseal",
                                                   {"share": "fhsm1-00000000-1-AAAA"})),
    ("GET", "/v1/approvals/{id}"): (AOU, lambda srv: (
        "GET", "/v1/approvals/00000000-0000-4000-8000-000000000000", None)),
    # this server's master key is in the environment: nothing to seal or rekey here (409)
    ("POST", "/v1/sys/seal"): (A, lambda srv: ("POST", "/v1/sys/seal", None)),
    ("POST", "/v1/sys/rekey"): (A, lambda srv: ("POST", "/v1/sys/rekey", None)),
}


def routed(srv: LiveServer) -> set[tuple[str, str]]:
    """The native /v1 routes; the Vault-compatible ones answer in Vault's shapes and have their
    own role matrix (tests/integration/test_transit_hvac.py)."""
    return {(r.method, r.template) for r in srv.rt.router.routes()
            if r.template.startswith("/v1/") and not is_vault(r.template)}


def test_every_v1_route_has_a_row(srv: LiveServer) -> None:
    missing = routed(srv) - set(MATRIX) - set(PAST_AUTHZ_ONLY)
    assert not missing, f"add these routes to the auth matrix: {sorted(missing)}"


@pytest.mark.parametrize("route", sorted({**MATRIX, **PAST_AUTHZ_ONLY}),
                         ids=lambda r: f"{r[0]} {r[1]}")
@pytest.mark.parametrize("role", ROLES)
def test_role_on_route(srv: LiveServer, role: str, route: tuple[str, str]) -> None:
    if route not in routed(srv):
        pytest.skip(f"{route} is not routed yet")
    allowed, prepare = MATRIX.get(route) or PAST_AUTHZ_ONLY[route]
    method, path, body = prepare(srv)
    status, _, reply = srv.call(method, path, body, token=srv.token(role, f"matrix-{role}"))
    if role not in allowed:
        assert status == 403 and reply["error"]["code"] == "forbidden", (status, reply)
    elif route in PAST_AUTHZ_ONLY:
        assert status not in (401, 403), (status, reply)
    else:
        assert 200 <= status < 300, (status, reply)


def test_unauthenticated_routes_need_no_token(srv: LiveServer) -> None:
    for route in srv.rt.router.routes():
        if not route.template.startswith("/v1/") and route.method == "GET" \
                and not route.is_prefix:
            status, headers, body = srv.call("GET", route.template, role=None)
            assert status == 200 or (status, headers.get("location")) in (
                (308, "/ui/"), (302, "/ui/")) or (
                route.template == "/readyz" and body["status"] == "not_ready"), \
                route.template  # this server never went through `serve`'s start: not ready


def test_every_v1_route_refuses_a_missing_token(srv: LiveServer) -> None:
    for method, template in sorted(routed(srv)):
        path = template.replace("{key}", "some-key").replace("{id}", "some-id") \
            .replace("{n}", "1")
        status, headers, _ = srv.call(method, path, {} if method != "GET" else None, role=None)
        assert status == 401 and headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_service_tags_limit_the_keys_a_service_sees(srv: LiveServer) -> None:
    prod = admin(srv, "POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt",
                                          "tags": ["prod"]}, 201)["id"]
    dev = admin(srv, "POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt",
                                         "tags": ["dev"]}, 201)["id"]
    scoped = srv.token("service", "scoped-svc", tags=["prod"])
    body = {"plaintext": B(b"x")}
    assert srv.call("POST", f"/v1/keys/{prod}/encrypt", body, token=scoped)[0] == 200
    assert srv.call("POST", f"/v1/keys/{dev}/encrypt", body, token=scoped)[0] == 404
    assert srv.call("GET", f"/v1/keys/{dev}", token=scoped)[0] == 404
    listed = ok(srv.call("GET", "/v1/keys?limit=1000", token=scoped))["keys"]
    assert prod in {k["id"] for k in listed} and dev not in {k["id"] for k in listed}
    nothing = srv.token("service", "empty-tags-svc", tags=[])
    assert srv.call("POST", f"/v1/keys/{prod}/encrypt", body, token=nothing)[0] == 404


def test_out_of_scope_key_by_name_answers_exactly_as_a_missing_key(srv: LiveServer) -> None:
    """A tag-scoped token cannot learn that a name (or id) exists outside its tags: the same
    404 and message as for no key at all, while the audit record names the key."""
    name = f"hidden-{secrets.token_hex(4)}"
    dev = admin(srv, "POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt",
                                         "name": name, "tags": ["dev"]}, 201)["id"]
    scoped = srv.token("service", "scoped-probe", tags=["prod"])
    body = {"plaintext": B(b"x")}
    before = srv.rt.audit.head()[0]
    for ref, missing in ((name, f"nowhere-{secrets.token_hex(4)}"),
                         (dev, "01900000-0000-7000-8000-000000000000")):
        for method, path, payload in (("POST", "/v1/keys/{}/encrypt", body),
                                      ("GET", "/v1/keys/{}", None)):
            hidden = srv.call(method, path.format(ref), payload, token=scoped)
            absent = srv.call(method, path.format(missing), payload, token=scoped)
            assert hidden[0] == absent[0] == 404
            del hidden[2]["error"]["request_id"], absent[2]["error"]["request_id"]
            assert hidden[2] == absent[2]
            assert dev not in json.dumps(hidden[2]) and name not in json.dumps(hidden[2])
    records = [r for r in srv.rt.audit.read(before, 1000) if r["actor"] == "scoped-probe"
               and r.get("key_id") == dev]
    assert len(records) == 4 and all(r["outcome"] == "denied" for r in records)
    assert all("tags do not cover" in r["message"] for r in records)
