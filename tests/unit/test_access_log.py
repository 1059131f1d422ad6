"""The access log: complete JSON lines with semantic-convention names, levels by status, written
in batches by its own thread, every line out by close(), nothing written when the level is off."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrohsm.telemetry.access import AccessLog, fields, level_of


def sample(**over: object) -> str:
    values: dict[str, object] = dict(
        method="POST", route="/v1/keys/{key_id}/encrypt", path="/v1/keys/k1/encrypt",
        status=200, duration_ms=0.4321, client="192.0.2.7", peer="127.0.0.1", user="svc",
        role="service", session=None, fingerprint=None, request_id="req-1",
        trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331",
        trace_flags="01", correlation_id=None, user_agent="curl/8.5", server_port=8443,
        error_type=None)
    values.update(over)
    return fields(**values)  # type: ignore[arg-type]


class Counting(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def logger() -> logging.Logger:
    log = logging.getLogger("ferrohsm.test-access")
    log.setLevel(logging.INFO)
    return log


def test_a_line_is_one_json_object_with_current_semantic_convention_names(
        logger: logging.Logger) -> None:
    out = io.StringIO()
    access = AccessLog(out, logger=logger)
    access.write(access.line(sample(), 200, now=1796400000.5))
    access.close()
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    line = json.loads(text)
    assert line["ts"] == "2026-12-04T16:00:00.500Z" and line["level"] == "info"
    assert line["logger"] == "ferrohsm.access"
    assert (line["http.request.method"], line["url.path"], line["http.response.status_code"],
            line["user.id"], line["user.roles"], line["user_agent.original"],
            line["server.port"], line["error.type"]) == (
        "POST", "/v1/keys/k1/encrypt", 200, "svc", ["service"], "curl/8.5", 8443, None)
    assert (line["trace_id"], line["span_id"], line["trace_flags"]) == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "01")
    assert line["duration_ms"] == 0.432
    assert "enduser.id" not in line


@pytest.mark.parametrize(("status", "level"), [(200, logging.INFO), (404, logging.INFO),
                                               (401, logging.WARNING), (403, logging.WARNING),
                                               (429, logging.WARNING), (503, logging.ERROR)])
def test_refusals_an_operator_should_see_are_warnings(status: int, level: int) -> None:
    assert level_of(status) == level


def test_the_level_decides_which_lines_are_written(logger: logging.Logger) -> None:
    logger.setLevel(logging.WARNING)
    access = AccessLog(io.StringIO(), logger=logger)
    assert not access.enabled_for(200)
    assert access.enabled_for(401) and access.enabled_for(403) and access.enabled_for(429)
    line = json.loads(access.line(sample(status=403, error_type="forbidden"), 403))
    assert line["level"] == "warning" and line["error.type"] == "forbidden"


def test_lines_are_written_in_batches_by_the_writer_thread(logger: logging.Logger) -> None:
    out = Counting()
    access = AccessLog(out, interval=0.2, logger=logger)
    for i in range(500):
        access.write(access.line(sample(request_id=f"r{i}"), 200))
    deadline = time.monotonic() + 5
    while access.written < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert access.written == 500 and out.writes <= 3  # one write per batch, not per line
    assert access._thread is not None and access._thread is not threading.current_thread()
    access.close()


def test_close_writes_every_queued_line_and_a_later_write_starts_again(
        logger: logging.Logger) -> None:
    out = io.StringIO()
    access = AccessLog(out, interval=60.0, logger=logger)  # the thread would wait a minute
    for i in range(1000):
        access.write(access.line(sample(request_id=f"r{i}"), 200))
    access.close()
    lines = out.getvalue().splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == [f"r{i}" for i in range(1000)]
    access.write(access.line(sample(request_id="after"), 200))
    access.close()
    assert json.loads(out.getvalue().splitlines()[-1])["request_id"] == "after"


def test_a_closed_stream_loses_lines_quietly_never_raises(logger: logging.Logger) -> None:
    out = io.StringIO()
    access = AccessLog(out, logger=logger)
    out.close()
    access.write(access.line(sample(), 200))
    access.close()  # no exception: the request path and shutdown go on


@settings(max_examples=200, deadline=None)
@given(st.text(st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)), max_size=40))
def test_any_client_text_stays_inside_its_json_string(value: str) -> None:
    line = AccessLog(io.StringIO()).line(sample(user_agent=value, path=value, user=value,
                                                client=value, session=value), 400)
    assert line.isascii() and line.count("\n") == 1
    parsed = json.loads(line)
    for name in ("user_agent.original", "url.path", "user.id", "client.address", "session.id"):
        assert parsed[name] == json.loads(json.dumps(value))
