"""Fetch an OCSP response for the served certificate and check it before it is ever stapled.

A response is accepted only when it is a successful BasicOCSPResponse about THIS certificate
(serial and issuer hashes), signed by the issuer itself or by a delegated responder certificate
that the issuer signed, that carries id-kp-OCSPSigning and is valid now; and when its
thisUpdate is not in the future (5 minutes of clock skew allowed) and its nextUpdate, if any, is
after thisUpdate and not yet past. The request goes out as an HTTP POST
(``application/ocsp-request``, RFC 6960 A.1) with the standard library's http.client.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import socket
import threading
import urllib.parse
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from ..crypto.certs import cert_id_hash, der, signed_by

SKEW = dt.timedelta(minutes=5)
# A response without nextUpdate says nothing of how long it holds: one older than this (a CA
# answers daily at worst) is a replay or a stuck responder, not a status to staple.
MAX_AGE_WITHOUT_NEXT_UPDATE = dt.timedelta(days=7)
MAX_RESPONSE_BYTES = 64 * 1024
_STATUS_NAMES = {ocsp.OCSPCertStatus.GOOD: "good", ocsp.OCSPCertStatus.REVOKED: "revoked",
                 ocsp.OCSPCertStatus.UNKNOWN: "unknown"}


class OcspError(Exception):
    """No usable response: the responder is unreachable, or what it said cannot be trusted."""


@dataclass(frozen=True)
class OcspAnswer:
    """A checked response: its DER (what is stapled), the status and its validity window."""

    der: bytes
    status: str  # good | revoked | unknown
    this_update: dt.datetime
    next_update: dt.datetime | None


def responder_url(cert: x509.Certificate, configured: str) -> str | None:
    """``[tls].ocsp_responder`` when set, else the first OCSP URL of the AIA extension."""
    if configured:
        return configured
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for description in aia:
        if description.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
                description.access_location, x509.UniformResourceIdentifier):
            return description.access_location.value
    return None


def request_der(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A nonce-less request (the answer is cached and stapled to many handshakes)."""
    return der(ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, cert_id_hash()).build())


def fetch(url: str, body: bytes, timeout: float) -> bytes:
    """POST ``body`` to ``url``; the response body, or OcspError naming what failed. ``timeout``
    bounds the whole exchange, not each read: a responder that drips its answer a byte at a
    time would otherwise hold the stapler (and every later refresh) for as long as it likes."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OcspError(f"OCSP responder {url!r} is not an http(s) URL")
    connection_class = (http.client.HTTPSConnection if parts.scheme == "https"
                        else http.client.HTTPConnection)
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    cut = threading.Event()

    def cut_short() -> None:  # the deadline: end the exchange whatever it is waiting for
        cut.set()
        sock = connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    watchdog = threading.Timer(timeout, cut_short)
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.request("POST", parts.path or "/", body=body, headers={
            "Content-Type": "application/ocsp-request", "Accept": "application/ocsp-response"})
        response = connection.getresponse()
        data = response.read(MAX_RESPONSE_BYTES + 1)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if cut.is_set():
            raise OcspError(f"OCSP responder {url} did not answer within {timeout:g} s") from None
        raise OcspError(f"OCSP responder {url} unreachable: {type(exc).__name__}: {exc}") from None
    finally:
        watchdog.cancel()
        connection.close()
    if cut.is_set():  # a read cut short may have returned part of the body
        raise OcspError(f"OCSP responder {url} did not answer within {timeout:g} s")
    if response.status != 200:
        raise OcspError(f"OCSP responder {url} answered HTTP {response.status}")
    if len(data) > MAX_RESPONSE_BYTES:
        raise OcspError(f"OCSP responder {url} sent more than {MAX_RESPONSE_BYTES} bytes")
    return data


def check(data: bytes, cert: x509.Certificate, issuer: x509.Certificate,
          now: dt.datetime) -> OcspAnswer:
    """The checked answer in ``data`` about ``cert``, or OcspError saying why it is refused."""
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError:
        raise OcspError("not a DER OCSP response") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"OCSP responder answered {response.response_status.name}")
    single = _single_for(response, cert, issuer)
    signer = _signer(response, issuer, now)
    if not signed_by(signer, response.signature, response.tbs_response_bytes,
                     response.signature_hash_algorithm):
        raise OcspError("OCSP response signature does not verify")
    this_update, next_update = single.this_update_utc, single.next_update_utc
    if this_update > now + SKEW:
        raise OcspError(f"OCSP thisUpdate {this_update.isoformat()} is in the future")
    if next_update is not None and (next_update < this_update or next_update <= now):
        raise OcspError(f"OCSP response expired (nextUpdate {next_update.isoformat()})")
    if next_update is None and now - this_update > MAX_AGE_WITHOUT_NEXT_UPDATE:
        raise OcspError(f"OCSP response without a nextUpdate is older than "
                        f"{MAX_AGE_WITHOUT_NEXT_UPDATE.days} days (thisUpdate "
                        f"{this_update.isoformat()})")
    return OcspAnswer(data, _STATUS_NAMES[single.certificate_status], this_update, next_update)


def _single_for(response: ocsp.OCSPResponse, cert: x509.Certificate,
                issuer: x509.Certificate) -> ocsp.OCSPSingleResponse:
    for single in response.responses:
        if single.serial_number != cert.serial_number:
            continue
        expected = ocsp.OCSPRequestBuilder().add_certificate(
            cert, issuer, single.hash_algorithm).build()
        if (single.issuer_name_hash == expected.issuer_name_hash
                and single.issuer_key_hash == expected.issuer_key_hash):
            return single
    raise OcspError(f"OCSP response is not about serial {cert.serial_number:x} of this issuer")


def _key_hash(cert: x509.Certificate) -> bytes:
    """SHA-1 of the subjectPublicKey bits: the ResponderID byKey (RFC 6960 4.2.1)."""
    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _is(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    """Whether the response's ResponderID names ``cert`` (by name or by key)."""
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    return response.responder_key_hash == _key_hash(cert)


def _signer(response: ocsp.OCSPResponse, issuer: x509.Certificate,
            now: dt.datetime) -> x509.Certificate:
    """The issuer, or the delegated responder certificate the issuer signed for OCSP."""
    if _is(response, issuer):
        return issuer
    for candidate in response.certificates:
        if _is(response, candidate) and _delegated(candidate, issuer, now):
            return candidate
    raise OcspError("OCSP response is signed neither by the issuer nor by a responder "
                    "certificate the issuer delegated (id-kp-OCSPSigning)")


def _delegated(candidate: x509.Certificate, issuer: x509.Certificate, now: dt.datetime) -> bool:
    try:
        candidate.verify_directly_issued_by(issuer)
        eku = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    return (ExtendedKeyUsageOID.OCSP_SIGNING in eku
            and candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc)
