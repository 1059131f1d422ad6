"""Helpers the CLI tests share: a unique name, a key made through the CLI, a one-line error."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create(cli: Callable[..., Any], algorithm: str, usage: str, *tags: str) -> str:
    """A key made with ``keys create``; its name."""
    name = unique(algorithm)
    extra = [arg for tag in tags for arg in ("--tag", tag)]
    result = cli("keys", "create", "--algorithm", algorithm, "--usage", usage, "--name", name,
                 *extra, "--json")
    assert result.code == 0, result.err
    return name


def one_line(run: Any) -> str:
    """The one ``ferrohsm: …`` line a refused command prints on stderr."""
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferrohsm: "), run.err
    return str(lines[0])
