"""The deny-list's shared change counter (auth/denylist.py ``ChangeCounter``) on a full
filesystem: its 8 bytes are written when it is opened, never left a hole that a later store
through the mapping would have to allocate (SIGBUS, the process killed: an outside DR drill's
restore onto a full disk died with "Bus error" at its first token revocation). A real tmpfs,
so only where this process may mount one."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

CHILD = """
import sys
from pathlib import Path
from ferrohsm.auth.denylist import ChangeCounter
counter = ChangeCounter.open(Path(sys.argv[1]))
if counter is not None:
    counter.bump()
print("none" if counter is None else counter.value())
"""


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs",
                                            str(mount)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        filler = 0
        while True:  # every block taken
            try:
                (mount / f"fill-{filler}").write_bytes(b"x" * 4096)
            except OSError:
                break
            filler += 1
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_counter_made_on_a_full_filesystem_is_refused_not_a_bus_error(
        full_tmpfs: Path) -> None:
    path = full_tmpfs / f"revoked-{uuid.uuid4().hex}.json.lock"
    ran = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert ran.returncode == 0, (ran.returncode, ran.stderr)  # -7 (SIGBUS) before
    assert ran.stdout.strip() == "none"  # no counter: the list is then checked every request
