"""The pure parts of the CLI's output: --field lookups, --output text, one output format at a
time, and the scrubbing of bearer tokens from debug tracebacks."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from unittest import mock

import pytest

from ferrohsm.cli.main import build_parser, main
from ferrohsm.cli.output import FieldMissing, field_text, key_detail, render
from ferrohsm.cli.scrub import REDACTED, known_tokens, scrub

KEY = {"id": "k1", "name": "payments", "tags": ["pci"], "versions": [{"version": 1,
                                                                        "state": "enabled"}],
       "description": None}


def settings(output: str = "table", field: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(output=output, field=field)


def test_field_reads_members_nested_members_and_each_item_of_a_list() -> None:
    assert field_text(KEY, "name") == "payments"
    assert field_text(KEY, "versions.0.state") == "enabled"
    assert field_text(KEY, "tags") == '["pci"]'
    assert field_text(KEY, "description") == ""  # null: an empty line, as `vault -field`
    page = {"keys": [KEY, {**KEY, "name": "other"}], "total": 2}
    assert field_text(page, "name") == "payments\nother"
    assert field_text(page, "total") == "2"
    with pytest.raises(FieldMissing, match="no such member; it has: description, id, name"):
        field_text(KEY, "nope")
    assert field_text({"keys": []}, "name") == ""  # an empty listing: nothing, not an error


def test_a_description_of_several_lines_cannot_pass_for_other_fields() -> None:
    """An outside tester's description ended in a fake Created line and a fake history table:
    `keys show` printed them as its own. Continuation lines are indented under the value (only
    a label starts a line), and a list's --field stays one line a key."""
    fake = "payments key\nCreated      2026-01-01 00:00:00 UTC by security-team\nVERSION  STATE"
    key = {**KEY, "description": fake, "state": "active", "primary_version": 1,
           "algorithm": "aes-256-gcm", "usage": "encrypt"}
    lines = key_detail(key, colour=False).splitlines()
    described = lines.index(next(ln for ln in lines if ln.startswith("Description")))
    assert lines[described].endswith("payments key")
    indent = len(lines[described]) - len("payments key")
    assert lines[described + 1] == " " * indent + fake.splitlines()[1]
    assert lines[described + 2] == " " * indent + "VERSION  STATE"
    assert [ln for ln in lines if ln.startswith("Created")] == [lines[described + 3]]
    page = {"keys": [key, {**KEY, "description": "one\ttab"}]}
    assert field_text(page, "description").splitlines() == [
        fake.replace("\n", "\\n"), "one\\ttab"]
    assert field_text(key, "description") == fake  # one key's value: raw, as `vault -field`


def test_field_on_a_list_answer_names_its_own_members_and_its_items() -> None:
    page = {"keys": [KEY, {**KEY, "name": None}], "total": 2, "next_page_token": None}
    assert field_text(page, "name") == "payments\n"  # an unnamed key: an empty line
    assert field_text(page, "next_page_token") == ""
    with pytest.raises(FieldMissing) as missing:
        field_text(page, "nope")
    assert str(missing.value) == (
        "--field nope: the answer has no such member; it has: next_page_token, total; and in "
        "each of keys: description, id, name, tags.0, versions.0.state, versions.0.version")


def test_render_picks_field_json_text_or_the_table() -> None:
    assert render(settings(field="id"), KEY, lambda: "table") == "k1"
    assert render(settings("json"), {"b": 1, "a": None}, lambda: "table") == \
        '{\n  "b": 1,\n  "a": null\n}'  # the API's order, not sorted
    assert render(settings("text"), {"a": "x\ty", "b": [1]}, lambda: "t") == "a\tx\\ty\nb.0\t1"
    assert render(settings("text"), {}, lambda: "t", lambda: [["a", "b"], ["c", "d"]]) == \
        "a\tb\nc\td"
    assert render(settings(), KEY, lambda: "table") == "table"


def test_scrub_removes_every_form_of_the_token() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"  # noqa: S105  a made-up JWT
    text = (f"ValueError: Invalid header value (b'Bearer {token}\\n',)\n"
            f"token={token!r} header='Authorization: bearer opaque-secret-value'")
    cleaned = scrub(text, {token})
    assert token not in cleaned and "opaque-secret-value" not in cleaned
    assert cleaned.count(REDACTED) >= 3
    assert scrub("eyJx.eyJy.zzz in a message", ()) == f"{REDACTED} in a message"


