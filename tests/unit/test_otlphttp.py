"""The exporter child's stdlib transport (telemetry/otlphttp.py), through the SDK's own client,
against real loopback collectors: plain HTTP, TLS with a CA file and a client certificate,
compression and headers, a collector that closes its connections, restarts, refuses with a
retryable status, or never answers; and when the SDK's transport is kept instead (proxies)."""

from __future__ import annotations

import gzip
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from ferrohsm.telemetry import otlpexport, otlphttp
from ferrohsm.tls.devpki import make_dev_pki


class Collector:
    """A loopback OTLP/HTTP endpoint that records what arrives. ``script``: the statuses to
    answer in turn (then 200); ``close_after``: close each connection after its answer, saying
    so; ``drop_after``: the same without saying so (as an idle timeout does); ``stall``: read
    the request, never answer."""

    def __init__(self, tls: ssl.SSLContext | None = None, port: int = 0) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.peers: list[int] = []  # the client port of each request (a new port: new conn)
        self.script: list[int] = []
        self.close_after = self.drop_after = self.stall = False
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.bodies.append(body)
                owner.headers.append({k.lower(): v for k, v in self.headers.items()})
                owner.peers.append(self.client_address[1])
                if owner.stall:
                    time.sleep(3)
                    return
                status = owner.script.pop(0) if owner.script else 200
                self.send_response(status)
                if status != 200:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                if owner.close_after:
                    self.send_header("Connection", "close")
                self.end_headers()
                if owner.close_after or owner.drop_after:
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://localhost:{self.port}/v1/traces"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def exporter(monkeypatch: pytest.MonkeyPatch, url: str, **env: str) -> otlpexport.Exporter:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return otlpexport.Exporter()


def transport(exp: otlpexport.Exporter) -> Any:
    return exp.exporter._client._transport


def test_exports_go_over_one_kept_alive_connection(monkeypatch: pytest.MonkeyPatch,
                                                   collector: Collector) -> None:
    exp = exporter(monkeypatch, collector.url,
                   OTEL_EXPORTER_OTLP_TRACES_HEADERS="x-tenant=blue,authorization=Basic%20eA==")
    try:
        assert isinstance(transport(exp), otlphttp.StdlibTransport)
        assert all(exp._post(b"\x0a\x00") for _ in range(3))
    finally:
        exp.shutdown()
    assert collector.bodies == [b"\x0a\x00"] * 3
    assert len(set(collector.peers)) == 1  # one connection for the three
    sent = collector.headers[0]
    assert sent["content-type"] == "application/x-protobuf"
    assert sent["x-tenant"] == "blue" and sent["authorization"] == "Basic eA=="


def test_compression_stays_the_sdks(monkeypatch: pytest.MonkeyPatch,
                                    collector: Collector) -> None:
    exp = exporter(monkeypatch, collector.url, OTEL_EXPORTER_OTLP_TRACES_COMPRESSION="gzip")
    try:
        assert exp._post(b"\x0a\x02" + b"\x0a\x00")
    finally:
        exp.shutdown()
    assert collector.headers[0]["content-encoding"] == "gzip"
    assert gzip.decompress(collector.bodies[0]) == b"\x0a\x02\x0a\x00"


def test_tls_with_a_ca_file_and_a_client_certificate(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path / "pki")
    client_cert, client_key = pki.issue_client_cert("exporter")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki.server_cert, pki.server_key)
    tls.load_verify_locations(pki.ca_cert)
    tls.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no answer
    secure = Collector(tls)
    try:
        exp = exporter(monkeypatch, secure.url,
                       OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE=str(pki.ca_cert),
                       OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE=str(client_cert),
                       OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY=str(client_key))
        try:
            assert isinstance(transport(exp), otlphttp.StdlibTransport)
            assert exp._post(b"\x0a\x00")
        finally:
            exp.shutdown()
        # a folder of CA certificates (as c_rehash leaves it) does as well as the file
        folder = tmp_path / "cas"
        folder.mkdir()
        subject_hash = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in",
                                       str(pki.ca_cert)], capture_output=True, text=True,
                                      check=True).stdout.strip()
        (folder / f"{subject_hash}.0").write_bytes(pki.ca_cert.read_bytes())
        by_folder = exporter(monkeypatch, secure.url,
                             OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE=str(folder))
        try:
            assert by_folder._post(b"\x0a\x01")
        finally:
            by_folder.shutdown()
        # the system's trust store does not know the dev CA: refused, as requests would
        stranger = exporter(monkeypatch, secure.url,
                            OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE="")
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
        try:
            assert not stranger._post(b"\x0a\x00")
        finally:
            stranger.shutdown()
    finally:
        secure.close()
    assert secure.bodies == [b"\x0a\x00", b"\x0a\x01"]


