"""The API application with the online rekey's pause in front of it (custody/online.py).

Every ``/v1/`` request holds the pause while it runs; health, metrics and the dashboard's static
files do not touch key material and never wait. While a rekey holds the pause, no request runs
inline on the event loop (``runs_inline`` says no), so the ones that wait, wait on a worker; an
inline request that was dispatched just before the pause began is answered 503 at once rather
than stalling the event loop.
"""

from __future__ import annotations

from typing import Any

from ..api.application import Application
from ..api.http import Request, Response
from .online import Pause, RekeyInProgress


class PausingApplication(Application):
    def __init__(self, *args: Any, pause: Pause, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pause = pause

    def __call__(self, req: Request) -> Response:
        if not req.path.startswith("/v1/"):
            return super().__call__(req)
        try:  # an inline request (on the event loop: api/dispatch.py gives it a ticket list)
            self.pause.enter(wait=req.tickets is None)  # never waits; the others on a worker
        except RekeyInProgress as exc:
            return self.refuse(req, exc)
        try:
            return super().__call__(req)
        finally:
            self.pause.leave()

    def runs_inline(self, req: Request) -> bool:
        return not self.pause.paused and super().runs_inline(req)
