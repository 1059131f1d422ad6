"""The span exporter child's HTTP transport: one kept-alive ``http.client`` connection.

Why not the SDK's default (``requests``): each POST through a ``requests.Session`` costs the
exporter about 0.65 ms of CPU (merging the session's and the environment's settings, reading
``~/.netrc``, urllib3's pool), against about 0.15 ms here, measured on the bench's 512-span
requests. At a few thousand traced requests a second that is several microseconds a request
on the core the load shares with the server. Everything else about an export stays the SDK's:
its ``_OTLPHTTPClient`` still resolves the OTEL_EXPORTER_OTLP_* endpoint, headers, timeout and
compression, and retries with its backoff; this class only carries one request to the
collector and back, through the SDK's own transport interface (``BaseHTTPTransport``, in the
exporter version pinned in pyproject.toml).

When it is not used (``wanted`` False), the SDK's transport stays: a proxy variable that
applies to the endpoint (requests honours HTTP(S)_PROXY, ALL_PROXY and NO_PROXY; this does
not), Basic credentials in the endpoint or a netrc file naming its host (requests sends them;
this does not), or a credential provider the SDK loads a ``requests`` session from.
"""

from __future__ import annotations

import functools
import http.client
import netrc
import os
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport

CREDENTIAL_PROVIDER = "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER"
MAX_ANSWER = 4 << 20  # bytes of a collector's answer read at most (an OTLP answer: a few)


@functools.lru_cache(maxsize=64)  # an exporter has one endpoint: parsed once
def route_of(url: str) -> tuple[tuple[str, str, int], str]:
    """The connection an endpoint is reached over (scheme, host, port) and its target."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (parts.scheme, parts.hostname or "", port), target_of(url)


def target_of(url: str) -> str:
    """The request target (path and query) exactly as the SDK's transport sends it: requests
    parses the URL with urllib3 (dot segments removed, a stray % encoded), requotes it, and
    urllib3 normalizes it again. Both are the SDK's own dependencies, already loaded in the
    exporter child."""
    from requests.utils import requote_uri
    from urllib3.util import parse_url
    return str(parse_url(requote_uri(parse_url(url).url)).request_uri)


def wanted(endpoint: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this transport can carry exports to ``endpoint`` as the SDK's would: no proxy
    applies to it and no credential provider hands the SDK a session of its own."""
    env = os.environ if environ is None else environ
    if env.get(CREDENTIAL_PROVIDER, "").strip():
        return False
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.username is not None or parts.password is not None or \
            _netrc_names(parts.hostname, env):
        return False  # requests sends Basic credentials from the URL or a netrc file
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(parts.hostname))


def _netrc_names(host: str, env: Mapping[str, str]) -> bool:
    """Whether a netrc file requests would read (NETRC, else ~/.netrc or ~/_netrc) may hold
    credentials for ``host`` (a file it cannot parse counts: the SDK's transport decides)."""
    named = env.get("NETRC")  # set, even empty: the only file requests reads
    candidates = [named] if named is not None else ["~/.netrc", "~/_netrc"]
    for candidate in candidates:
        path = os.path.expanduser(candidate)
        if not path or not os.path.exists(path):
            continue
        try:
            return netrc.netrc(path).authenticators(host) is not None
        except (OSError, netrc.NetrcParseError):
            return True
    return False


def default_ca_bundle(environ: Mapping[str, str] | None = None) -> str | None:
    """The CA file the SDK's transport (requests) trusts when no certificate is configured:
    REQUESTS_CA_BUNDLE, then CURL_CA_BUNDLE, then certifi's bundle; None (the system's
    store) when none of them is there."""
    env = os.environ if environ is None else environ
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if env.get(name):
            return env[name]
    try:
        import certifi  # requests' own dependency, there when the SDK is
    except ImportError:
        return None
    return str(certifi.where())


def from_sdk(transport: Any) -> StdlibTransport | None:
    """Ours with the CA and client certificate the SDK's requests transport was given, or
    None when that transport is not the one this knows how to read."""
    session = getattr(transport, "_session", None)
    if session is None:
        return None
    return StdlibTransport(verify=session.verify, cert=session.cert)


@dataclass(frozen=True, slots=True)
class Result(BaseHTTPResult):
    """A response (status, reason, body, headers) or the error that stopped the request."""

    body: bytes = b""
    fields: Any = None  # http.client.HTTPMessage: case-insensitive, as the interface asks

    def content(self) -> bytes:
        return self.body

    def headers(self) -> Mapping[str, str]:
        return {} if self.fields is None else self.fields