def test_a_collector_that_closes_or_restarts_is_reached_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = Collector()
    port = first.port
    exp = exporter(monkeypatch, first.url)
    try:
        first.close_after = True
        assert exp._post(b"\x0a\x00") and exp._post(b"\x0a\x00")
        assert len(set(first.peers)) == 2  # a new connection after each close
        first.close_after, first.drop_after = False, True
        # a kept connection the collector dropped without a word: the SDK sends once more at
        # once, on a new connection
        assert exp._post(b"\x0a\x00") and exp._post(b"\x0a\x00")
        assert len(first.bodies) == 4 and len(set(first.peers)) == 4
        first.close()  # nothing listens now
        assert not exp._post(b"\x0a\x00")  # refused, retried with backoff, given up
        again = Collector(port=port)
        try:
            assert exp._post(b"\x0a\x01")
            assert again.bodies == [b"\x0a\x01"]
        finally:
            again.close()
    finally:
        exp.shutdown()


def test_a_retryable_status_is_retried_by_the_sdk(monkeypatch: pytest.MonkeyPatch,
                                                  collector: Collector) -> None:
    collector.script = [503, 429]
    exp = exporter(monkeypatch, collector.url)
    try:
        assert exp._post(b"\x0a\x00")
    finally:
        exp.shutdown()
    assert len(collector.bodies) == 3


def test_a_collector_that_never_answers_costs_the_timeout_once(
        monkeypatch: pytest.MonkeyPatch, collector: Collector) -> None:
    collector.stall = True
    exp = exporter(monkeypatch, collector.url, OTEL_EXPORTER_OTLP_TRACES_TIMEOUT="1")
    try:
        started = time.monotonic()
        assert not exp._post(b"\x0a\x00")
        assert time.monotonic() - started < 2.5
    finally:
        exp.shutdown()
    assert len(collector.bodies) == 1  # a read timeout is not sent again at once


def test_nothing_listening_is_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lighter = otlphttp.StdlibTransport()
    result = lighter.request("POST", f"http://127.0.0.1:{port}/v1/traces", data=b"", timeout=1)
    assert result.status_code is None and lighter.is_connection_error(result.error)
    assert not lighter.is_connection_error(TimeoutError("read"))


def test_a_header_that_cannot_be_sent_is_not_quoted(collector: Collector) -> None:
    """A credential with a line break in it (OTEL_EXPORTER_OTLP_HEADERS is URL-decoded): the
    refusal says what is wrong without the value, which the exporter would log."""
    lighter = otlphttp.StdlibTransport()
    broken = "Bearer s3cr3t\r\nx-injected: 1"
    result = lighter.request("POST", collector.url, data=b"", timeout=2,
                             headers={"authorization": broken})
    assert result.status_code is None and not lighter.is_connection_error(result.error)
    assert "s3cr3t" not in str(result.error) and "OTEL_EXPORTER_OTLP_HEADERS" in str(result.error)
    assert collector.bodies == []  # nothing sent
    ok = lighter.request("POST", collector.url, data=b"\x0a\x00", timeout=2)
    assert ok.status_code == 200  # the transport is still usable
    lighter.close()


