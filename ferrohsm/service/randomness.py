"""Random bytes for callers (the Vault-compatible ``random`` endpoint): authorized and audited
like any other cryptographic operation, from the operating system's CSPRNG."""

from __future__ import annotations

import os

from ..auth.permissions import Action
from ..domain.errors import BadRequest
from ..domain.model import RequestContext
from .guard import Guard

MAX_RANDOM_BYTES = 64 * 1024


def random_bytes(guard: Guard, ctx: RequestContext, count: int) -> bytes:
    """``count`` bytes from ``os.urandom``; the record says how many, never which."""
    def work() -> bytes:
        if not 1 <= count <= MAX_RANDOM_BYTES:
            raise BadRequest(f"bytes must be an integer from 1 to {MAX_RANDOM_BYTES}")
        data = os.urandom(count)
        guard.record(ctx, Action.RANDOM, "success", f"generated {count} random bytes",
                     defer=True)
        return data
    return guard.run(ctx, Action.RANDOM, work)
