"""Strict HTTP/1.1 framing: one named test per class of malformed or ambiguous request.

Every refusal must happen before the application runs, answer with the API error body (and an
X-Request-ID), and close the connection, because after a framing error we no longer know where
the next request starts (request smuggling).
"""

from __future__ import annotations

import logging
import random
import socket
import time
from typing import Any

import pytest

from ferrohsm.api.server import HardenedHTTPServer

H = "Host: 127.0.0.1\r\n"
JSON = "Content-Type: application/json\r\n"


def assert_refused(response: Any, status: int, code: str) -> None:
    assert response.status == status, response.body
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == response.header("X-Request-ID")
    assert response.header("Connection") == "close"
    assert response.closed, "connection must be closed after a framing error"


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def srv(make_server: Any, calls: list[str]) -> Any:
    """An echo server that records every request reaching the application."""
    from ferrohsm.api.http import json_response

    def app(request: Any) -> Any:
        calls.append(request.method)
        return json_response(200, {"method": request.method, "body_len": len(request.body)})

    return make_server(app, max_body=1000, max_request_line=200, max_header_bytes=1000,
                       max_headers=10)


def send(exchange: Any, srv: HardenedHTTPServer, text: str | bytes) -> Any:
    data = text.encode("latin-1") if isinstance(text, str) else text
    return exchange(srv, data)


# ------------------------------------------------------------------ Content-Length / TE


def test_duplicate_content_length(exchange: Any, srv: Any, calls: list[str]) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}{JSON}Content-Length: 2\r\n"
                            "Content-Length: 2\r\n\r\n{}")
    assert_refused(r, 400, "bad_request")
    assert calls == []


def test_conflicting_content_length(exchange: Any, srv: Any, calls: list[str]) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}{JSON}Content-Length: 2\r\n"
                            "Content-Length: 7\r\n\r\n{}GET / ")
    assert_refused(r, 400, "bad_request")
    assert calls == []


def test_content_length_list_form(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}{JSON}Content-Length: 2, 2\r\n\r\n{{}}")
    assert_refused(r, 400, "bad_request")


def test_transfer_encoding_other_than_chunked_refused(exchange: Any, srv: Any,
                                                     calls: list[str]) -> None:
    # Exactly "chunked" is accepted (tests/integration/test_chunked.py); any other coding is not.
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}{JSON}Transfer-Encoding: gzip, chunked"
                            "\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert_refused(r, 400, "bad_request")
    assert calls == []


def test_transfer_encoding_with_content_length_refused(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}{JSON}Content-Length: 2\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n{}")
    assert_refused(r, 400, "bad_request")


@pytest.mark.parametrize("value", [
    "+2", "-2", "0_2", "1 0", "2abc", "0x2", " 2x", "2.0", "", "²",
])
def test_content_length_syntax_int_accepts_but_http_does_not(
        exchange: Any, srv: Any, calls: list[str], value: str) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}{JSON}Content-Length: {value}\r\n\r\n{{}}")
    assert_refused(r, 400, "bad_request")
    assert calls == []


@pytest.mark.parametrize("length", ["1000000", "99999999999", "9" * 200], ids=["1e6", "11 digits", "200 digits"])
def test_body_too_large_refused_without_reading(exchange: Any, srv: Any, calls: list[str],
                                                length: str) -> None:
    started = time.monotonic()
    # The body is never sent: a 413 that arrives at once proves the server did not wait (a
    # length of more digits than any limit is too large too, not malformed).
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}{JSON}Content-Length: {length}\r\n\r\n")
    assert time.monotonic() - started < 1.5
    assert_refused(r, 413, "payload_too_large")
    assert calls == []


def test_post_without_content_length_is_empty_body(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}\r\n")
    assert r.status == 200 and r.json() == {"method": "POST", "body_len": 0}
    assert not r.closed


# ------------------------------------------------------------------ Content-Type


