"""What makes an OCSP response stapleable (ferrohsm/tls/ocsp.py ``check``): responses built with
cryptography's OCSPResponseBuilder, signed by the issuer, a delegated responder, or impostors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from certkit import Leaf, TestCA, now
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp

from ferrohsm.tls.ocsp import OcspError, check, request_der, responder_url

MINUTE = dt.timedelta(minutes=1)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def leaf(ca: TestCA) -> Leaf:
    return ca.leaf(ocsp_url="http://127.0.0.1:1/ocsp")


def respond(ca: TestCA, subject: Leaf, *, signer_cert: x509.Certificate | None = None,
            signer_key: ec.EllipticCurvePrivateKey | None = None,
            status: x509_ocsp.OCSPCertStatus = x509_ocsp.OCSPCertStatus.GOOD,
            this_update: dt.datetime | None = None, next_update: dt.datetime | None = None,
            include: list[x509.Certificate] | None = None, by_name: bool = False,
            without_next_update: bool = False) -> bytes:
    this_update = this_update or now() - MINUTE
    builder = x509_ocsp.OCSPResponseBuilder().add_response(
        cert=subject.cert, issuer=ca.cert, algorithm=hashes.SHA1(), cert_status=status,  # noqa: S303  the CertID hash
        this_update=this_update,
        next_update=None if without_next_update else (
            next_update if next_update is not None else now() + 10 * MINUTE),
        revocation_time=now() - MINUTE if status == x509_ocsp.OCSPCertStatus.REVOKED else None,
        revocation_reason=None)
    responder = signer_cert or ca.cert
    builder = builder.responder_id(x509_ocsp.OCSPResponderEncoding.NAME if by_name
                                   else x509_ocsp.OCSPResponderEncoding.HASH, responder)
    for cert in include or []:
        builder = builder.certificates([cert])
    response = builder.sign(signer_key or ca.key, hashes.SHA256())
    return response.public_bytes(Encoding.DER)


def test_issuer_signed_good_and_revoked(ca: TestCA, leaf: Leaf) -> None:
    assert check(respond(ca, leaf), leaf.cert, ca.cert, now()).status == "good"
    revoked = respond(ca, leaf, status=x509_ocsp.OCSPCertStatus.REVOKED)
    assert check(revoked, leaf.cert, ca.cert, now()).status == "revoked"
    unknown = respond(ca, leaf, status=x509_ocsp.OCSPCertStatus.UNKNOWN)
    assert check(unknown, leaf.cert, ca.cert, now()).status == "unknown"


def test_delegated_responder_needs_ocsp_signing_from_the_issuer(ca: TestCA, leaf: Leaf,
                                                                tmp_path: Path) -> None:
    delegated = ca.responder()
    good = respond(ca, leaf, signer_cert=delegated.cert, signer_key=delegated.key,
                   include=[delegated.cert])
    assert check(good, leaf.cert, ca.cert, now()).status == "good"
    plain = ca.responder(ocsp_signing=False)  # issued by the CA, but not for OCSP
    with pytest.raises(OcspError, match="delegated"):
        check(respond(ca, leaf, signer_cert=plain.cert, signer_key=plain.key,
                      include=[plain.cert]), leaf.cert, ca.cert, now())
    stranger = TestCA(tmp_path / "other").responder()  # OCSP signing, from another CA
    with pytest.raises(OcspError, match="delegated"):
        check(respond(ca, leaf, signer_cert=stranger.cert, signer_key=stranger.key,
                      include=[stranger.cert]), leaf.cert, ca.cert, now())


def test_a_forged_signature_is_refused(ca: TestCA, leaf: Leaf, tmp_path: Path) -> None:
    forger = TestCA(tmp_path / "forger")  # same name as the issuer, its own key
    assert forger.cert.subject == ca.cert.subject
    forged = respond(ca, leaf, signer_cert=forger.cert, signer_key=forger.key, by_name=True)
    with pytest.raises(OcspError, match="signature"):
        check(forged, leaf.cert, ca.cert, now())
    assert check(respond(ca, leaf, by_name=True), leaf.cert, ca.cert, now()).status == "good"


def test_a_response_about_another_certificate_is_refused(ca: TestCA, leaf: Leaf) -> None:
    other = ca.leaf()
    with pytest.raises(OcspError, match="serial"):
        check(respond(ca, other), leaf.cert, ca.cert, now())


def test_expired_or_future_responses_are_refused(ca: TestCA, leaf: Leaf) -> None:
    expired = respond(ca, leaf, this_update=now() - 20 * MINUTE,
                      next_update=now() - MINUTE)
    with pytest.raises(OcspError, match="expired"):
        check(expired, leaf.cert, ca.cert, now())
    future = respond(ca, leaf, this_update=now() + 30 * MINUTE,
                     next_update=now() + 60 * MINUTE)
    with pytest.raises(OcspError, match="future"):
        check(future, leaf.cert, ca.cert, now())


def test_garbage_and_error_statuses_are_refused(ca: TestCA, leaf: Leaf) -> None:
    with pytest.raises(OcspError, match="DER"):
        check(b"\x30\x03\x0a\x01", leaf.cert, ca.cert, now())
    unauthorized = x509_ocsp.OCSPResponseBuilder.build_unsuccessful(
        x509_ocsp.OCSPResponseStatus.UNAUTHORIZED)
    with pytest.raises(OcspError, match="UNAUTHORIZED"):
        check(unauthorized.public_bytes(Encoding.DER), leaf.cert, ca.cert, now())


def test_responder_url_and_request(ca: TestCA, leaf: Leaf) -> None:
    assert responder_url(leaf.cert, "") == "http://127.0.0.1:1/ocsp"
    assert responder_url(leaf.cert, "http://override/") == "http://override/"
    assert responder_url(ca.leaf().cert, "") is None
    request = x509_ocsp.load_der_ocsp_request(request_der(leaf.cert, ca.cert))
    assert request.serial_number == leaf.cert.serial_number
    assert not list(request.extensions)  # no nonce: one answer serves many handshakes


def test_a_responder_that_drips_its_answer_is_cut_at_the_deadline() -> None:
    """The timeout bounds the whole exchange: a byte every 0.2 s would pass any per-read
    timeout and hold the stapler's thread (and every later refresh) indefinitely."""
    import socket
    import threading
    import time

    from ferrohsm.tls.ocsp import fetch

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            while not stop.is_set():
                try:
                    conn.sendall(b"x")
                except OSError:
                    return
                time.sleep(0.2)
    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(OcspError, match="did not answer within 1 s"):
            fetch(f"http://127.0.0.1:{listener.getsockname()[1]}/", b"req", 1.0)
        assert time.monotonic() - started < 3
    finally:
        stop.set()
        listener.close()


