"""CLI fixes that need no server: a sealed server's unseal progress in `status`, and the files
an interrupted `sign` leaves (none). The rest of the outside tester's report is covered through
the real entry point in tests/integration/test_cli_fixes.py."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from ferrohsm.cli import info
from ferrohsm.cli.settings import Settings
from ferrohsm.client_errors import ApiError


class SealedClient:
    """What `status` asks of a client, answered as a sealed split-knowledge server does: 503
    with the unseal progress in the body."""

    url = "https://127.0.0.1:19999"
    retries = 3

    def __init__(self) -> None:
        self.urls = [self.url]
        self.unreachable: dict[str, str] = {}

    def health(self) -> dict[str, Any]:
        raise ApiError("HTTP 503 without an error body", status=503, body={
            "status": "sealed", "version": "9.9", "sealed": True, "progress": 1,
            "threshold": 2, "shares": 3, "tls": {"not_after": "2030-01-01T00:00:00Z"}})


def run_status(output: str) -> tuple[int, str]:
    settings = Settings(server=SealedClient.url, token=None, ca_cert=None, client_cert=None,
                        client_key=None, timeout=1.0, json=output == "json",
                        correlation_id=None, approval_id=None, output=output)
    out = io.StringIO()
    with mock.patch.object(sys, "stdout", out):
        code = info.status(mock.Mock(), SealedClient(), settings)
    return code, out.getvalue()


def test_status_of_a_sealed_server_shows_unseal_progress() -> None:
    code, text = run_status("table")
    assert code == 1
    assert "Sealed       yes: unseal progress 1/2 shares" in text, text
    code, text = run_status("json")
    doc = json.loads(text)
    assert doc["sealed"] is True
    assert doc["unseal"] == {"progress": 1, "threshold": 2, "shares": 3}


def test_generated_docs_show_optional_positionals_and_plain_characters(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ferrohsm.cli import docgen, manpage
    from ferrohsm.cli.main import build_parser
    root = build_parser()
    table = docgen.block(root)
    assert "`ferrohsm keys import [KEY] --material FILE" in table
    assert "¦" not in table and "[--processes N\\|auto]" in table
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    roff = manpage.page(root)
    assert roff.isascii(), [c for c in roff if not c.isascii()][:5]
    assert roff.startswith('.TH FERROHSM 1 "version ')
    assert "ferrohsm keys import [KEY] \\-\\-material" in roff
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert manpage.page(root).startswith('.TH FERROHSM 1 "2023-11-14" ')


def test_a_token_pasted_with_its_bearer_scheme_is_told_so() -> None:
    from ferrohsm.cli.settings import UsageError, check_token
    with pytest.raises(UsageError) as info:
        check_token("Bearer eyJhbGciOi.x.y", "the token (--token or FERROHSM_TOKEN)")
    assert 'starts with "Bearer ": give the token alone' in str(info.value)
    assert "eyJ" not in str(info.value)
    with pytest.raises(UsageError, match="U\\+0020"):
        check_token("abc def", "the token")
    with pytest.raises(UsageError, match="the byte 0xFF inside"):  # os.environ's escape
        check_token("abc\udcffdef", "the token")


def test_a_token_file_that_is_a_fifo_nobody_writes_to_is_refused_in_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--token-file names a named pipe whose writer never came (or died): the CLI said nothing
    and waited for ever on the open. Now it waits PIPE_WAIT seconds, then says why; a FIFO
    that is written to (``--token-file <(vault read …)``) still gives its token."""
    from ferrohsm import client_errors
    from ferrohsm.cli.settings import UsageError, _token
    fifo = tmp_path / "token.fifo"
    os.mkfifo(fifo, 0o600)
    monkeypatch.setattr(client_errors, "PIPE_WAIT", 0.3)
    started = time.monotonic()
    with pytest.raises(UsageError, match=r"cannot read the token file .*nothing was written"):
        _token([{"token_file": str(fifo)}])
    assert time.monotonic() - started < 5
    token = "eyJhbGciOiJIUzI1NiJ9.e30.c2ln"  # noqa: S105  a token's shape, signed by nobody
    writer = threading.Thread(target=lambda: fifo.write_text(token + "\n"))
    writer.start()
    assert _token([{"token_file": str(fifo)}]) == token
    writer.join(5)


# ---- listings for scripts, approvals by key name, approval messages, empty ids ---------------

