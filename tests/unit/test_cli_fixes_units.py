"""CLI fixes that need no server: a sealed server's unseal progress in `status`, and the files
an interrupted `sign` leaves (none). The rest of the outside tester's report is covered through
the real entry point in tests/integration/test_cli_fixes.py."""

from __future__ import annotations

import io
import json
import sys
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