def test_a_response_without_next_update_is_taken_only_while_recent(ca: TestCA,
                                                                    leaf: Leaf) -> None:
    """No nextUpdate means no stated validity: a recent one is stapled, one from 400 days ago
    (a replay, a stuck responder) is refused; it was stapled whatever its age."""
    recent = check(respond(ca, leaf, this_update=now() - 60 * MINUTE, without_next_update=True),
                   leaf.cert, ca.cert, now())
    assert recent.status == "good" and recent.next_update is None
    old = respond(ca, leaf, this_update=now() - dt.timedelta(days=400), without_next_update=True)
    with pytest.raises(OcspError, match="without a nextUpdate is older than 7 days"):
        check(old, leaf.cert, ca.cert, now())


def test_a_response_without_next_update_is_refreshed_before_it_is_dropped(ca: TestCA,
                                                                          leaf: Leaf) -> None:
    """Held for two refreshes: the next fetch, due after one, replaces it first (held for one,
    it was dropped at the fetch's moment: good, unavailable, good at every refresh)."""
    from ferrohsm.tls.ocsp import OcspAnswer
    from ferrohsm.tls.stapler import OcspStapler, Staple
    clock = [1000.0]
    stapler = OcspStapler("", refresh_seconds=60, timeout=2, clock=lambda: clock[0])
    staple = Staple()
    stapler.track(leaf.cert, ca.cert, staple)
    answer = OcspAnswer(b"response", "good", now() - MINUTE, None)
    due = stapler._succeeded(answer, leaf.cert, staple, clock[0])
    assert due == 60 and staple.expires == 1120.0
    clock[0] += due  # the refresh is due: the response is still held, and still good
    assert staple.der == b"response" and stapler.status()["ocsp"] == "good"