def test_body_with_wrong_content_type(exchange: Any, srv: Any, calls: list[str]) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}Content-Type: text/plain\r\n"
                            "Content-Length: 2\r\n\r\n{}")
    assert_refused(r, 415, "unsupported_media_type")
    assert calls == []


def test_body_without_content_type(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}Content-Length: 2\r\n\r\n{{}}")
    assert_refused(r, 415, "unsupported_media_type")


def test_json_content_type_with_charset_accepted(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}Content-Type: Application/JSON; "
                            "charset=utf-8\r\nContent-Length: 2\r\n\r\n{}")
    assert r.status == 200 and r.json()["body_len"] == 2


@pytest.mark.parametrize("content_type", ['application/json; charset=latin1',
                                          'application/json; charset="UTF-16"'])
def test_json_in_another_charset_is_refused_not_misread(exchange: Any, srv: Any,
                                                        calls: list[str],
                                                        content_type: str) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}Content-Type: {content_type}\r\n"
                            "Content-Length: 2\r\n\r\n{}")
    assert_refused(r, 415, "unsupported_media_type")
    assert "UTF-8" in r.json()["error"]["message"]
    assert calls == []


def test_two_content_types_are_refused_as_ambiguous(exchange: Any, srv: Any,
                                                    calls: list[str]) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}{JSON}Content-Type: text/plain\r\n"
                            "Content-Length: 2\r\n\r\n{}")
    assert_refused(r, 400, "bad_request")
    assert calls == []


@pytest.mark.parametrize("coding", ["gzip", "identity, br"])
def test_a_compressed_body_is_refused_with_the_way_out(exchange: Any, srv: Any,
                                                       calls: list[str], coding: str) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}{JSON}Content-Encoding: {coding}\r\n"
                            "Content-Length: 2\r\n\r\n{}")
    assert_refused(r, 415, "unsupported_media_type")
    assert "uncompressed" in r.json()["error"]["message"]
    assert calls == []


def test_identity_content_encoding_is_accepted(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}{JSON}Content-Encoding: identity\r\n"
                            "Content-Length: 2\r\n\r\n{}")
    assert r.status == 200 and r.json()["body_len"] == 2


# ------------------------------------------------------------------ header syntax


def test_obs_fold_refused(exchange: Any, srv: Any, calls: list[str]) -> None:
    r = send(exchange, srv, f"GET /e HTTP/1.1\r\n{H}X-A: one\r\n two\r\n\r\n")
    assert_refused(r, 400, "bad_request")
    assert "folding" in r.json()["error"]["message"]
    assert calls == []


def test_obs_fold_with_tab_refused(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"GET /e HTTP/1.1\r\n{H}X-A: one\r\n\ttwo\r\n\r\n")
    assert_refused(r, 400, "bad_request")


def test_header_line_without_colon(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"GET /e HTTP/1.1\r\n{H}NoColonHere\r\n\r\n")
    assert_refused(r, 400, "bad_request")


def test_whitespace_before_colon(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}{JSON}Content-Length : 2\r\n\r\n{{}}")
    assert_refused(r, 400, "bad_request")
    assert "colon" in r.json()["error"]["message"]


def test_header_name_not_a_token(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"GET /e HTTP/1.1\r\n{H}X(A): 1\r\n\r\n")
    assert_refused(r, 400, "bad_request")


def test_control_character_in_header_value(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"GET /e HTTP/1.1\r\n{H}X-A: a\x01b\r\n\r\n")
    assert_refused(r, 400, "bad_request")


def test_nul_in_header_value(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"GET /e HTTP/1.1\r\n{H}X-A: a\x00b\r\n\r\n")
    assert_refused(r, 400, "bad_request")


def test_control_character_in_header_name(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"GET /e HTTP/1.1\r\n{H}X-\x7fA: 1\r\n\r\n")
    assert_refused(r, 400, "bad_request")


