"""A key store failure's message names the database's address and what it said: the operator's,
in the server log and the refusal's audit record, never every caller's (a 503 body, a batch
item's error, Vault's error list)."""

from __future__ import annotations

import json
import logging

import pytest

from ferrohsm.api.http import STORE_UNAVAILABLE, error_object, error_response
from ferrohsm.api.transit import envelope
from ferrohsm.domain.errors import AuditUnavailable, StoreError

DETAIL = ("cannot connect to PostgreSQL at ferrohsm@10.0.0.5:5432/hsm: connection failed: "
          "server closed the connection unexpectedly")


def test_a_store_error_tells_the_caller_nothing_of_the_database(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ferrohsm.api"):
        response = error_response(StoreError(DETAIL), "req-1")
    body = json.loads(response.body)
    assert response.status == 503
    assert body["error"]["message"] == STORE_UNAVAILABLE
    assert body["error"]["code"] == StoreError(DETAIL).code and body["error"]["request_id"]
    assert DETAIL in caplog.text  # the operator still learns what happened
    assert "10.0.0.5" not in json.dumps(error_object(StoreError(DETAIL)))
    vault = json.loads(envelope.error(StoreError(DETAIL)).body)
    assert vault["errors"] == [STORE_UNAVAILABLE]


def test_other_errors_keep_their_message() -> None:
    body = json.loads(error_response(AuditUnavailable("No space left on device"), "r").body)
    assert body["error"]["message"] == "No space left on device"
