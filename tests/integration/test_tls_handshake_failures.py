"""Failed TLS handshakes leave a trace: ``ferrohsm_tls_handshake_failures_total{reason}``
(every reason present from the start, at zero) and one warning per reason per minute naming
the peer and the reason. Real handshakes against a real server requiring client certificates.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from certkit import TestCA, install, now, wait_for
from cryptography.x509.oid import ExtendedKeyUsageOID
from tlsserver import TlsServer

from ferrohsm.api.tlsfail import classify
from ferrohsm.telemetry.metrics import TLS_HANDSHAKE_FAILURE_REASONS

METRIC = "ferrohsm_tls_handshake_failures_total"


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


@pytest.fixture
def server(tmp_path: Path, ca: TestCA) -> Iterator[TlsServer]:
    live = tmp_path / "live"
    live.mkdir()
    install(ca.leaf(), live / "server.pem", live / "server-key.pem")
    good = ca.leaf(("client",), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    (ca.directory / "good.pem").write_bytes(good.chain_pem)
    (ca.directory / "good-key.pem").write_bytes(good.key_pem)
    srv = TlsServer(tmp_path, live / "server.pem", live / "server-key.pem", ca.cert_file,
                    client_ca=str(ca.cert_file), require_client_cert=True)
    yield srv
    srv.close()


def counts(srv: TlsServer) -> dict[str, float]:
    context = srv.context()  # the metrics need a client certificate too
    context.load_cert_chain(srv.ca_file.parent / "good.pem", srv.ca_file.parent / "good-key.pem")
    out: dict[str, float] = {}
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := tls.recv(65536):
            body += chunk
    for line in body.decode().splitlines():
        if line.startswith(METRIC + "{"):
            out[line.split('"')[1]] = float(line.split()[-1])
    return out


def attempt(srv: TlsServer, tmp_path: Path, client: TestCA | None, *,
            expired: bool = False, usage: object = ExtendedKeyUsageOID.CLIENT_AUTH,
            tls12: bool = False) -> None:
    """One handshake (and a request, which a TLS 1.3 client needs to hear the refusal)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if client is not None:
        kwargs = {"not_before": now() - dt.timedelta(days=3),
                  "not_after": now() - dt.timedelta(days=1)} if expired else {}
        leaf = client.leaf(("client",), usage=usage, **kwargs)  # type: ignore[arg-type]
        (tmp_path / "c.pem").write_bytes(leaf.chain_pem)
        (tmp_path / "c-key.pem").write_bytes(leaf.key_pem)
        context.load_cert_chain(tmp_path / "c.pem", tmp_path / "c-key.pem")
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
                context.wrap_socket(raw) as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not tls.recv(100)
    except (ssl.SSLError, OSError):
        pass


def test_failed_handshakes_are_counted_and_warned_about_once_per_reason(
        server: TlsServer, ca: TestCA, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    start = counts(server)
    assert set(start) == set(TLS_HANDSHAKE_FAILURE_REASONS)
    assert all(value == 0 for value in start.values())
    stranger = TestCA(tmp_path / "stranger")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            attempt(server, tmp_path, None)  # no certificate
        attempt(server, tmp_path, stranger)  # unknown CA
        attempt(server, tmp_path, ca, expired=True)
        attempt(server, tmp_path, ca, usage=ExtendedKeyUsageOID.SERVER_AUTH)  # wrong EKU
        attempt(server, tmp_path, ca, tls12=True)
        want = {"client_certificate_required": 3, "client_certificate_refused": 3,
                "protocol_version": 1}
        wait_for(lambda: all(counts(server)[k] == v for k, v in want.items()), 10,
                 "the failures to be counted")
    assert counts(server)["other"] == 0
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
             and "TLS handshake" in r.getMessage()]
    assert len(lines) == 3, lines  # one per reason within the minute
    assert all("127.0.0.1" in line for line in lines)
    refused = next(line for line in lines if "client_certificate_refused" in line)
    assert "self-signed certificate in certificate chain" in refused  # OpenSSL's verdict
    assert "BEGIN" not in " ".join(lines)


def test_peers_gone_before_the_handshake_are_counted_not_written_a_line_each(
        server: TlsServer, caplog: pytest.LogCaptureFixture) -> None:
    """A byte, then a reset (SO_LINGER 0), 60 times: most are gone before the server wraps
    the socket, which fails then. One warning per connection let anybody flood the log."""
    with caplog.at_level(logging.WARNING):
        for _ in range(60):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            raw.sendall(b"\x16")
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.close()
        wait_for(lambda: counts(server)["closed"] >= 30, 10, "the resets to be counted")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [], lines[:3]


def test_classification_of_error_texts() -> None:
    assert classify(ssl.SSLEOFError()) == "closed"
    assert classify(ConnectionResetError()) == "closed"
    assert classify(ssl.SSLError(errno.ENOTCONN, "Closed before TLS handshake with data in "
                                 "recv buffer.")) == "closed"  # reset before the wrapper ran
    assert classify(ssl.SSLError("handshake failed: [('SSL routines', '', "
                                 "'peer did not return a certificate')]")) == (
        "client_certificate_required")  # pyOpenSSL's words (stapling mode)
    assert classify(ValueError("something else")) == "other"
