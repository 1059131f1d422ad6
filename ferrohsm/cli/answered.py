"""The CLI's client: the SDK's ``Client``, telling streams.py when the server has answered.

An output that fails to be written after an answer is a different failure from one found
before the request (exit 5, not 3): the server already acted (an approval spent, a key made, a
success audited) and the answer is lost, so the message must not say that nothing was sent.
Imported only when a client command runs (it imports the HTTP client).
"""

from __future__ import annotations

from typing import Any

from ..client import Client
from .streams import server_answered


class NotingClient(Client):
    """``Client`` whose every successful answer is noted before the command writes it."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        answer = super().request(*args, **kwargs)
        method = args[0] if args else kwargs.get("method", "GET")
        server_answered(acted=str(method).upper() not in ("GET", "HEAD"))
        return answer
