"""What a refused head's request line still tells (api/parse.py scan_request_line): each part
that is valid alone, so the access line, span and metrics name a plain GET even when its
target was refused."""

from __future__ import annotations

import pytest

from ferrohsm.api.parse import scan_request_line


@pytest.mark.parametrize(("raw", "expected"), [
    (b"GET /v1/keys?limit=2 HTTP/1.1\r\nHost: x\r\n", ("GET", "/v1/keys")),
    (b'GET /v1/keys/\xff"x\\ HTTP/1.1\r\n', ("GET", "")),  # a target no parser takes
    (b"POST /v1/keys HTTP/2.0\r\n", ("POST", "/v1/keys")),  # refused for its version
    (b"GET /v1/keys\r\n", ("GET", "")),  # HTTP/0.9
    (b"G\x00T /v1/keys HTTP/1.1\r\n", ("", "/v1/keys")),  # a method that is no token
    (b"\xff\xfe\r\n", ("", "")),
    (b"", ("", "")),
])
def test_each_valid_part_of_a_refused_request_line_is_kept(
        raw: bytes, expected: tuple[str, str]) -> None:
    assert scan_request_line(raw) == expected
