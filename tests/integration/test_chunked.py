"""Chunked request bodies: exactly ``Transfer-Encoding: chunked`` with a strict chunk grammar,
over a raw TLS socket and with real ``curl -T -``; every smuggling shape (CL.TE, TE.CL, TE.TE,
invalid sizes, missing CRLF) refused before the application runs, and the connection closed."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ferrohsm.api.http import Request, Response, json_response
from ferrohsm.api.parse import ChunkedBody
from ferrohsm.domain.errors import BadRequest, PayloadTooLarge

H = "Host: 127.0.0.1\r\n"
JSON = "Content-Type: application/json\r\n"
TE = "Transfer-Encoding: chunked\r\n"
MAX_BODY = 1000


@pytest.fixture
def calls() -> list[bytes]:
    return []


@pytest.fixture
def srv(make_server: Any, calls: list[bytes]) -> Any:
    """An echo server recording the body of every request that reaches the application."""
    def app(request: Request) -> Response:
        calls.append(request.body)
        return json_response(200, {"method": request.method, "path": request.path,
                                   "body": request.body.decode("latin-1"),
                                   "te": request.headers.get("transfer-encoding")})
    return make_server(app, max_body=MAX_BODY)


def post(body: str, extra: str = TE, path: str = "/e") -> bytes:
    return f"POST {path} HTTP/1.1\r\n{H}{JSON}{extra}\r\n{body}".encode("latin-1")


def refused(response: Any, status: int = 400) -> None:
    assert response.status == status, response.body
    assert response.header("Connection") == "close" and response.closed


# ------------------------------------------------------------------ accepted


def test_chunked_body_is_decoded_and_the_connection_kept(connect: Any, srv: Any,
                                                         calls: list[bytes]) -> None:
    client = connect(srv)
    client.send(post('7\r\n{"a":"b\r\n3\r\nc"}\r\n0\r\n\r\n'))
    first = client.read_response()
    assert first.status == 200 and first.json()["body"] == '{"a":"bc"}'
    assert first.header("Connection") is None
    client.send(post('A\r\n{"x":1234}\r\n0000\r\n\r\n'))
    second = client.read_response()
    assert second.status == 200 and second.json()["body"] == '{"x":1234}'
    assert calls == [b'{"a":"bc"}', b'{"x":1234}']


def test_chunked_body_split_byte_by_byte(connect: Any, srv: Any) -> None:
    client = connect(srv)
    for byte in post("2\r\n{}\r\n0\r\n\r\n"):
        client.send(bytes([byte]))
    assert client.read_response().json()["body"] == "{}"


def test_pipelined_request_after_a_chunked_body(connect: Any, srv: Any,
                                                calls: list[bytes]) -> None:
    client = connect(srv)
    client.send(post("2\r\n{}\r\n0\r\n\r\n") + f"GET /next HTTP/1.1\r\n{H}\r\n".encode())
    first, second = client.read_response(), client.read_response()
    assert first.json()["body"] == "{}" and second.json()["path"] == "/next"
    assert calls == [b"{}", b""]


def test_chunked_with_expect_100_continue(connect: Any, srv: Any) -> None:
    client = connect(srv)
    client.send(post("", TE + "Expect: 100-continue\r\n"))
    assert client.read_response().status == 100
    client.send(b"2\r\n{}\r\n0\r\n\r\n")
    assert client.read_response().json()["body"] == "{}"


def test_chunked_body_over_the_cap_is_413_as_soon_as_a_size_passes_it(
        exchange: Any, srv: Any, calls: list[bytes]) -> None:
    started = time.monotonic()
    # 1000 bytes so far, then a size line promising one more: refused before its data comes.
    r = exchange(srv, post(f"3E8\r\n{'x' * 1000}\r\n1\r\n"))
    assert time.monotonic() - started < 1.5
    refused(r, 413)
    assert r.json()["error"]["code"] == "payload_too_large" and calls == []


def test_chunked_body_exactly_at_the_cap_is_accepted(exchange: Any, srv: Any) -> None:
    r = exchange(srv, post(f"1F4\r\n{'x' * 500}\r\n1f4\r\n{'y' * 500}\r\n0\r\n\r\n"))
    assert r.status == 200 and len(r.json()["body"]) == MAX_BODY


# ------------------------------------------------------------------ refused codings and framing


@pytest.mark.parametrize("fields", [
    "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",          # CL.TE
    "Transfer-Encoding: chunked\r\nContent-Length: 2\r\n",          # TE.CL
    "Transfer-Encoding: gzip, chunked\r\n",
    "Transfer-Encoding: chunked, chunked\r\n",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
    "Transfer-Encoding: identity\r\n",
    "Transfer-Encoding: gzip\r\n",
    "Transfer-Encoding: Chunked\r\n",
    "Transfer-Encoding: CHUNKED\r\n",
    "Transfer-Encoding: xchunked\r\n",
    "Transfer-Encoding: chunked;q=1\r\n",
    'Transfer-Encoding: "chunked"\r\n',
    "Transfer-Encoding: chunk\r\n",
    "Transfer-Encoding:\r\n",
    "Transfer-Encoding: \tchunked, \r\n",
    "Transfer-Encoding\r\n : chunked\r\n",
    "Transfer-Encoding : chunked\r\n",
    "Transfer-Encoding:\r\n chunked\r\n",                            # obs-fold
    "X: y\r\n Transfer-Encoding: chunked\r\n",                        # obs-fold hides it
])
def test_te_smuggling_shapes_are_refused(exchange: Any, srv: Any, calls: list[bytes],
                                         fields: str) -> None:
    r = exchange(srv, f"POST /e HTTP/1.1\r\n{H}{JSON}{fields}\r\n2\r\n{{}}\r\n0\r\n\r\n"
                 .encode())
    refused(r)
    assert calls == []


def test_chunked_in_http10_is_refused(exchange: Any, srv: Any, calls: list[bytes]) -> None:
    r = exchange(srv, f"POST /e HTTP/1.0\r\n{H}{JSON}{TE}\r\n2\r\n{{}}\r\n0\r\n\r\n".encode())
    assert r.status == 400 and calls == []


def test_chunked_without_json_content_type_is_415(exchange: Any, srv: Any) -> None:
    r = exchange(srv, f"POST /e HTTP/1.1\r\n{H}{TE}\r\n2\r\n{{}}\r\n0\r\n\r\n".encode())
    assert r.status == 415 and r.header("Connection") == "close"


@pytest.mark.parametrize("body", [
    "+2\r\n{}\r\n0\r\n\r\n", "-2\r\n{}\r\n0\r\n\r\n", "0x2\r\n{}\r\n0\r\n\r\n",
    " 2\r\n{}\r\n0\r\n\r\n", "2 \r\n{}\r\n0\r\n\r\n", "2\t\r\n{}\r\n0\r\n\r\n",
    "000000002\r\n{}\r\n0\r\n\r\n", "1" * 20 + "\r\n{}\r\n0\r\n\r\n", "g\r\n{}\r\n0\r\n\r\n",
    "\r\n{}\r\n0\r\n\r\n", "2;ext=1\r\n{}\r\n0\r\n\r\n", "2;\r\n{}\r\n0\r\n\r\n",
    "2\n{}\r\n0\r\n\r\n", "2\r{}\r\n0\r\n\r\n", "2\r\n{}\n0\r\n\r\n", "2\r\n{}0\r\n\r\n",
    "2\r\n{}xx\r\n0\r\n\r\n", "1\r\n{}\r\n0\r\n\r\n", "3\r\n{}\r\n0\r\n\r\n",
    "2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n", "2\r\n{}\r\n0\r\nA:b\r\n\r\n",
    "2\r\n{}\r\n0\n\n", "2\r\n{}\r\n0;x\r\n\r\n", "\xb2\r\n{}\r\n0\r\n\r\n",
])
def test_invalid_chunk_syntax_is_refused(exchange: Any, srv: Any, calls: list[bytes],
                                         body: str) -> None:
    refused(exchange(srv, post(body)))
    assert calls == []


def test_missing_final_crlf_waits_then_times_out(exchange: Any, srv: Any,
                                                 calls: list[bytes]) -> None:
    started = time.monotonic()
    r = exchange(srv, post("2\r\n{}\r\n0\r\n"), eof_timeout=5.0)
    assert r.status == 408 and calls == []
    assert time.monotonic() - started < 5


def test_smuggled_request_in_chunk_data_is_body_not_a_request(
        exchange: Any, srv: Any, calls: list[bytes]) -> None:
    inner = f"GET /smuggled HTTP/1.1\r\n{H}\r\n"
    r = exchange(srv, post(f"{len(inner):x}\r\n{inner}\r\n0\r\n\r\n"))
    assert r.status == 200 and calls == [inner.encode()]


# ------------------------------------------------------------------ the decoder itself


def test_decoder_consumes_exactly_the_body_and_leaves_the_rest() -> None:
    buf = bytearray(b"3\r\nabc\r\n0\r\n\r\nGET /")
    decoder = ChunkedBody(10)
    assert decoder.feed(buf) and bytes(decoder.body) == b"abc" and buf == b"GET /"
    with pytest.raises(PayloadTooLarge):
        ChunkedBody(2).feed(bytearray(b"3\r\n"))
    with pytest.raises(BadRequest, match="extensions"):
        ChunkedBody(10).feed(bytearray(b"3;a=b\r\n"))


# ------------------------------------------------------------------ real clients


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_upload_from_stdin_is_chunked_and_accepted(srv: Any, dev_pki: Any,
                                                        calls: list[bytes],
                                                        tmp_path: Path) -> None:
    body = json.dumps({"plaintext": "eA==", "pad": "p" * 300}).encode()
    port = srv.server_address[1]
    trace = tmp_path / "trace"
    result = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--cacert", str(dev_pki.ca_cert), "-T", "-",
         "-X", "POST", "-H", "Content-Type: application/json", "--trace-ascii", str(trace),
         f"https://127.0.0.1:{port}/v1/x"],
        input=body, capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["body"] == body.decode()
    assert calls == [body]
    assert "Transfer-Encoding: chunked" in trace.read_text()


GO_CLIENT = """package main

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"strings"
)

