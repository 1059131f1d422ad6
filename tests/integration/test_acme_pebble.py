"""ACME mode end to end: ``ferrohsm serve`` against Debian's real ``pebble`` (RFC 8555).

Both challenge types issue; the served chain verifies against pebble's own root (Python and
``openssl s_client``); a restart serves the cached certificate with pebble stopped (so no new
order can have been made); renewal swaps a new certificate in while an established keep-alive
connection goes on working; an outage keeps the current certificate, shows in /healthz, metrics,
the log and the audit log, and heals when pebble returns; with no certificate yet, the port
serves nothing but the challenge; with ``processes = 2`` one process leads, both serve, and
the lead passes on when the leader is killed. Slow (real processes), skipped without pebble.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from acmekit import (
    DOMAIN,
    DOMAINS,
    AcmeServer,
    Session,
    client_context,
    health,
    served_certificate,
    wait_for,
)
from cryptography import x509
from pebbleserver import Pebble, free_port, skip_unless_available

from ferrohsm.tls.acme.placeholder import SUBJECT
from ferrohsm.tls.acme.provider import AcmeOptions, AcmeProvider
from ferrohsm.tls.devpki import make_dev_pki

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _needs_pebble() -> None:
    skip_unless_available()


def _actions(server: AcmeServer) -> list[str]:
    return [r["action"] for r in server.audit_actions() if str(r["action"]).startswith("tls.")]


def test_http01_issues_a_verifiable_chain_and_restarts_from_cache(tmp_path: Path) -> None:
    server = AcmeServer(tmp_path, "http-01")
    pebble = Pebble(tmp_path / "pebble", server.http_port, server.port)
    pebble.start()
    try:
        server.start(pebble)
        root = pebble.root_pem()
        cert = wait_for("the first certificate", lambda: served_certificate(server.port, root))
        assert DOMAIN in str(cert.extensions)
        (tmp_path / "root.pem").write_bytes(root)
        s_client = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-servername",
             DOMAIN, "-CAfile", str(tmp_path / "root.pem"), "-verify_return_error",
             "-showcerts"], input="", capture_output=True, text=True, timeout=30)
        assert "Verify return code: 0 (ok)" in s_client.stdout, s_client.stdout[-2000:]
        assert "Pebble Intermediate CA" in s_client.stdout  # the chain carries the issuer
        tls = health(server.port, root, server.token())["tls"]
        assert tls["serial"] == format(cert.serial_number, "x")
        assert tls["acme"]["state"] == "serving" and tls["acme"]["last_error"] is None
        assert tls["ocsp"] == "off" and tls["not_after"].endswith("Z")
        server.stop()
        assert _actions(server) == ["tls.issued"]
        cache = server.data / "acme"
        assert (cache / "account-key.pem").stat().st_mode & 0o777 == 0o600
        assert all(p.stat().st_mode & 0o077 == 0 for p in cache.glob("cert-*-key.pem"))
    finally:
        pebble.stop()
    # pebble is gone: whatever is served now came from the cache, with no order made
    server.start(pebble)
    try:
        again = served_certificate(server.port, root)
        assert again.serial_number == cert.serial_number
        tls = health(server.port, root, server.token())["tls"]
        assert tls["acme"]["last_error"] is None and tls["acme"]["failures"] == 0
    finally:
        server.stop()
    assert _actions(server) == ["tls.issued"]
    assert "ACME: serving the cached certificate" in server.log.read_text()


def unverified_certificate(port: int) -> x509.Certificate:
    """The certificate served to a client that verifies nothing (and sends nothing)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_tls_alpn01_from_no_certificate_to_the_first_one(tmp_path: Path) -> None:
    server = AcmeServer(tmp_path, "tls-alpn-01")
    pebble = Pebble(tmp_path / "pebble", server.http_port, server.port)
    server.start(pebble)  # the CA is not there yet: no certificate can be had
    try:
        wait_for("the first failure", lambda: "obtaining a certificate" in server.log.read_text())
        text = server.log.read_text()
        assert "no usable certificate yet" in text and "self-signed placeholder" in text
        with pytest.raises(OSError):  # a verifying client refuses the placeholder...
            served_certificate(server.port, b"")
        placeholder = unverified_certificate(server.port)  # ...whose subject says why
        assert placeholder.subject.rfc4514_string() == f"CN={SUBJECT}"
        assert placeholder.issuer == placeholder.subject
        pebble.start()
        root = pebble.root_pem()
        cert = wait_for("the first certificate", lambda: served_certificate(server.port, root))
        assert cert.serial_number
        tls = health(server.port, root, server.token())["tls"]
        assert tls["acme"]["challenge"] == "tls-alpn-01"
        assert tls["acme"]["last_error"] is None and tls["acme"]["failures"] == 0
        assert tls["acme"]["failures_total"] >= 1
    finally:
        server.stop()
        pebble.stop()
    actions = _actions(server)
    assert "tls.acme_failed" in actions and actions[-1] == "tls.issued"


