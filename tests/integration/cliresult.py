"""What one ``ferrohsm`` command gave back (exit code, stdout bytes, stderr text): shared by the
CLI tests that run it in-process and those that run it as a new process."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Result:
    code: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode()

    def json(self) -> Any:
        return json.loads(self.out)
