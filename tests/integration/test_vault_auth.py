"""Vault's token lookup (``auth/token/lookup-self``) and the Vault paths FerroHSM does not serve,
with hvac over TLS: ``Client.is_authenticated()`` is that lookup, and was always False before
FerroHSM served it."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from live import LiveServer
from test_batch import records_of

hvac = pytest.importorskip("hvac", reason="hvac is a test dependency: pip install -e '.[test]'")
LOOKUP = "/v1/auth/token/lookup-self"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("vault-auth"))
    yield server
    server.close()


def client(srv: LiveServer, token: str) -> Any:
    return hvac.Client(url=f"https://127.0.0.1:{srv.port}", token=token,
                       verify=str(srv.pki.ca_cert))


def test_is_authenticated_with_a_valid_token_and_not_once_revoked(srv: LiveServer) -> None:
    jti = f"vault-auth-{secrets.token_hex(6)}"
    token = srv.token("service", "hvac-app", jti=jti, tags=["prod", "dev"], ttl=600)
    vault = client(srv, token)
    assert vault.is_authenticated() is True
    status, _, revoked = srv.call("POST", "/v1/tokens/revoke", {"jti": jti})
    assert status == 200 and revoked["revoked"], revoked
    assert vault.is_authenticated() is False
    assert client(srv, "not-a-token").is_authenticated() is False
    expired = srv.token("service", "hvac-old", ttl=60, now=time.time() - 3600)
    assert client(srv, expired).is_authenticated() is False


def test_lookup_self_describes_the_token_truthfully_and_never_echoes_it(srv: LiveServer) -> None:
    jti = f"vault-auth-{secrets.token_hex(6)}"
    issued = int(time.time())
    token = srv.token("service", "hvac-lookup", jti=jti, tags=["prod", "dev"], ttl=600,
                      now=issued)
    answer = client(srv, token).auth.token.lookup_self()
    assert set(answer) >= {"request_id", "lease_id", "renewable", "data", "wrap_info", "auth"}
    data = answer["data"]
    assert token not in str(answer) and data["id"] == ""
    assert (data["display_name"], data["policies"], data["meta"], data["accessor"]) == (
        "hvac-lookup", ["service"], {"tags": "dev,prod"}, jti)
    assert (data["type"], data["renewable"], data["creation_time"], data["creation_ttl"]) == (
        "service", False, issued, 600)
    assert data["expire_time"] == time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                time.gmtime(issued + 600))
    assert data["issue_time"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued))
    assert 0 < data["ttl"] <= 600
    assert data["ferrohsm"]["subject"] == "hvac-lookup"  # the native whoami, as key info does
    # POST as Vault also takes it, Authorization as everywhere; audited as whoami
    rid = f"lookup-{secrets.token_hex(6)}"
    status, _, posted = srv.call("POST", LOOKUP, None, token=token,
                                 headers={"X-Request-ID": rid})
    assert status == 200 and posted["data"]["accessor"] == jti, posted
    assert [(r["action"], r["outcome"], r["actor"]) for r in records_of(srv, rid)] == [
        ("token.whoami", "success", "hvac-lookup")]


def test_a_refused_token_hears_vaults_403_and_is_recorded(srv: LiveServer) -> None:
    rid = f"lookup-{secrets.token_hex(6)}"
    status, _, body = srv.call("GET", LOOKUP, role=None,
                               headers={"X-Vault-Token": "not-a-token", "X-Request-ID": rid})
    assert status == 403 and body["errors"][0].startswith("permission denied"), body
    assert [r["action"] for r in records_of(srv, rid)] == ["auth.authenticate"]
    status, _, body = srv.call("GET", LOOKUP, role=None)
    assert status == 403 and body["errors"][0].startswith("permission denied"), body


def test_unserved_vault_paths_answer_in_vaults_404_shape(srv: LiveServer) -> None:
    """Only Vault clients call /v1/sys/ and /v1/auth/ paths FerroHSM does not serve (hvac's
    health check, a Vault login): they answer Vault's shape. FerroHSM's own /v1/sys/ routes
    keep the native shapes."""
    for method, path in (("GET", "/v1/sys/health"), ("GET", "/v1/sys/mounts"),
                         ("POST", "/v1/auth/approle/login"), ("GET", "/v1/auth/token/lookup"),
                         ("POST", "/v1/sys/nothing/here")):
        status, _, body = srv.call(method, path, {} if method == "POST" else None,
                                   role="service")
        assert (status, set(body)) == (404, {"errors"}), (path, body)
        assert isinstance(body["errors"], list), body
    health = client(srv, srv.token("service")).sys.read_health_status(method="GET")
    assert health.status_code == 404 and set(health.json()) == {"errors"}  # hvac does not raise
    status, _, body = srv.call("GET", "/v1/sys/seal", role="administrator")  # native route
    assert status == 405 and set(body) == {"error"}, body
    status, _, body = srv.call("GET", "/v1/nothing", role="service")  # native 404
    assert status == 404 and body["error"]["code"] == "not_found", body
    status, _, body = srv.call("DELETE", LOOKUP, role="service")
    assert status == 405 and isinstance(body["errors"], list), body