def test_tls_alpn01_with_required_client_certificates(tmp_path: Path) -> None:
    """The challenge context asks for no client certificate, but the connection keeps the
    serving context's verify mode: over TLS 1.3 the validator sees the certificate anyway."""
    clients = make_dev_pki(tmp_path / "clients")
    cert_file, key_file = clients.issue_client_cert("probe")
    server = AcmeServer(tmp_path, "tls-alpn-01", tls_extra=f'client_ca = "{clients.ca_cert}"\n'
                        "require_client_cert = true")
    pebble = Pebble(tmp_path / "pebble", server.http_port, server.port)
    pebble.start()
    server.start(pebble)
    try:
        wait_for("the first certificate", lambda: "ACME: issued" in server.log.read_text())
        context = client_context(pebble.root_pem())
        context.load_cert_chain(cert_file, key_file)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
            assert tls.recv(12) == b"HTTP/1.1 200"
    finally:
        server.stop()
        pebble.stop()


def test_renewal_without_dropping_connections_and_surviving_an_outage(tmp_path: Path) -> None:
    # a 5-year pebble certificate with 1e-8 of its lifetime left to go renews after ~1.6 s
    server = AcmeServer(tmp_path, "http-01", fraction=0.99999999)
    pebble = Pebble(tmp_path / "pebble", server.http_port, server.port)
    pebble.start()
    server.start(pebble)
    try:
        root = pebble.root_pem()
        first = wait_for("the first certificate", lambda: served_certificate(server.port, root))
        held = Session(server.port, root, server.token())
        assert held.get("/healthz")[0] == 200
        renewed = wait_for("a renewal", lambda: (
            c := served_certificate(server.port, root)).serial_number != first.serial_number
            and c)
        assert renewed.serial_number != first.serial_number
        assert held.get("/healthz")[0] == 200  # the established connection is untouched
        pebble.stop()
        failing = wait_for("a failure in /healthz", lambda: (
            t := health(server.port, root, server.token())["tls"])["acme"]["last_error"] and t)
        assert "connection" in failing["acme"]["last_error"]
        assert failing["acme"]["state"] == "serving"  # the current certificate is kept
        assert served_certificate(server.port, root).serial_number
        status, metrics = held.get("/metrics")
        assert status == 200
        assert b"ferrohsm_tls_acme_consecutive_failures" in metrics
        assert b"ferrohsm_tls_acme_consecutive_failures 0" not in metrics
        held.close()
        pebble.start()  # a new pebble: new root, and it has forgotten the account
        new_root = pebble.root_pem()
        wait_for("recovery", lambda: served_certificate(server.port, new_root), timeout=60)
        healed = health(server.port, new_root, server.token())["tls"]["acme"]
        assert healed["failures_total"] >= 1
    finally:
        server.stop()
        pebble.stop()
    actions = _actions(server)
    assert actions[0] == "tls.issued"
    assert {"tls.renewed", "tls.acme_failed"} <= set(actions)
    assert "keeping the current certificate" in server.log.read_text()