// POSTs a body behind a plain io.Reader (length unknown): net/http sends it chunked.
func main() {
	pem, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	config := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: config}}
	body := io.MultiReader(strings.NewReader(os.Args[3][:3]), strings.NewReader(os.Args[3][3:]))
	req, err := http.NewRequest("POST", os.Args[2], body)
	if err != nil {
		panic(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	io.Copy(os.Stdout, resp.Body)
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed")
def test_go_net_http_with_a_plain_reader_is_chunked_and_accepted(
        srv: Any, dev_pki: Any, calls: list[bytes], tmp_path: Path) -> None:
    source = tmp_path / "main.go"
    source.write_text(GO_CLIENT)
    built = subprocess.run(["go", "build", "-o", str(tmp_path / "post"), str(source)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           check=False)
    if built.returncode != 0:
        pytest.skip(f"go build failed here: {built.stderr[-300:]}")
    body = json.dumps({"plaintext": "eA==", "pad": "q" * 200})
    result = subprocess.run([str(tmp_path / "post"), str(dev_pki.ca_cert),
                             f"https://127.0.0.1:{srv.server_address[1]}/v1/x", body],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    echoed = json.loads(result.stdout)
    assert echoed["te"] == "chunked" and echoed["body"] == body
    assert calls == [body.encode()]
