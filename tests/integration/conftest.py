"""Fixtures for the HTTP transport tests: a dev PKI, servers on 127.0.0.1:0, raw-socket clients.

The raw client sends exact bytes (no client library normalizes our attacks away) over TLS by
default, and reads one response framed by Content-Length.
"""

from __future__ import annotations

import io
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

import pytest

from ferrohsm.api.http import Request, Response, json_response
from ferrohsm.api.server import HardenedHTTPServer
from ferrohsm.domain.errors import NotFound
from ferrohsm.telemetry.access import stream_in_use, use_stream
from ferrohsm.tls.context import cert_fingerprint, client_context, server_context
from ferrohsm.tls.devpki import DevPki, make_dev_pki

Address = tuple[str, int]


@pytest.fixture(autouse=True)
def _access_lines_kept_apart() -> Iterator[None]:
    """In-process servers share the process's access log: its lines go to a buffer of their
    own, not to the test's captured stderr (where a CLI test reads exactly one error line).
    Tests that read access lines point it at their own stream."""
    if stream_in_use() is not None:  # a module of tests reads them already
        yield
        return
    use_stream(io.StringIO())
    yield
    use_stream(None)


def echo_app(request: Request) -> Response:
    """Describes the request it got; ``/boom`` is a handler bug, ``/sleep?s=N`` a slow handler."""
    if request.path == "/boom":
        raise RuntimeError("secret-detail-4f2a in a handler bug")
    if request.path == "/missing":
        raise NotFound("nothing here")
    if request.path == "/sleep":
        time.sleep(float(request.query.get("s", ["0.5"])[0]))
    cert = request.client_cert_der
    return json_response(200, {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "body_len": len(request.body),
        "request_id": request.request_id,
        "peer_port": request.peer_port,
        "cert": cert_fingerprint(cert) if cert else None,
    })


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return make_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def server_ctx(dev_pki: DevPki) -> ssl.SSLContext:
    return server_context(dev_pki.server_cert, dev_pki.server_key)


@pytest.fixture(scope="session")
def client_ctx(dev_pki: DevPki) -> ssl.SSLContext:
    return client_context(dev_pki.ca_cert)


ServerFactory = Callable[..., HardenedHTTPServer]


@pytest.fixture
def make_server(server_ctx: ssl.SSLContext) -> Iterator[ServerFactory]:
    """Start servers with small timeouts (override any constructor argument); all are shut
    down, and their threads joined, at teardown."""
    started: list[HardenedHTTPServer] = []

    def factory(app: Callable[[Request], Response] = echo_app, *, tls: bool = True,
                context: ssl.SSLContext | None = None, **kwargs: Any) -> HardenedHTTPServer:
        ctx = context or server_ctx
        options: dict[str, Any] = {
            "handshake_timeout": 2.0, "header_timeout": 2.0, "body_timeout": 2.0,
            "idle_timeout": 5.0, "linger_timeout": 0.5, "max_connections": 8,
        }
        options.update(kwargs)
        server = HardenedHTTPServer(app, host="127.0.0.1", port=0,
                                    ssl_context_provider=(lambda: ctx) if tls else None,
                                    **options)
        server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.shutdown(grace=2.0)


@pytest.fixture
def server(make_server: ServerFactory) -> HardenedHTTPServer:
    return make_server()


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    closed: bool = False
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RawClient:
    """A socket (TLS unless ``context`` is None) that sends exact bytes and reads responses."""

    address: Address
    context: ssl.SSLContext | None
    timeout: float = 5.0
    sock: socket.socket = field(init=False)
    buf: bytes = b""

    def __post_init__(self) -> None:
        raw = socket.create_connection(self.address, timeout=self.timeout)
        if self.context is None:
            self.sock = raw
            return
        try:
            self.sock = self.context.wrap_socket(raw, server_hostname="127.0.0.1")
        except BaseException:
            raw.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("server closed the connection")
        self.buf += data

    def read_response(self, head_only: bool = False) -> RawResponse:
        """One response; ``head_only`` for HEAD requests (Content-Length but no body)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers = [tuple(line.split(": ", 1)) for line in lines]
        response = RawResponse(int(status), reason, headers, b"", raw_head=head)  # type: ignore[arg-type]  # 2-tuples: split once
        length = 0 if head_only else int(response.header("Content-Length") or 0)
        while len(self.buf) < length:
            self._fill()
        response.body, self.buf = self.buf[:length], self.buf[length:]
        return response

    def at_eof(self, timeout: float = 2.0) -> bool:
        """True if the server closes the connection within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError):
            return True
        finally:
            self.sock.settimeout(self.timeout)


def raw_exchange(address: Address, data: bytes, context: ssl.SSLContext | None,
                 eof_timeout: float = 2.0) -> RawResponse:
    """Send ``data`` on a fresh connection, read one response and whether the server closed."""
    with RawClient(address, context) as client:
        client.send(data)
        response = client.read_response()
        # Only wait long for a close the server announced; keep-alive answers get a glance.
        announced = response.header("Connection") == "close"
        response.closed = client.at_eof(eof_timeout if announced else 0.1)
        return response


def request_bytes(method: str = "GET", target: str = "/echo", body: bytes = b"",
                  headers: dict[str, str] | None = None) -> bytes:
    """A well-formed HTTP/1.1 request (Host, and Content-Type/Length when there is a body)."""
    fields = {"Host": "127.0.0.1"}
    if body:
        fields.update({"Content-Type": "application/json", "Content-Length": str(len(body))})
    fields.update(headers or {})
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return f"{method} {target} HTTP/1.1\r\n{head}\r\n".encode("latin-1") + body


def ferro_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ferrohsm-")]


# Helpers are handed out as fixtures: test modules cannot safely ``import conftest`` (every test
# folder has its own module of that name).

Exchange = Callable[..., RawResponse]
Connect = Callable[..., RawClient]


@pytest.fixture
def exchange(client_ctx: ssl.SSLContext) -> Exchange:
    """exchange(server, data, tls=True) -> RawResponse on a fresh connection."""

    def run(server: HardenedHTTPServer, data: bytes, *, tls: bool = True,
            eof_timeout: float = 2.0) -> RawResponse:
        return raw_exchange(server.server_address, data, client_ctx if tls else None,
                            eof_timeout)

    return run


@pytest.fixture
def connect(client_ctx: ssl.SSLContext) -> Iterator[Connect]:
    """connect(server, tls=True, context=None) -> RawClient, closed at teardown."""
    clients: list[RawClient] = []

    def run(server: HardenedHTTPServer, *, tls: bool = True,
            context: ssl.SSLContext | None = None) -> RawClient:
        client = RawClient(server.server_address, (context or client_ctx) if tls else None)
        clients.append(client)
        return client

    yield run
    for client in clients:
        client.close()


@pytest.fixture
def build() -> Callable[..., bytes]:
    """build(method, target, body, headers) -> the bytes of a well-formed request."""
    return request_bytes