def test_a_failed_challenge_is_logged_audited_and_retried(tmp_path: Path) -> None:
    server = AcmeServer(tmp_path, "http-01")
    # pebble validates http-01 on a port where nothing answers: every authorization fails
    pebble = Pebble(tmp_path / "pebble", free_port(), server.port)
    pebble.start()
    server.start(pebble)
    try:
        wait_for("a failed authorization", lambda: "is invalid" in server.log.read_text())
        assert "still no certificate: serving only the challenge" in server.log.read_text()
        with pytest.raises(OSError):
            served_certificate(server.port, pebble.root_pem())
    finally:
        server.stop()
        pebble.stop()
    failed = [r for r in server.audit_actions() if r["action"] == "tls.acme_failed"]
    assert failed and failed[0]["outcome"] == "error"
    assert "connection" in failed[0]["details"]["error"]  # pebble could not reach the listener
    assert failed[0]["details"]["serving_certificate"] is False


def test_two_processes_sharing_a_cache_make_one_order(tmp_path: Path) -> None:
    """The second provider (another process, in production) finds the first one's certificate
    under the cache lock and serves it instead of ordering one more."""
    http_port = free_port()
    pebble = Pebble(tmp_path / "pebble", http_port, free_port())
    pebble.start()
    providers, events = [], []
    try:
        for port in (http_port, free_port()):
            options = AcmeOptions(pebble.directory, DOMAINS, "", "http-01",
                                  f"127.0.0.1:{port}", pebble.ca_bundle,
                                  str(tmp_path / "cache"), 0.33)
            provider = AcmeProvider(options, lambda e, f: events.append((e, dict(f))))
            providers.append(provider)
        first, second = providers
        first.start()
        wait_for("the first certificate", lambda: first.status()["acme"]["state"] == "serving")
        second.start()
        wait_for("the second to serve", lambda: second.status()["acme"]["state"] == "serving")
        assert first.status()["serial"] == second.status()["serial"]
    finally:
        for provider in providers:
            provider.close()
        pebble.stop()
    assert [(e, f.get("source")) for e, f in events] == [("tls.issued", None),
                                                          ("tls.issued", "cache")]
    log = (tmp_path / "pebble" / "pebble.log").read_text()
    assert log.count("Issued certificate serial") == 1  # pebble's own count of issuances


def _leader_pid(cache: Path) -> int | None:
    """The process holding ``flock`` on the cache's ``.leader`` file (from /proc/locks)."""
    inode = os.stat(cache / ".leader").st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) == inode:
            return int(fields[4])
    return None


@contextlib.contextmanager
def _two_serving(server: AcmeServer) -> Iterator[tuple[bytes, x509.Certificate]]:
    """pebble and ``server`` (processes = 2) started, both processes serving the first
    certificate: (pebble's root, that certificate); both stopped afterwards."""
    pebble = Pebble(server.root / "pebble", server.http_port, server.port)
    pebble.start()
    server.start(pebble)
    try:
        root = pebble.root_pem()
        cert = wait_for("the first certificate", lambda: served_certificate(server.port, root))
        _wait_follower(server)
        wait_for("both processes serving it", lambda: _all_serve(server.port, root,
                                                                 cert.serial_number))
        yield root, cert
    finally:
        server.stop()
        pebble.stop()


def _wait_follower(server: AcmeServer) -> None:
    """Both processes are up: the follower says so once it serves (the port answering proves
    only that one of them listens, and a slow second start would leave every handshake to the
    first)."""
    wait_for("the second process following", lambda: "another process of this host leads"
             in server.log.read_text())


