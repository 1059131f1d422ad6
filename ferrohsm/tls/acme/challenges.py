"""Challenge responders: ``http-01`` (a tiny listener) and ``tls-alpn-01`` (RFC 8737).

http-01: a ThreadingHTTPServer on ``http_listen`` that answers ``GET
/.well-known/acme-challenge/<token>`` with the key authorization of a published token and 404
to everything else (no other path, no directory listing, no redirect): the only thing a port-80
listener of a key manager should ever say.

tls-alpn-01 runs on the serving port itself. While an answer is published, the provider hands
new connections a context carrying two callbacks: OpenSSL's message callback sees the raw
ClientHello first and notes whether the client offered ALPN ``acme-tls/1`` (stdlib ``ssl`` has
no ALPN-select hook), then the SNI callback switches exactly those connections naming a pending
domain to a challenge context: its only ALPN protocol is ``acme-tls/1`` and its self-signed
certificate carries the critical id-pe-acmeIdentifier extension (SHA-256 of the key
authorization). Ordinary clients naming the same domain keep the real certificate, so a renewal
never fails a handshake; and outside a validation window connections get the plain context,
with no Python callback on the handshake path at all.

The challenge context does not ask for a client certificate, but OpenSSL keeps the verify mode
of the context a connection started with: with ``require_client_cert`` the server refuses the
validator after the handshake. Over TLS 1.3 the validator has seen the certificate by then
(its handshake completes before the server checks the client's), so validation still works;
it was checked against pebble.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import re
import socket
import ssl
import threading
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ...domain.errors import ConfigError
from .cache import AcmeCache

log = logging.getLogger("ferrohsm.tls.acme")
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
ACME_TLS_ALPN = "acme-tls/1"
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # id-pe-acmeIdentifier
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
CLIENT_HELLO, ALPN_EXTENSION = 1, 16


def parse_listen(listen: str, setting: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{setting} must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


# ---------------------------------------------------------------------------- http-01


class _ChallengeHandler(BaseHTTPRequestHandler):
    server_version = "ferrohsm-acme"
    sys_version = ""
    timeout = 10.0  # a peer that sends nothing is dropped

    def do_GET(self) -> None:
        answer = self._answer()
        body = answer.encode("ascii") if answer is not None else b"not found\n"
        self.send_response(200 if answer is not None else 404)
        self.send_header("Content-Type", "application/octet-stream" if answer is not None
                         else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET  # noqa: N815

    def _answer(self) -> str | None:
        path = self.path.split("?", 1)[0]
        if not path.startswith(CHALLENGE_PREFIX):
            return None
        token = path[len(CHALLENGE_PREFIX):]
        if not _TOKEN_RE.fullmatch(token):
            return None
        tokens: dict[str, str] = getattr(self.server, "tokens", {})
        return tokens.get(token)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http-01 %s", format % args)


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, as many as the bounds allow: a listener on port 80 faces the
    whole internet, and one slow sender per thread (a byte inside every read timeout) would
    otherwise grow threads without end. Over a bound a connection is closed at once; each one
    is closed after ``LIFETIME`` seconds whatever it is doing. An ACME CA validates from a few
    addresses with one short request each."""

    daemon_threads = True
    MAX_CONNECTIONS = 64
    MAX_PER_ADDRESS = 4
    LIFETIME = 20.0

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _ChallengeHandler)
        self._open: dict[str, int] = {}
        self._count_lock = threading.Lock()
        self.tokens: dict[str, str] = {}

    def process_request(self, request: Any, client_address: Any) -> None:
        ip = str(client_address[0])
        with self._count_lock:
            if sum(self._open.values()) >= self.MAX_CONNECTIONS \
                    or self._open.get(ip, 0) >= self.MAX_PER_ADDRESS:
                self.shutdown_request(request)
                return
            self._open[ip] = self._open.get(ip, 0) + 1
        try:
            super().process_request(request, client_address)
        except Exception:
            self._closed(ip)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        timer = threading.Timer(self.LIFETIME, _shut, args=(request,))
        timer.daemon = True
        timer.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            timer.cancel()
            self._closed(str(client_address[0]))

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A peer gone or cut at LIFETIME mid-request: a debug line, not a traceback."""
        log.debug("http-01 connection from %s ended early", client_address[0])

    def _closed(self, ip: str) -> None:
        with self._count_lock:
            left = self._open.get(ip, 0) - 1
            if left > 0:
                self._open[ip] = left
            else:
                self._open.pop(ip, None)


def _shut(request: Any) -> None:
    with contextlib.suppress(OSError):
        request.shutdown(socket.SHUT_RDWR)


class Http01Responder:
    """The http-01 listener; ``start``/``stop`` by the provider, tokens published per order."""

    challenge_type = "http-01"

    def __init__(self, listen: str) -> None:
        self._address = parse_listen(listen, "[tls.acme].http_listen")
        self._server: _BoundedServer | None = None
        self._tokens: dict[str, str] = {}

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else 0

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        try:
            server = _BoundedServer(self._address)
        except OSError as exc:
            raise ConfigError(f"[tls.acme].http_listen: cannot listen on "
                              f"{self._address[0]}:{self._address[1]}: {exc.strerror}") from None
        server.tokens = self._tokens
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                         name="ferrohsm-acme-http01", daemon=True).start()
        log.info("ACME http-01 responder listening on %s:%d", self._address[0], self.port)

    def stop(self) -> None:
        server, self._server = self._server, None  # idempotent: shutdown and the thread's end
        if server is not None:
            server.shutdown()
            server.server_close()

    def add(self, domain: str, token: str, key_authorization: str) -> None:
        self._tokens[token] = key_authorization

    def remove(self, domain: str, token: str) -> None:
        self._tokens.pop(token, None)


# ---------------------------------------------------------------------------- tls-alpn-01


def offered_alpn(hello: bytes) -> list[bytes]:
    """The ALPN protocols of a raw ClientHello handshake message ([] when absent/unreadable)."""
    try:
        if hello[0] != CLIENT_HELLO:
            return []
        pos = 4 + 2 + 32  # handshake header, legacy_version, random
        pos += 1 + hello[pos]  # session id
        pos += 2 + int.from_bytes(hello[pos:pos + 2], "big")  # cipher suites
        pos += 1 + hello[pos]  # compression methods
        end = pos + 2 + int.from_bytes(hello[pos:pos + 2], "big")
        pos += 2
        while pos + 4 <= end:
            kind = int.from_bytes(hello[pos:pos + 2], "big")
            size = int.from_bytes(hello[pos + 2:pos + 4], "big")
            if kind == ALPN_EXTENSION:
                return _alpn_list(hello[pos + 6:pos + 4 + size])
            pos += 4 + size
    except IndexError:
        pass
    return []


def _alpn_list(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        size = data[pos]
        out.append(data[pos + 1:pos + 1 + size])
        pos += 1 + size
    return out


def challenge_certificate(domain: str, key_authorization: str
                          ) -> tuple[bytes, bytes]:
    """RFC 8737 section 3: a self-signed certificate for ``domain`` whose critical
    acmeIdentifier extension holds the SHA-256 of the key authorization; (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID,
                                                      b"\x04\x20" + digest), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class TlsAlpnResponder:
    """Challenge contexts per pending domain, and the hooks that route connections to them."""

    challenge_type = "tls-alpn-01"

    def __init__(self, cache: AcmeCache) -> None:
        self._cache = cache
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._asking: weakref.WeakSet[Any] = weakref.WeakSet()  # offered acme-tls/1
        self._route_all = False
        self.on_change: Any = None  # the provider rebuilds its hooked context when this fires

    def pending(self) -> bool:
        return bool(self._contexts)

    def add(self, domain: str, token: str, key_authorization: str) -> None:
        cert_pem, key_pem = challenge_certificate(domain, key_authorization)
        cert_path, key_path = self._cache.write_temp_pair(cert_pem, key_pem)
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 allows 1.2 validators
            context.load_cert_chain(cert_path, key_path)
        finally:
            cert_path.unlink(missing_ok=True)
            key_path.unlink(missing_ok=True)
        context.set_alpn_protocols([ACME_TLS_ALPN])
        self._contexts[domain.lower()] = context
        if self.on_change is not None:
            self.on_change()

    def remove(self, domain: str, token: str) -> None:
        self._contexts.pop(domain.lower(), None)
        if self.on_change is not None:
            self.on_change()

    def install(self, context: ssl.SSLContext) -> None:
        """Hook ``context`` (a serving context used only while answers are published).

        ``_msg_callback`` is CPython's (3.8+) hook onto OpenSSL's message callback; where it
        is missing, every connection naming a pending domain gets the challenge context
        during the validation window (RFC 8737's plain reading), which ordinary clients of
        that name fail for those seconds."""
        if hasattr(context, "_msg_callback"):
            context._msg_callback = self._on_message
        else:  # pragma: no cover  (not on CPython 3.11+)
            self._route_all = True
        context.sni_callback = self._on_sni

    def _on_message(self, conn: Any, direction: str, version: Any, content_type: Any,
                    msg_type: Any, data: bytes) -> None:
        if direction == "read" and msg_type == CLIENT_HELLO and data[:1] == b"\x01":
            if ACME_TLS_ALPN.encode() in offered_alpn(data):
                self._asking.add(conn)

    def _on_sni(self, conn: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        if server_name is None or not (self._route_all or conn in self._asking):
            return
        challenge = self._contexts.get(server_name.lower())
        if challenge is not None:
            conn.context = challenge
