"""The Python SDK where scripts and pipelines meet it: tokens as secret files hold them, the
environment as the CLI reads it, bodies over the server's limit, Retry-After as a date."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from live import LiveServer

from ferrohsm.client import Client, ClientError, PayloadTooLarge
from ferrohsm.client_errors import retry_after


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("sdk-edges"))
    server.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt",
                                     "name": "sdk-edges"})
    yield server
    server.close()


def url(live: LiveServer) -> str:
    return f"https://127.0.0.1:{live.port}"


def test_a_token_read_with_its_newline_works_and_a_bad_one_is_refused_unseen(
        live: LiveServer) -> None:
    token = live.token("service")
    with Client(url(live), token + "\n", ca_cert=str(live.pki.ca_cert)) as hsm:
        assert hsm.encrypt("sdk-edges", b"x")["key_version"] == 1
    for bad in ("\ufeff" + token, token[:20] + "\n" + token[20:], token[:20] + " x"):
        with pytest.raises(ClientError) as refused:
            Client(url(live), bad, ca_cert=str(live.pki.ca_cert))
        assert token[:20] not in str(refused.value) + repr(refused.value)
        assert "cannot carry" in refused.value.message


def test_from_env_reads_the_token_file_and_timeout_as_the_cli_does(live: LiveServer,
                                                                   tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(live.token("service") + "\n")
    env = {"FERROHSM_URL": url(live), "FERROHSM_TOKEN_FILE": str(token_file),
           "FERROHSM_CA_CERT": str(live.pki.ca_cert), "FERROHSM_TIMEOUT": "7.5"}
    with Client.from_env(env) as hsm:
        assert hsm.timeout == 7.5
        assert hsm.encrypt("sdk-edges", b"x")["key_version"] == 1
    with pytest.raises(ClientError, match="cannot read FERROHSM_TOKEN_FILE"):
        Client.from_env({**env, "FERROHSM_TOKEN_FILE": str(tmp_path / "missing")})


def test_a_body_over_the_servers_limit_is_its_413_not_a_transport_failure(
        live: LiveServer) -> None:
    """The server answers 413 and closes while a large body is still going out; that answer
    is what the caller hears, at once (no attempt repeated)."""
    with Client(url(live), live.token("service"), ca_cert=str(live.pki.ca_cert)) as hsm:
        for size in (2_000_000, 20_000_000):
            started = time.monotonic()
            with pytest.raises(PayloadTooLarge, match="data key"):
                hsm.encrypt("sdk-edges", b"x" * size)
            assert time.monotonic() - started < 5


def test_retry_after_as_seconds_or_an_http_date() -> None:
    assert retry_after("2") == 2.0 and retry_after("-1") == 0.0
    later = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= (retry_after(later) or 0) <= 10.5
    assert retry_after("soon") is None and retry_after(None) is None


def _refused_once(hsm: Client, says: str) -> None:
    """A call that reads and one that changes state: each is the certificate's clear refusal,
    tried once, not "cannot reach" and not "may or may not have been carried out" (the server
    never read the request)."""
    from ferrohsm.client import TransportError
    calls: list[Callable[[], object]] = [
        hsm.list_keys, lambda: hsm.create_key("aes-256-gcm", "encrypt")]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(TransportError) as refused:
            call()
        assert "refused this client's TLS certificate" in refused.value.message
        assert says in refused.value.message
        assert "may or may not" not in refused.value.message
        assert time.monotonic() - started < 2  # not retried with backoff


def test_a_refused_client_certificate_is_said_as_such(tmp_path: Path) -> None:
    """Mutual TLS without a certificate: the TLS alert is named with the way out."""
    from ferrohsm.tls.devpki import make_dev_pki
    clients = make_dev_pki(tmp_path / "clients")
    srv = LiveServer(tmp_path / "srv", overrides={("tls", "client_ca"): str(clients.ca_cert),
                                                  ("tls", "require_client_cert"): True})
    try:
        with Client(url(srv), srv.token("administrator"), ca_cert=str(srv.pki.ca_cert)) as hsm:
            _refused_once(hsm, "--client-cert")
    finally:
        srv.close()


def test_a_client_certificate_without_client_auth_is_said_as_such(tmp_path: Path) -> None:
    """A certificate the server refuses for its purpose (serverAuth only): the same."""
    from certkit import TestCA, install
    clients = TestCA(tmp_path / "clients")
    leaf = clients.leaf(["client"])  # ExtendedKeyUsage: serverAuth alone
    cert, key = tmp_path / "client.pem", tmp_path / "client-key.pem"
    install(leaf, cert, key)
    srv = LiveServer(tmp_path / "srv", overrides={("tls", "client_ca"): str(clients.cert_file),
                                                  ("tls", "require_client_cert"): True})
    try:
        with Client(url(srv), srv.token("administrator"), ca_cert=str(srv.pki.ca_cert),
                    client_cert=str(cert), client_key=str(key)) as hsm:
            _refused_once(hsm, "UNSUPPORTED_CERTIFICATE")
    finally:
        srv.close()


@pytest.mark.parametrize("timeout", [-1, 0, float("nan"), float("inf")])
def test_a_timeout_that_is_no_number_of_seconds_is_refused_at_once(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout must be a number of seconds above 0"):
        Client("https://127.0.0.1:1", "t", timeout=timeout)
    with pytest.raises(ValueError, match="FERROHSM_TIMEOUT"):
        Client.from_env({"FERROHSM_URL": "https://127.0.0.1:1", "FERROHSM_TIMEOUT": str(timeout)})