KEY_ID = "01890a5d-ac96-774b-bcce-b302099a8057"
UNNAMED_ID = "01890a5d-ac96-774b-bcce-b302099a8058"
HIDDEN_ID = "01890a5d-ac96-774b-bcce-b302099a8059"
KEY = {"id": KEY_ID, "name": "payments", "algorithm": "aes-256-gcm", "usage": "encrypt",
       "state": "active", "primary_version": 2, "versions": [{"version": 1}, {"version": 2}],
       "tags": ["pci", "prod"], "updated_at": "2026-11-28T12:00:03.123456Z"}
UNNAMED = {**KEY, "id": UNNAMED_ID, "name": None, "tags": []}


class ListingClient:
    """GET /v1/keys and /v1/approvals over fixed lists, ``page`` keys a page at most."""

    def __init__(self, keys: list[dict[str, Any]], page: int = 1000,
                 approvals: tuple[dict[str, Any], ...] = ()) -> None:
        self.keys, self.page, self.approvals = keys, page, list(approvals)
        self.key_calls: list[str | None] = []

    def list_keys(self, *, limit: int | None = None, page_token: str | None = None,
                  **filters: Any) -> dict[str, Any]:
        self.key_calls.append(page_token)
        start = int(page_token or 0)
        end = start + min(limit or self.page, self.page)
        return {"keys": self.keys[start:end], "total": len(self.keys),
                "next_page_token": str(end) if end < len(self.keys) else None}

    def list_approvals(self, state: str | None = None, *, limit: int | None = None,
                       page_token: str | None = None) -> dict[str, Any]:
        return {"approvals": self.approvals, "next_page_token": None}


def run_listing(handler: Any, client: Any, output: str = "table", field: str | None = None,
                token: str | None = None, **flags: Any) -> tuple[int, str, str]:
    import argparse
    settings = Settings(server="https://127.0.0.1:19999", token=token, ca_cert=None,
                        client_cert=None, client_key=None, timeout=1.0, json=output == "json",
                        correlation_id=None, approval_id=None, output=output, field=field)
    args = argparse.Namespace(**{"state": None, "algorithm": None, "usage": None, "tag": None,
                                 "name_prefix": None, "limit": None, "page_token": None,
                                 **flags})
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.multiple(sys, stdout=out, stderr=err):
        code = handler(args, client, settings)
    return code, out.getvalue(), err.getvalue()


def test_keys_list_text_prints_raw_values_and_says_on_stderr_that_there_is_more() -> None:
    from ferrohsm.cli import keys
    client = ListingClient([KEY, UNNAMED, {**KEY, "id": HIDDEN_ID}])
    code, out, err = run_listing(keys.list_keys, client, "text", limit=2)
    assert code == 0 and out.splitlines() == [
        f"payments\t{KEY_ID}\taes-256-gcm\tencrypt\tactive\t2\tpci,prod\t"
        "2026-11-28T12:00:03.123456Z",
        f"\t{UNNAMED_ID}\taes-256-gcm\tencrypt\tactive\t2\t\t2026-11-28T12:00:03.123456Z"]
    assert err == "(more keys: --page-token 2)\n"  # stdout holds values only
    code, out, err = run_listing(keys.list_keys, client, field="name", limit=2)
    assert (out, err) == ("payments\n\n", "(more keys: --page-token 2)\n")
    code, out, err = run_listing(keys.list_keys, client, limit=2)
    assert out.endswith("(more keys: --page-token 2)\n") and err == ""  # the table says it
    code, out, err = run_listing(keys.list_keys, client, "json", limit=2)
    assert json.loads(out)["next_page_token"] == "2" and err == ""  # noqa: S105
    code, out, err = run_listing(keys.list_keys, client, "text")
    assert len(out.splitlines()) == 3 and err == ""  # every page followed: nothing more


def _jwt(claims: dict[str, Any]) -> str:
    import base64
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.c2ln"


def test_keys_list_with_no_keys_at_all_says_there_are_none_yet() -> None:
    from ferrohsm.cli import keys
    empty = ListingClient([])
    assert "no keys yet: create one with `ferrohsm keys create" in \
        run_listing(keys.list_keys, empty)[1]
    assert run_listing(keys.list_keys, empty, tag="pci")[1] == "no keys match\n"
    later = run_listing(keys.list_keys, empty, page_token="5")[1]  # noqa: S106
    assert later == "no keys match\n"
    scoped = run_listing(keys.list_keys, empty, token=_jwt({"role": "service",
                                                            "tags": ["pci"]}))[1]
    assert "no keys visible" in scoped and "(pci)" in scoped and "yet" not in scoped
    assert run_listing(keys.list_keys, empty, "text")[1] == ""