def test_whitespace_heavy_header_parsed_in_linear_time(exchange: Any, make_server: Any) -> None:
    """Regression: an OWS-trimming regex backtracked quadratically (3 s of CPU per header)."""
    server = make_server()
    started = time.monotonic()
    r = send(exchange, server, f"GET /e HTTP/1.1\r\n{H}X-A: a{' ' * 30000}b \r\n\r\n")
    assert r.status == 200 and time.monotonic() - started < 1.0


def test_bare_lf_line_ending(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, "GET /e HTTP/1.1\nHost: 127.0.0.1\n\n")
    assert_refused(r, 400, "bad_request")


def test_missing_host(exchange: Any, srv: Any, calls: list[str]) -> None:
    r = send(exchange, srv, "GET /e HTTP/1.1\r\nX-A: 1\r\n\r\n")
    assert_refused(r, 400, "bad_request")
    assert calls == []


def test_more_than_one_host(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"GET /e HTTP/1.1\r\n{H}Host: evil.example\r\n\r\n")
    assert_refused(r, 400, "bad_request")


def test_http10_without_host_accepted_and_closed(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, "GET /e HTTP/1.0\r\n\r\n")
    assert r.status == 200 and r.closed and r.header("Connection") == "close"


# ------------------------------------------------------------------ request line


def test_control_character_in_target(exchange: Any, srv: Any, calls: list[str]) -> None:
    r = send(exchange, srv, f"GET /a\x01b HTTP/1.1\r\n{H}\r\n")
    assert_refused(r, 400, "bad_request")
    assert calls == []


def test_nul_in_target(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"GET /a\x00b HTTP/1.1\r\n{H}\r\n")
    assert_refused(r, 400, "bad_request")


def test_http09_request_refused(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, "GET /e\r\n\r\n")
    assert_refused(r, 400, "bad_request")
    assert "0.9" in r.json()["error"]["message"]


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/1.2", "HTTP/3.0", "HTTP/0.9"])
def test_unsupported_version_is_505(exchange: Any, srv: Any, version: str) -> None:
    r = send(exchange, srv, f"GET /e {version}\r\n{H}\r\n")
    assert_refused(r, 505, "http_version_not_supported")


@pytest.mark.parametrize("version", ["HTTP/1.1x", "http/1.1", "HTTP/11", "FOO", "HTTP/1.1 "])
def test_garbage_version_is_400(exchange: Any, srv: Any, version: str) -> None:
    r = send(exchange, srv, f"GET /e {version}\r\n{H}\r\n")
    assert_refused(r, 400, "bad_request")


def test_request_line_too_long_is_414(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"GET /{'a' * 300} HTTP/1.1\r\n{H}\r\n")
    assert_refused(r, 414, "uri_too_long")


def test_request_line_too_long_detected_before_line_end(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"GET /{'a' * 300}")  # no CRLF yet: refused without waiting
    assert_refused(r, 414, "uri_too_long")


def test_header_section_too_large_is_431(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"GET /e HTTP/1.1\r\n{H}X-Big: {'b' * 1200}\r\n\r\n")
    assert_refused(r, 431, "request_header_fields_too_large")


def test_too_many_headers_is_431(exchange: Any, srv: Any) -> None:
    many = "".join(f"X-{i}: {i}\r\n" for i in range(11))
    r = send(exchange, srv, f"GET /e HTTP/1.1\r\n{H}{many}\r\n")
    assert_refused(r, 431, "request_header_fields_too_large")


def test_asterisk_target_refused(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"OPTIONS * HTTP/1.1\r\n{H}\r\n")
    assert_refused(r, 400, "bad_request")


@pytest.mark.parametrize("target", ["127.0.0.1:443", "e", "/a#frag", "/a b", "/a\\b",
                                    "/caf\xe9", "ftp://127.0.0.1/e", "https://u@127.0.0.1/e",
                                    "https:///e", "https://127.0.0.1/a#frag", "https://h/a\\b",
                                    "https://127.0.0.1:99x/e", "https:/e"])