def _all_serve(port: int, root: bytes, serial: int) -> bool:
    """Enough handshakes that both processes (SO_REUSEPORT picks one per connection) are
    asked, each verifying against pebble's root and showing ``serial``."""
    return all(served_certificate(port, root).serial_number == serial for _ in range(16))


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_two_processes_one_leader_one_order_both_serve(tmp_path: Path, challenge: str) -> None:
    """``processes = 2`` on one port and one cache: one process leads (orders, and alone
    listens for http-01: no second bind of the port), the other serves the certificate the
    leader saved and, for tls-alpn-01, answers the leader's challenge too, so a validation
    succeeds whichever process the kernel hands it to."""
    server = AcmeServer(tmp_path, challenge, processes=2)
    with _two_serving(server):
        pass
    text = server.log.read_text()
    assert "Address already in use" not in text and "refused to start" not in text
    assert "another process of this host leads" in text
    if challenge == "tls-alpn-01":
        assert "answering the leading process's tls-alpn-01 challenge for" in text
    log = (tmp_path / "pebble" / "pebble.log").read_text()
    assert log.count("Issued certificate serial") == 1


def test_the_lead_passes_on_when_the_leader_is_killed(tmp_path: Path) -> None:
    """kill -9 the leading process: another takes the lead and the http-01 port (the survivor
    at its next look, or the supervisor's new process if it starts first), and both go on
    serving the certificate without ordering another."""
    server = AcmeServer(tmp_path, "http-01", processes=2)
    cache = server.data / "acme"
    with _two_serving(server) as (root, cert):
        leader = _leader_pid(cache)
        assert leader is not None and server.proc is not None and leader != server.proc.pid
        os.kill(leader, signal.SIGKILL)
        successor = wait_for("a new leader", lambda: (_leader_pid(cache) or leader) != leader
                             and _leader_pid(cache))
        assert successor != leader  # the survivor, or the supervisor's new process
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=5)
        wait_for("the http-01 port answering again", lambda: _challenge_status(conn) == 404)
        wait_for("both serving again", lambda: _all_serve(server.port, root,
                                                          cert.serial_number))
    log = (tmp_path / "pebble" / "pebble.log").read_text()
    assert log.count("Issued certificate serial") == 1  # nobody ordered a second one


def _challenge_status(conn: http.client.HTTPConnection) -> int:
    try:
        conn.request("GET", "/.well-known/acme-challenge/unknown-token")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        conn.close()
        raise


def test_a_sealed_server_gets_its_certificate_and_is_unsealed_over_it(tmp_path: Path) -> None:
    """Split knowledge and ACME together: the sealed server (no master key yet) obtains its
    certificate by tls-alpn-01, the custodians' shares then travel over that certificate, and
    the unsealed server serves keys. ACME needs no master key: only its cache."""
    server = AcmeServer(tmp_path, "tls-alpn-01", sealed=True)
    pebble = Pebble(tmp_path / "pebble", server.http_port, server.port)
    pebble.start()
    shares = server.init(pebble)
    assert len(shares) == 3
    server.start(pebble)
    try:
        root = pebble.root_pem()
        wait_for("the first certificate, sealed", lambda: served_certificate(server.port, root))
        session = Session(server.port, root, server.token())
        try:
            assert session.health()["sealed"] is True
            assert session.post("/v1/sys/unseal", {"share": shares[0]})[0] == 200
            status, opened = session.post("/v1/sys/unseal", {"share": shares[2]})
            assert status == 200 and opened["sealed"] is False, opened
            status, key = session.post("/v1/keys", {"algorithm": "aes-256-gcm",
                                                    "usage": "encrypt"})
            assert status == 201, key
            tls = session.health()["tls"]
            assert tls["acme"]["state"] == "serving" and tls["acme"]["role"] == "leader"
        finally:
            session.close()
    finally:
        server.stop()
        pebble.stop()
    assert "tls.issued" in _actions(server)