def test_known_tokens_come_from_the_environment_flags_and_files(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("file-token-value\n")
    monkeypatch.setenv("FERROHSM_TOKEN", "env-token-value\n")
    monkeypatch.delenv("FERROHSM_TOKEN_FILE", raising=False)
    found = known_tokens(["keys", "list", "--token", "flag-token-value", "--token-file",
                          str(path)])
    assert {"env-token-value", "flag-token-value", "file-token-value"} <= found


@pytest.mark.parametrize(("flags", "said"), [
    (("--json", "--output", "table"), "--json and --output table"),
    (("--output", "table", "--json"), "--output table and --json"),
    (("--output", "text", "--output", "json"), "--output text and --output json"),
])
def test_two_output_formats_are_refused_in_one_line(flags: tuple[str, ...], said: str) -> None:
    code, out, err = run_main("keys", "list", "--server", "https://127.0.0.1:1", *flags)
    assert (code, out) == (2, "")
    assert err == f"ferrohsm: {said} ask for two output formats: give one\n"


def test_the_same_output_format_twice_is_fine() -> None:
    for flags in (["--json", "--output", "json"], ["--json", "--json"],
                  ["--output", "text", "--output", "text"]):
        args = build_parser().parse_args(["keys", "list", *flags])
        assert args.output == ("text" if "text" in flags else "json")


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.multiple(sys, stdout=out, stderr=err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_status_counts_certificate_time_as_a_reader_would() -> None:
    """An expiry a day and two minutes ago is -1 days (floor division said -2); an hour
    before expiry says hours, not "0 days left"; a negative value always means expired."""
    from datetime import UTC, datetime, timedelta

    from ferrohsm.cli import info

    def at(delta: timedelta) -> str:
        return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")

    cases = [(timedelta(days=-1, minutes=-2), -1, "expired 1 day ago"),
             (timedelta(minutes=-5), -1, "expired today"),
             (timedelta(days=-3, hours=-1), -3, "expired 3 days ago"),
             (timedelta(hours=1, minutes=1), 0, "1 hour left"),
             (timedelta(minutes=30), 0, "less than an hour left"),
             (timedelta(days=2, hours=1), 2, "2 days left")]
    for delta, days, text in cases:
        assert info._days_left(at(delta)) == days, delta
        assert info._time_left(at(delta)) == text, delta
    assert info._days_left("not a time") is None
    assert info._sealed_text({"sealed": None}) == "unknown (the server was not reached)"


def test_a_token_refused_for_its_lifetime_is_told_how_to_issue_one_the_server_takes() -> None:
    """`token issue --data-dir` without the server's --config mints the default lifetime; a
    server whose limit is shorter refused it, and the hint sent the user back to the same
    command."""
    from ferrohsm.cli.main import _hint

    hint = _hint("unauthenticated", "whoami", None, "token lifetime must be 1-60 seconds")
    assert "--ttl 60" in hint and "--config" in hint
    assert "token issue" in _hint("unauthenticated", "whoami", None, "token expired")


def test_a_librarys_endless_message_is_cut_in_the_json_log() -> None:
    """psycopg logged one warning 30 KB long (the same sentence hundreds of times)."""
    import json
    import logging

    from ferrohsm.telemetry.logs import LIBRARY_LIMIT, JSONFormatter

    record = logging.LogRecord("psycopg", logging.WARNING, __file__, 1, "x" * 30000, None, None)
    line = json.loads(JSONFormatter().format(record))
    assert len(line["message"]) <= LIBRARY_LIMIT + 2
    ours = logging.LogRecord("ferrohsm.api", logging.WARNING, __file__, 1, "y" * 3000, None, None)
    assert len(json.loads(JSONFormatter().format(ours))["message"]) == 3000


def test_json_output_keeps_text_but_escapes_what_a_terminal_acts_on() -> None:
    """--json prints the API's text as sent (café, ✓), but C1 controls (U+009B starts an escape
    sequence on some terminals), bidi controls and line separators stay escaped."""
    import json

    from ferrohsm.cli.output import json_text
    value = {"b": "caf\u00e9 \u2713", "a": "\u009b31m red \u202e evil \u2028 next \u0085"}
    text = json_text(value)
    assert json.loads(text) == value and list(json.loads(text)) == ["b", "a"]  # API's order
    assert "caf\u00e9 \u2713" in text
    assert not any(c in text for c in "\u009b\u202e\u2028\u0085")
    assert "\\u009b31m" in text and "\\u202e" in text
