"""The CLI's client: the SDK's ``Client``, telling streams.py when the server has answered.

An output that fails to be written after an answer is a different failure from one found
before the request (exit 5, not 3): the server already acted (an approval spent, a key made, a
success audited) and the answer is lost, so the message must not say that nothing was sent.
Imported only when a client command runs (it imports the HTTP client).
"""

from __future__ import annotations

from typing import Any

from ..client import Client
from .errors import CANNOT_WRITE, CliExit
from .streams import server_acted, server_answered, stdout_reader_gone


class NotingClient(Client):
    """``Client`` whose every successful answer is noted before the command writes it, and
    which sends no first request that acts while standard output's reader is gone."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        method = args[0] if args else kwargs.get("method", "GET")
        acts = str(method).upper() not in ("GET", "HEAD")
        if acts and not server_acted() and (gone := stdout_reader_gone()):
            raise CliExit(f"{gone}: nothing was sent to the server; redirect it (>/dev/null) "
                          "to discard the output", CANNOT_WRITE)
        answer = super().request(*args, **kwargs)
        server_answered(acted=acts)
        return answer
