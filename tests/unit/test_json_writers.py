"""Every writer of JSON (responses, audit records, log lines, CLI output) takes any str, lone
surrogates included, without failing: data that was once accepted can always be shown again."""

from __future__ import annotations

import io
import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrohsm.api.http import json_response
from ferrohsm.audit.chain import canonical_json
from ferrohsm.cli.main import _tolerant_text_streams
from ferrohsm.cli.output import json_text
from ferrohsm.telemetry.logs import JSONFormatter

# Arbitrary str, with lone surrogates drawn often (st.text() alone never draws one).
ANY_TEXT = st.text(st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)),
                   max_size=20)


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT, ANY_TEXT)
def test_json_response_encodes_any_str_as_utf8_json(name: str, value: str) -> None:
    obj = {name: value, "list": [value]}
    body = json_response(200, obj).body
    # Equal to what the ASCII-escaped encoding means (two adjacent lone surrogates, escaped, read
    # back as the one character the pair names: JSON's rule, not a loss).
    assert json.loads(body.decode("utf-8")) == json.loads(json.dumps(obj))


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT, ANY_TEXT)
def test_audit_canonical_json_and_log_lines_take_any_str(name: str, value: str) -> None:
    obj = {"details": {name: value}}
    assert json.loads(canonical_json(obj)) == json.loads(json.dumps(obj))
    record = logging.LogRecord("ferrohsm.x", logging.INFO, __file__, 1, "%s", (value,), None)
    line = JSONFormatter().format(record)
    assert line.isascii() and json.loads(line)["message"] == json.loads(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_cli_output_writes_any_str(value: str) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8")
    stream.reconfigure(errors="backslashreplace")  # what the CLI does to stdout and stderr
    stream.write(json_text({"description": value}))
    stream.write(f"table cell: {value}\n")
    stream.flush()
    raw.getvalue().decode("utf-8")  # valid UTF-8, whatever the str held


def test_cli_makes_its_text_streams_tolerant() -> None:
    import sys
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8")
    saved = sys.stdout
    sys.stdout = stream
    try:
        _tolerant_text_streams()
        print("\udfff")
        stream.flush()
    finally:
        sys.stdout = saved
    assert raw.getvalue() == b"\\udfff\n"


def test_library_warnings_are_json_lines_too(capsys: pytest.CaptureFixture[str]) -> None:
    """psycopg's and the OpenTelemetry SDK's warnings go through the same JSON handler, not
    Python's last-resort handler (bare text among the JSON lines)."""
    from ferrohsm.telemetry.access import ACCESS
    from ferrohsm.telemetry.logs import setup_logging
    setup_logging("INFO")
    try:
        logging.getLogger("psycopg").warning("error ignored terminating <Pipeline [BAD]>")
        logging.getLogger("opentelemetry.exporter").warning("collector down")
        logging.getLogger("psycopg").info("per call: not shown")
        ACCESS.flush()  # the lines are written by the access log's writer (logs.py)
        lines = capsys.readouterr().err.splitlines()
        assert [json.loads(x)["logger"] for x in lines] == ["psycopg", "opentelemetry.exporter"]
    finally:
        for name in ("ferrohsm", "psycopg", "opentelemetry"):
            logging.getLogger(name).handlers[:] = []
            logging.getLogger(name).propagate = True