class Watchdog:
    """Shuts down the armed socket once its deadline has passed, so that a collector that
    answers a byte at a time, or never ends its answer, cannot hold an export longer than
    the configured timeout (a socket timeout bounds each read, not the exchange). One
    thread, started at the first arming, for the exporter's life."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._deadline = 0.0
        self._fired = False
        self._thread: threading.Thread | None = None

    def arm(self, sock: socket.socket | None, deadline: float) -> None:
        with self._cond:
            self._sock, self._deadline, self._fired = sock, deadline, False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="ferrohsm-otlp-deadline")
                self._thread.start()
            self._cond.notify()

    def disarm(self) -> bool:
        """Stop watching; whether the deadline had cut the exchange off."""
        with self._cond:
            self._sock = None
            return self._fired

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._sock is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                sock, self._sock, self._fired = self._sock, None, True
                try:  # the plain socket's call: an SSLSocket's would drop its TLS state
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # under the reader
                except OSError:
                    pass


class ConnectError(ConnectionError):
    """The connection to the collector could not be made (a timeout included)."""


class StdlibTransport(BaseHTTPTransport):
    """POSTs over one connection per endpoint, opened again after any failure. ``verify``
    and ``cert`` as the SDK resolves them: True, False or a CA file; a client certificate
    file, or (certificate, key)."""

    def __init__(self, *, verify: bool | str = True,
                 cert: str | tuple[str, str] | None = None) -> None:
        self._verify, self._cert = verify, cert
        self._context: ssl.SSLContext | None = None
        self._connections: dict[tuple[str, str, int], http.client.HTTPConnection] = {}
        self._watchdog = Watchdog()

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                timeout: float | None = None, data: bytes | None = None) -> BaseHTTPResult:
        key, target = route_of(url)
        try:
            conn = self._connection(key, timeout)
        except Exception as exc:  # the SDK's client wants a result, not a raise
            return Result(error=exc)
        if timeout is not None:  # the whole exchange, not each read: a collector that
            self._watchdog.arm(conn.sock, time.monotonic() + timeout)  # drips is cut off
        try:
            result = self._exchange(conn, key, method, target, headers, data)
        finally:
            fired = self._watchdog.disarm()
        if fired:  # cut off at the deadline: a status already read stands (as a body that
            self._drop(key)  # breaks: the collector had the batch), else a timeout
            if result.status_code is None:
                return Result(error=TimeoutError(f"no answer within {timeout:g} s"))
        return result

    def _exchange(self, conn: http.client.HTTPConnection, key: tuple[str, str, int],
                  method: str, target: str, headers: dict[str, str] | None,
                  data: bytes | None) -> Result:
        try:
            conn.request(method, target, body=data, headers=headers or {})
            response = conn.getresponse()
        except ValueError:  # http.client's refusal quotes the header: it may be a credential
            self._drop(key)
            return Result(error=ValueError(
                "a header name or value cannot be sent (OTEL_EXPORTER_OTLP_HEADERS?)"))
        except Exception as exc:  # as above; the connection is not reused
            self._drop(key)
            return Result(error=exc)
        try:
            body = response.read(MAX_ANSWER + 1)
        except Exception:  # a body cut short or malformed: the collector's status stands
            body = b""  # (the SDK's transport does not send a batch again for it either)
            self._drop(key)
        else:
            if len(body) > MAX_ANSWER or not response.isclosed() or response.will_close:
                self._drop(key)  # the rest unread (OTLP answers are a few bytes): not reused
                body = body[:MAX_ANSWER]
        return Result(status_code=response.status, reason=response.reason, body=body,
                      fields=response.headers)

    def _connection(self, key: tuple[str, str, int],
                    timeout: float | None) -> http.client.HTTPConnection:
        """The endpoint's open connection with ``timeout`` set, or a new one (connected here,
        so a failure to connect is told apart from one later: only the first is retried at
        once by the SDK, as with its own transports)."""
        conn = self._connections.get(key)
        if conn is not None and conn.sock is not None:
            conn.sock.settimeout(timeout)
            conn.timeout = timeout
            return conn
        scheme, host, port = key
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                               context=self._tls())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise ConnectError(str(exc)) from exc
        self._connections[key] = conn
        return conn

    def _tls(self) -> ssl.SSLContext:
        if self._context is None:
            verify = self._verify
            trusted = verify if isinstance(verify, str) else default_ca_bundle()
            if trusted is not None and os.path.isdir(trusted):  # a c_rehash'd folder
                context = ssl.create_default_context(capath=trusted)
            else:
                context = ssl.create_default_context(cafile=trusted)
            if verify is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if isinstance(self._cert, tuple):
                context.load_cert_chain(self._cert[0], self._cert[1])
            elif isinstance(self._cert, str):
                context.load_cert_chain(self._cert)
            self._context = context
        return self._context

    def _drop(self, key: tuple[str, str, int]) -> None:
        conn = self._connections.pop(key, None)
        if conn is not None:
            conn.close()

    def is_connection_error(self, exception: Exception | None) -> bool:
        """A connection that could not be made, or one the collector closed or broke: the
        SDK tries again at once, then with backoff. A timeout while waiting for an answer is
        not one (the SDK's own transports do not retry a read timeout either)."""
        if isinstance(exception, ConnectError):
            return True
        if isinstance(exception, TimeoutError):
            return False
        return isinstance(exception, (ConnectionError, http.client.HTTPException, ssl.SSLError))

    def close(self) -> None:
        for key in list(self._connections):
            self._drop(key)
