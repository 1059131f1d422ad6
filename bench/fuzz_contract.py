"""A longer schemathesis run against a live server, for local use (not part of the suite).

    PYTHONPATH=$PWD python3 bench/fuzz_contract.py [--examples 200] [--seed N] [--role service]

The suite's tests/integration/test_contract_fuzz.py runs the same thing with a small budget;
this one spends more examples per operation (and any seed), prints schemathesis's report for
each role and exits non-zero when any role found something. Reports (JUnit) go to --out.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from contract_fuzz import ROLES, Budget, fuzz_server, run_schemathesis


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="max examples per operation")
    parser.add_argument("--seed", type=int, default=Budget.seed)
    parser.add_argument("--role", choices=ROLES, action="append",
                        help="a role to run (repeatable; default: all four)")
    parser.add_argument("--out", type=Path, default=None, help="where reports go")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="fuzz-contract-"))
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        server = fuzz_server(Path(tmp))
        try:
            for role in args.role or ROLES:
                started = time.monotonic()
                budget = Budget(args.examples, args.seed, max_failures=100, timeout=3600.0)
                result = run_schemathesis(server, role, budget, out / role)
                print(f"== {role}: exit {result.returncode} in "
                      f"{time.monotonic() - started:.1f} s")
                print(result.stdout)
                print(result.stderr, file=sys.stderr)
                if result.returncode != 0:
                    failed.append(role)
        finally:
            server.close()
    print(f"reports in {out}; " + (f"findings for: {', '.join(failed)}" if failed else
                                   "nothing found"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