def test_authority_form_or_invalid_target_refused(exchange: Any, srv: Any, target: str) -> None:
    r = send(exchange, srv, f"GET {target} HTTP/1.1\r\n{H}\r\n")
    assert_refused(r, 400, "bad_request")


@pytest.mark.parametrize(("target", "path", "query"), [
    ("https://127.0.0.1:8443/echo", "/echo", {}),
    ("http://127.0.0.1/echo?a=1&b=%20", "/echo", {"a": ["1"], "b": [" "]}),
    ("HTTPS://Example.COM/echo", "/echo", {}),
    ("https://[::1]:8443/v1/keys/a%2Fb", "/v1/keys/a%2Fb", {}),
    ("https://127.0.0.1", "/", {}),
    ("https://127.0.0.1?a=1", "/", {"a": ["1"]}),
])
def test_absolute_form_target_is_served_by_its_path(make_server: Any, exchange: Any,
                                                    target: str, path: str,
                                                    query: dict[str, list[str]]) -> None:
    """RFC 9112 3.2.2: a server MUST accept the absolute-form; the URI's path and query are the
    target (still raw: %2F stays encoded for the router), whatever the Host header says."""
    server = make_server()
    r = send(exchange, server, f"GET {target} HTTP/1.1\r\nHost: elsewhere\r\n\r\n")
    assert r.status == 200, r.body
    assert (r.json()["path"], r.json()["query"]) == (path, query)


def test_unknown_well_formed_method_reaches_app(exchange: Any, srv: Any, calls: list[str]
                                               ) -> None:
    r = send(exchange, srv, f"BREW /e HTTP/1.1\r\n{H}\r\n")
    assert r.status == 200 and calls == ["BREW"]


def test_double_space_in_request_line(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"GET  /e HTTP/1.1\r\n{H}\r\n")
    assert_refused(r, 400, "bad_request")


def test_leading_empty_line_ignored(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"\r\nGET /e HTTP/1.1\r\n{H}\r\n")
    assert r.status == 200


@pytest.mark.parametrize("junk", [b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", b"\x00",
                                  b"\r\n\r\n\xff\xfe", b" GET /e", b"GE\x00T /e", b"\rX",
                                  b"GET/e\t"])
def test_bytes_that_cannot_begin_a_request_line_are_refused_at_once(
        make_server: Any, connect: Any, junk: bytes) -> None:
    """Binary junk where a request line should start (a TLS record inside TLS, another
    protocol) is answered 400 as it arrives, not held until the header timeout (408)."""
    server = make_server(header_timeout=5)
    client = connect(server)
    started = time.monotonic()
    client.send(junk)
    r = client.read_response()
    assert r.status == 400 and r.json()["error"]["code"] == "bad_request", r.body
    assert time.monotonic() - started < 2
    assert client.at_eof()


REQUEST = b"GET /e HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.mark.parametrize("cut", [b"\r\n", b"\r\n\r", b"G", b"BR", b"GET ",
                                 b"GET /e HTTP/1.1\r\nHo"])
def test_what_may_still_begin_a_request_is_waited_for(make_server: Any, connect: Any,
                                                      cut: bytes) -> None:
    """Leading empty lines (RFC 9112 2.2, one of them cut in half) and any prefix of a method
    and SP are waited for: the rest of the request follows and is served."""
    server = make_server()
    client = connect(server)
    lines = cut.count(b"\r") if cut[:1] == b"\r" else 0  # empty lines before the request
    request = b"\r\n" * lines + (REQUEST.replace(b"GET", b"BREW") if cut == b"BR" else REQUEST)
    client.send(cut)
    time.sleep(0.2)
    client.send(request[len(cut):])
    r = client.read_response()
    assert r.status == 200, r.body


# ------------------------------------------------------------------ Expect, query, request id


