"""The API description is a contract tools can trust: schemathesis, reading only
/v1/openapi.json, runs every check it has against a live server, once per role, and finds
nothing (tests/integration/contract_fuzz.py says how; bench/fuzz_contract.py runs it longer).

What "nothing" covers: no 5xx; every status, content type, header and body as the document
says; every request the schema allows is accepted (or refused only with 401/403/404/409) and
every request it forbids is refused; resources a 201 created are found by the operations its
links lead to; 405 with Allow for methods a path lacks; requests without or with a bad token
refused. Coverage, fuzzing and stateful phases, deterministic generation: the same run each time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from contract_fuzz import ROLES, Budget, fuzz_server, run_schemathesis
from live import LiveServer

pytestmark = pytest.mark.slow

# About ten seconds per role on a quiet machine: the whole test stays near a minute.
BUDGET = Budget(max_examples=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = fuzz_server(tmp_path_factory.mktemp("contract"))
    yield srv
    srv.close()


@pytest.mark.parametrize("role", ROLES)
def test_schemathesis_finds_nothing(server: LiveServer, role: str, tmp_path: Path) -> None:
    result = run_schemathesis(server, role, BUDGET, tmp_path)
    # The report names each failure, its check and a curl line that reproduces it.
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