def test_approvals_list_names_keys_from_one_listing() -> None:
    from ferrohsm.cli import approvals
    pending = {"action": "key.destroy", "state": "pending", "required": 1, "approvals": [],
               "requested_by": "alice", "expires_at": "2026-11-28T13:00:00Z"}
    items = tuple({**pending, "id": f"a{i}", "key_id": key_id} for i, key_id in
                  enumerate((KEY_ID, KEY_ID, UNNAMED_ID, HIDDEN_ID, "system")))
    client = ListingClient([UNNAMED, KEY], page=1, approvals=items)
    code, out, _ = run_listing(approvals.list_approvals, client)
    rows = {line.split()[0]: line.split()[2] for line in out.splitlines()[1:]}
    assert code == 0 and rows == {"a0": "payments", "a1": "payments", "a2": UNNAMED_ID,
                                  "a3": HIDDEN_ID, "a4": "system"}, out
    assert client.key_calls == [None, "1"]  # one listing, paged until both were found
    out = run_listing(approvals.list_approvals, client, "text")[1]
    assert out.splitlines()[0].split("\t") == ["a0", "key.destroy", "payments", "pending",
                                               "0/1", "alice", "2026-11-28T13:00:00Z"]
    client.key_calls.clear()
    out = run_listing(approvals.list_approvals, client, "json")[1]
    assert json.loads(out)["approvals"][0]["key_id"] == KEY_ID and client.key_calls == []


def test_a_repeat_with_a_pending_approval_id_is_said_to_be_still_pending() -> None:
    from ferrohsm.cli.main import _approval_pending
    approval = {"id": "0190", "state": "pending", "required": 2, "approvals": [{"actor": "b"}],
                "expires_at": "2026-11-28T13:00:00Z"}
    exc = mock.Mock(approval=approval, body={"approval": approval}, code="approval_required",
                    request_id="r1", message="approval 0190 has 1 of 2 approvals")
    err = io.StringIO()
    with mock.patch.object(sys, "stderr", err):
        _approval_pending(exc, False, None, "0190")
    assert err.getvalue().startswith("ferrohsm: approval 0190 is still pending (1 of 2 "
                                     "approvals, expires 2026-11-28 13:00:00 UTC")
    assert "parked" not in err.getvalue()


@pytest.mark.parametrize("argv", [["keys", "show", ""], ["keys", "rotate", " "],
                                  ["approvals", "show", ""], ["token", "revoke", ""],
                                  ["encrypt", ""]])
def test_an_empty_positional_id_is_refused_before_anything_is_sent(
        argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from ferrohsm.cli.main import main
    monkeypatch.setenv("FERROHSM_URL", "https://127.0.0.1:9")
    monkeypatch.setenv("FERROHSM_TOKEN", "not-a-real-token")
    err = io.StringIO()
    with mock.patch.multiple(sys, stdout=io.StringIO(), stderr=err), \
            mock.patch("ferrohsm.cli.settings.make_client",
                       side_effect=AssertionError("sent")) as make_client:
        code = main(argv)
    assert code == 2 and "the value is empty" in err.getvalue() and "nothing was sent" in \
        err.getvalue(), err.getvalue()
    make_client.assert_not_called()


def test_a_token_file_others_may_read_is_warned_about(tmp_path: Any,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Red team: a 0644 token file was read without a word (not refused: CI runners and
    Kubernetes secret volumes hand files out 0644)."""
    from ferrohsm.cli.main import build_parser
    from ferrohsm.cli.settings import resolve
    token = tmp_path / "tok"
    token.write_text("aaa.bbb.ccc\n")
    args = build_parser().parse_args(["whoami", "--server", "https://127.0.0.1:1",
                                      "--token-file", str(token)])
    for mode, warned in ((0o600, None), (0o640, "its group"), (0o644, "other users")):
        token.chmod(mode)
        assert resolve(args, {}).token == "aaa.bbb.ccc"  # noqa: S105  a placeholder
        err = capsys.readouterr().err
        if warned is None:
            assert err == ""
        else:
            assert f"can be read by {warned}" in err and "chmod 600" in err
            assert "aaa.bbb" not in err


def test_a_user_with_no_home_has_no_profile_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A uid with no passwd entry and no HOME (``docker run --user 12345``): every client
    command failed with "unexpected RuntimeError" while looking for the profile file."""
    import pwd

    from ferrohsm.cli.settings import UsageError, load_profile

    def nobody_known(uid: int) -> pwd.struct_passwd:
        raise KeyError(uid)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", nobody_known)
    assert load_profile(None, {}, required=False) == {}
    with pytest.raises(UsageError, match=r"no home directory .* FERROHSM_PROFILE_FILE"):
        load_profile("ci", {}, required=True)