def test_expect_100_continue(connect: Any, srv: Any) -> None:
    client = connect(srv)
    client.send(f"POST /e HTTP/1.1\r\n{H}{JSON}Content-Length: 2\r\n"
                "Expect: 100-continue\r\n\r\n".encode())
    interim = client.read_response()
    assert interim.status == 100
    client.send(b"{}")
    final = client.read_response()
    assert final.status == 200 and final.json()["body_len"] == 2


def test_unknown_expectation_is_417(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"GET /e HTTP/1.1\r\n{H}Expect: teapot\r\n\r\n")
    assert_refused(r, 417, "expectation_failed")


def test_invalid_utf8_query_refused(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"GET /e?a=%ff HTTP/1.1\r\n{H}\r\n")
    assert_refused(r, 400, "bad_request")


def test_framing_error_echoes_client_request_id(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, f"POST /e HTTP/1.1\r\n{H}X-Request-ID: trace-42\r\n"
                            "Transfer-Encoding: gzip\r\n\r\n")
    assert_refused(r, 400, "bad_request")
    assert r.header("X-Request-ID") == "trace-42"


def test_framing_error_without_request_id_gets_uuid(exchange: Any, srv: Any) -> None:
    r = send(exchange, srv, "GET /e HTTP/1.1\r\n\r\n")
    assert_refused(r, 400, "bad_request")
    rid = r.header("X-Request-ID")
    assert rid is not None and len(rid) == 36 and rid.count("-") == 4


def test_mutated_requests_never_hurt_the_server(make_server: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Deterministic mutation fuzzing: every outcome is a response or a close, nothing is
    logged as a server failure, and a clean request still works afterwards."""
    server = make_server(tls=False, header_timeout=0.3, body_timeout=0.3, linger_timeout=0.05)
    rnd = random.Random(20261128)  # noqa: S311  seeded so the fuzzing is reproducible
    base = (b"POST /v1/keys/a%20b/encrypt?x=1 HTTP/1.1\r\nHost: h\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\nX-Request-ID: r1\r\n\r\n{}")
    alphabet = b"\r\n :\t\x00\x7f%/?0123456789-+_HTTP/1.GETPOST,chunked\xff"
    seen: set[bytes] = set()
    with caplog.at_level(logging.WARNING, logger="ferrohsm.http"):
        for _ in range(150):
            data = bytearray(base)
            for _ in range(rnd.randint(1, 4)):
                pos = rnd.randrange(len(data))
                data[pos:pos + rnd.randint(0, 1)] = bytes([rnd.choice(alphabet)])
            with socket.create_connection(server.server_address, timeout=3) as sock:
                sock.sendall(bytes(data))
                sock.shutdown(socket.SHUT_WR)
                reply = b""
                while chunk := sock.recv(65536):
                    reply += chunk
            seen.add(reply[9:12])
    assert not [r for r in caplog.records if r.name == "ferrohsm.http"]
    assert {b"200", b"400"} <= seen
    assert seen <= {b"", b"200", b"400", b"408", b"413", b"414", b"415", b"417", b"431", b"505"}


@pytest.mark.parametrize("method", ["M-SEARCH", "Get", "get", "G3T", "GE-T", "FOO_1", "X.Y~Z"])
def test_any_method_token_reaches_the_application(exchange: Any, srv: Any, calls: list[str],
                                                  method: str) -> None:
    """RFC 9110 methods are tokens, case-sensitive: ``M-SEARCH`` or ``Get`` were refused as a
    "malformed method" (and logged with an empty method and path), where the README says the
    server answers any method token with a 404 or 405."""
    r = send(exchange, srv, f"{method} /e HTTP/1.1\r\n{H}\r\n")
    assert r.status == 200 and calls == [method]


@pytest.mark.parametrize("method", ["G(T", "G/T", "A" * 21, "G\x7fT"])
def test_a_method_that_is_no_token_is_refused(exchange: Any, srv: Any, calls: list[str],
                                              method: str) -> None:
    r = send(exchange, srv, f"{method} /e HTTP/1.1\r\n{H}\r\n")
    assert_refused(r, 400, "bad_request")
    assert calls == []
