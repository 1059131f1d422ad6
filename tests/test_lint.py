"""Guardrails: ruff (rules in pyproject [tool.ruff]) and mypy, strict, on the package and the tests
(settings in pyproject [tool.mypy])."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' brings it)")
    result = subprocess.run([ruff, "check", "--output-format", "concise", "."], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("targets", [
    [],  # what pyproject's [tool.mypy] `files` lists: the package, tests, benches, examples
    ["tests/conformance/conftest.py"],  # the second `conftest` module (see `exclude` there)
], ids=["files", "conformance-conftest"])
def test_package_and_tests_type_check_strictly(targets: list[str]) -> None:
    mypy = shutil.which("mypy")
    if mypy is None:
        pytest.skip("mypy is not installed (pip install -e '.[test]' brings it)")
    result = subprocess.run([mypy, "--no-incremental", *targets], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