class RawCollector:
    """A loopback endpoint that reads one request a connection and answers with ``answer``
    (a function of the connection), for answers no well-behaved server gives."""

    def __init__(self, answer: Any) -> None:
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            self.requests.append(head)
            try:
                self.answer(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def endless(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"
    while True:
        conn.sendall(chunk)


def dripping(first: bytes, then: bytes) -> Any:
    """An answer that sends ``first``, then ``then`` every quarter of a second for 10 s."""
    def answer(conn: socket.socket) -> None:
        conn.sendall(first)
        for _ in range(40):
            conn.sendall(then)
            time.sleep(0.25)
    return answer


drip = dripping(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"x")
drip_head = dripping(b"HTTP/1.1 200 OK\r\n", b"X-Slow: 1\r\n")
drip_status = dripping(b"HTTP/1.1 ", b" ")


def broken_chunks(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")


@pytest.mark.parametrize("answer", [endless, drip, drip_head, drip_status, broken_chunks],
                         ids=["endless", "drip", "drip_head", "drip_status", "broken_chunks"])
def test_a_collector_cannot_hold_an_export_or_fill_the_exporters_memory(
        monkeypatch: pytest.MonkeyPatch, answer: Any) -> None:
    """An endless answer is read up to a cap and its status taken; one that drips is cut off
    at the export's timeout, not at each read's. Once a 200 status line has arrived, the batch
    is delivered (the collector had accepted it) whatever follows: headers or a body that drip
    past the deadline, or a malformed body; it is never sent again. A status line that does
    not arrive in time is a timeout."""
    raw = RawCollector(answer)
    exp = exporter(monkeypatch, f"http://127.0.0.1:{raw.port}/v1/traces",
                   OTEL_EXPORTER_OTLP_TRACES_TIMEOUT="2")
    try:
        started = time.monotonic()
        delivered = exp._post(b"\x0a\x00")
        assert time.monotonic() - started < 3.5
    finally:
        exp.shutdown()
        raw.close()
    assert delivered == (answer is not drip_status)
    assert len(raw.requests) == 1  # never sent twice


def test_an_endpoint_path_is_sent_percent_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = RawCollector(lambda conn: conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    exp = exporter(monkeypatch, f"http://127.0.0.1:{raw.port}/pa th/\u00fc?q=a b&r=%20")
    try:
        assert exp._post(b"\x0a\x00")
    finally:
        exp.shutdown()
        raw.close()
    assert raw.requests[0].split(b"\r\n")[0] == b"POST /pa%20th/%C3%BC?q=a%20b&r=%20 HTTP/1.1"


@pytest.mark.parametrize(("path", "sent"), [
    ("/100%", "/100%25"), ("/a%zz", "/a%25zz"), ("/v1?q=%zz", "/v1?q=%25zz"),
    ("/a/../v1/traces", "/v1/traces"), ("/./v1", "/v1"), ("/v1/traces/..", "/v1/"),
    ("/%41%7e%2f", "/A~%2F"), ("/v1/traces", "/v1/traces")])
def test_the_target_is_the_one_the_sdks_transport_sends(path: str, sent: str) -> None:
    """What requests and urllib3 make of an endpoint's path (a second red team compared the
    request lines a raw server saw): a stray % encoded, dot segments removed."""
    assert otlphttp.target_of(f"http://127.0.0.1:4318{path}") == sent


def test_basic_credentials_keep_the_sdks_transport(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """requests sends Basic credentials from the URL's userinfo or a netrc file: with either,
    the SDK's transport carries the exports."""
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
    assert otlphttp.wanted("http://collector.example:4318/v1/traces")
    assert not otlphttp.wanted("http://user:pass@collector.example:4318/v1/traces")
    assert not otlphttp.wanted("http://user@collector.example:4318/v1/traces")
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine collector.example login user password pass\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert not otlphttp.wanted("http://collector.example:4318/v1/traces")
    assert otlphttp.wanted("http://other.example:4318/v1/traces")
    netrc_file.write_text("machine\n")  # not parseable: the SDK's transport decides
    assert not otlphttp.wanted("http://other.example:4318/v1/traces")
    # NETRC as requests reads it: "~" expanded (systemd and Docker do not expand it), and an
    # empty NETRC names no file at all
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mynetrc").write_text("machine collector.example login u password p\n")
    monkeypatch.setenv("NETRC", "~/mynetrc")
    assert not otlphttp.wanted("http://collector.example:4318/v1/traces")
    (tmp_path / ".netrc").write_text("machine collector.example login u password p\n")
    monkeypatch.setenv("NETRC", "")
    assert otlphttp.wanted("http://collector.example:4318/v1/traces")
    monkeypatch.delenv("NETRC")
    assert not otlphttp.wanted("http://collector.example:4318/v1/traces")  # ~/.netrc


def test_a_proxy_or_a_credential_provider_keeps_the_sdks_transport(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY",
                 "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    url = "http://collector.example:4318/v1/traces"
    assert otlphttp.wanted(url)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert not otlphttp.wanted(url)
    assert otlphttp.wanted("https://collector.example:4318/v1/traces")  # no https proxy
    monkeypatch.setenv("NO_PROXY", "collector.example")
    assert otlphttp.wanted(url)
    monkeypatch.delenv("NO_PROXY")
    exp = exporter(monkeypatch, url)
    try:
        assert not isinstance(transport(exp), otlphttp.StdlibTransport)
    finally:
        exp.shutdown()
    monkeypatch.delenv("HTTP_PROXY")
    assert not otlphttp.wanted(url, {otlphttp.CREDENTIAL_PROVIDER: "mine"})
    assert not otlphttp.wanted("unix:///run/collector.sock")


def test_the_ca_bundle_is_the_one_requests_would_trust(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    import certifi
    assert otlphttp.default_ca_bundle({}) == certifi.where()
    assert otlphttp.default_ca_bundle({"CURL_CA_BUNDLE": "/b"}) == "/b"
    assert otlphttp.default_ca_bundle({"REQUESTS_CA_BUNDLE": "/a", "CURL_CA_BUNDLE": "/b"}) == "/a"
