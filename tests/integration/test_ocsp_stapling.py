"""OCSP stapling against ``openssl ocsp`` as the real responder (a test CA whose leaves carry its
URL in AIA, a delegated responder certificate), checked with ``openssl s_client -status``:
good, kept while the responder is down, dropped at nextUpdate, revoked; it follows a
certificate reload; the pyOpenSSL path keeps keep-alive and client certificates working."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from certkit import (
    Leaf,
    OcspResponder,
    TestCA,
    free_port,
    install,
    s_client_status,
    served_certificate,
    wait_for,
)
from cryptography.x509.oid import ExtendedKeyUsageOID
from tlsserver import TlsServer

from ferrohsm.tls.stapler import OcspStapler, Staple

STAPLED_GOOD = ("OCSP Response Status: successful", "Cert Status: good")


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


@pytest.fixture
def responder(tmp_path: Path, ca: TestCA) -> Iterator[OcspResponder]:
    ocsp = OcspResponder(ca, tmp_path / "ocsp")
    yield ocsp
    ocsp.stop()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    live = tmp_path / "live"
    live.mkdir()
    return live / "server.pem", live / "server-key.pem"


@pytest.fixture
def leaf(ca: TestCA, responder: OcspResponder, files: tuple[Path, Path]) -> Leaf:
    first = ca.leaf(ocsp_url=responder.url)
    responder.add(first.cert)
    responder.start()
    install(first, *files)
    return first


def stapling_server(tmp_path: Path, files: tuple[Path, Path], ca: TestCA,
                    **tls: Any) -> TlsServer:
    return TlsServer(tmp_path, *files, ca.cert_file, ocsp_staple=True, ocsp_refresh_seconds=1,
                     reload_seconds=0.2, **tls)


def ocsp_state(srv: TlsServer) -> str:
    return str(srv.health()["tls"]["ocsp"])


@pytest.mark.slow
def test_good_kept_while_the_responder_is_down_dropped_at_next_update_then_revoked(
        tmp_path: Path, ca: TestCA, responder: OcspResponder, files: tuple[Path, Path],
        leaf: Leaf, caplog: pytest.LogCaptureFixture) -> None:
    srv = stapling_server(tmp_path, files, ca)
    try:
        wait_for(lambda: ocsp_state(srv) == "good", 15, "a good OCSP response")
        out = s_client_status(srv.port, ca.cert_file)
        assert all(line in out for line in STAPLED_GOOD), out
        assert "Verify return code: 0 (ok)" in out
        assert 'ferrohsm_tls_ocsp_status{status="good"} 1' in srv.metric("ferrohsm_tls_ocsp")
        assert srv.events("tls.ocsp_status")[-1]["details"]["status"] == "good"
        next_update = srv.health()["tls"]["ocsp_next_update"]

        responder.stop()  # down: the last good response stays stapled until its nextUpdate
        wait_for(lambda: any("OCSP refresh failed" in r.getMessage() for r in caplog.records),
                 10, "a failed refresh")
        assert ocsp_state(srv) == "good"
        assert all(line in s_client_status(srv.port, ca.cert_file) for line in STAPLED_GOOD)
        wait_for(lambda: ocsp_state(srv) == "unavailable", 75, f"nextUpdate ({next_update})",
                 interval=1)
        out = s_client_status(srv.port, ca.cert_file)
        assert "OCSP response: no response sent" in out, out  # never an expired staple
        assert "Verify return code: 0 (ok)" in out  # and the server keeps serving
        assert srv.events("tls.ocsp_status")[-1]["details"]["status"] == "unavailable"

        responder.add(leaf.cert, revoked=True)  # openssl ocsp 3.0 reads its index at start
        with caplog.at_level(logging.ERROR, logger="ferrohsm.tls"):
            responder.start()
            wait_for(lambda: ocsp_state(srv) == "revoked", 20, "the revocation")
        assert any(r.levelno == logging.ERROR and "revoked" in r.getMessage()
                   for r in caplog.records)
        out = s_client_status(srv.port, ca.cert_file)
        assert "OCSP Response Status: successful" in out and "Cert Status: revoked" in out, out
        assert srv.health()["status"] == "ok"  # the operator decides; the server keeps serving
        assert 'ferrohsm_tls_ocsp_status{status="revoked"} 1' in srv.metric("ferrohsm_tls_ocsp")
        record = srv.events("tls.ocsp_status")[-1]
        assert record["details"]["status"] == "revoked" and record["outcome"] == "error"
        assert record["details"]["serial"] == leaf.serial
    finally:
        srv.close()


def test_stapling_follows_a_reload_and_keeps_alive(tmp_path: Path, ca: TestCA,
                                                   responder: OcspResponder,
                                                   files: tuple[Path, Path], leaf: Leaf) -> None:
    srv = stapling_server(tmp_path, files, ca)
    try:
        wait_for(lambda: ocsp_state(srv) == "good", 15, "a good OCSP response")
        held = srv.connect()
        assert srv.get(held, "/healthz")[0] == 200
        second = ca.leaf(ocsp_url=responder.url)
        responder.add(second.cert)
        responder.stop()  # openssl ocsp 3.0 reads its index at start
        responder.start()
        install(second, *files)
        wait_for(lambda: served_certificate(srv.port).serial_number == second.cert.serial_number,
                 10, "the new pair")
        wait_for(lambda: ocsp_state(srv) == "good", 15, "a good response for the new pair")
        assert srv.health()["tls"]["serial"] == second.serial
        out = s_client_status(srv.port, ca.cert_file)
        assert all(line in out for line in STAPLED_GOOD), out
        for _ in range(3):  # the connection from before the reload, on the pyOpenSSL path
            assert srv.get(held, "/healthz")[0] == 200
        held.close()
    finally:
        srv.close()


def test_client_certificates_on_the_stapling_path(tmp_path: Path, ca: TestCA,
                                                  responder: OcspResponder,
                                                  files: tuple[Path, Path], leaf: Leaf) -> None:
    client = ca.leaf(("client",), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    (tmp_path / "client.pem").write_bytes(client.chain_pem)
    (tmp_path / "client-key.pem").write_bytes(client.key_pem)
    srv = stapling_server(tmp_path, files, ca, client_ca=str(ca.cert_file),
                          require_client_cert=True)
    try:
        context = srv.context()
        with pytest.raises((ssl.SSLError, ConnectionError)):  # no certificate: refused
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert not tls.recv(100)
        context.load_cert_chain(tmp_path / "client.pem", tmp_path / "client-key.pem")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert tls.recv(100).startswith(b"HTTP/1.1 200")
            assert tls.version() == "TLSv1.3"
        # plain HTTP to the TLS port is told so on the stapling path too
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw:
            raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 400")
    finally:
        srv.close()


def test_no_responder_url_means_unavailable_not_a_failure(tmp_path: Path, ca: TestCA,
                                                          files: tuple[Path, Path]) -> None:
    install(ca.leaf(), *files)  # no AIA OCSP URL, no ocsp_responder
    srv = stapling_server(tmp_path, files, ca)
    try:
        assert ocsp_state(srv) == "unavailable"
        out = s_client_status(srv.port, ca.cert_file)
        assert "OCSP response: no response sent" in out and "Verify return code: 0 (ok)" in out
    finally:
        srv.close()


def test_a_responder_that_is_down_is_retried_with_backoff_and_jitter(ca: TestCA) -> None:
    leaf = ca.leaf(ocsp_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    clock = [1000.0]
    stapler = OcspStapler("", refresh_seconds=8, timeout=2, clock=lambda: clock[0])
    stapler.track(leaf.cert, ca.cert, Staple())
    delays = []
    for _ in range(6):
        delays.append(stapler.step())  # a real connection refused each time
        clock[0] += delays[-1]
    for attempt, delay in enumerate(delays):
        ceiling = min(8.0, 2.0 ** attempt)  # 1 s doubling, capped at ocsp_refresh_seconds
        assert ceiling / 2 <= delay <= ceiling, delays
    assert stapler.state == "unavailable" and stapler.status() == {"ocsp": "unavailable"}


def test_the_status_reports_what_is_stapled_by_the_clock(ca: TestCA) -> None:
    """A refresh that hangs must not leave a response past its nextUpdate reported as good:
    the status looks at the staple itself, as each handshake does."""
    leaf = ca.leaf(ocsp_url="http://127.0.0.1:1")
    clock = [1000.0]
    stapler = OcspStapler("", refresh_seconds=8, timeout=2, clock=lambda: clock[0])
    staple = Staple()
    stapler.track(leaf.cert, ca.cert, staple)
    staple.der, staple.expires = b"response", 1030.0
    stapler._set_state("good", "a response")  # as a good fetch leaves it
    assert stapler.status()["ocsp"] == "good"
    clock[0] = 1031.0  # the thread is stuck in a fetch: nobody dropped the staple
    assert stapler.status() == {"ocsp": "unavailable"}


def test_a_context_rebuilt_for_the_same_certificate_keeps_its_response(ca: TestCA) -> None:
    """A new client CA bundle rebuilds the context, not the certificate: the response in hand
    stays stapled (the responder may be down meanwhile), with its state; a new certificate
    starts over."""
    leaf = ca.leaf(ocsp_url="http://127.0.0.1:1")
    clock = [1000.0]
    stapler = OcspStapler("", refresh_seconds=8, timeout=2, clock=lambda: clock[0])
    first = Staple()
    stapler.track(leaf.cert, ca.cert, first)
    first.der, first.expires = b"response", 1300.0
    stapler._set_state("good", "a response")
    rebuilt = Staple()
    stapler.track(leaf.cert, ca.cert, rebuilt)
    assert (rebuilt.der, rebuilt.expires) == (b"response", 1300.0)
    assert stapler.status()["ocsp"] == "good"
    renewed = Staple()
    stapler.track(ca.leaf(ocsp_url="http://127.0.0.1:1").cert, ca.cert, renewed)
    assert renewed.der == b"" and stapler.status() == {"ocsp": "unavailable"}


def test_a_response_fetched_while_the_context_was_rebuilt_goes_to_the_served_staple(
        ca: TestCA) -> None:
    """A fetch in flight while a client CA reload rebuilt the context for the same certificate
    wrote into the staple it had read, no longer served: stapling stopped until the next
    refresh, an hour away, and no state change said so."""
    import datetime as dt

    from ferrohsm.tls.ocsp import OcspAnswer
    leaf = ca.leaf(ocsp_url="http://127.0.0.1:1")
    clock = [1000.0]
    stapler = OcspStapler("", refresh_seconds=3600, timeout=2, clock=lambda: clock[0])
    read_by_the_fetch = Staple()
    stapler.track(leaf.cert, ca.cert, read_by_the_fetch)
    served = Staple()
    stapler.track(leaf.cert, ca.cert, served)  # the rebuild, while the fetch is in flight
    moment = dt.datetime.fromtimestamp(clock[0], dt.UTC)
    answer = OcspAnswer(b"fresh", "good", moment, moment + dt.timedelta(hours=1))
    stapler._succeeded(answer, leaf.cert, read_by_the_fetch, clock[0])
    assert served.der == b"fresh" and stapler.status()["ocsp"] == "good"
