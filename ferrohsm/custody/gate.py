"""The sealed front of a split-knowledge server: the one application the HTTP server calls.

While SEALED it answers ``GET /healthz`` (503, ``"sealed": true`` and the progress) and
``POST /v1/sys/unseal {"share"}`` (no token, like Vault; rate limited per source address, see
``UNSEAL_PER_MINUTE``); everything else is 503 ``sealed``. Once a share set reconstructs the
master key, ``open_runtime(master)`` builds the full runtime (store checks, reconciliation: app.py)
and every request goes to its application. ``seal()`` (``POST /v1/sys/seal``, Administrators)
lets in-flight requests finish, then drops the runtime and with it the sealer, the record MAC
key and the unsealed-key cache.

Audit: a sealed service has no key store, but its audit log needs only the audit HMAC key, so
``open_sink()`` opens it while sealed (``system.unseal`` per submission: split, share number and
progress, never the share; ``system.unsealed``, ``system.unseal_reset``); the runtime reopens it
(closed first) with every start-up check. The server's audit durability calls go to whichever is
open (``write_queued``/``is_durable``/``wait``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..api.http import Request, Response, error_response, json_response
from ..audit.chain import AuditEvent
from ..domain.addresses import client_key
from ..domain.errors import BadRequest, FerroError, RateLimited
from ..domain.model import RequestContext
from ..domain.strictjson import no_duplicates
from .shares import parse_share
from .unsealer import Sealed, Unsealer, WrongShares

log = logging.getLogger("ferrohsm.custody")

UNSEAL_PATH = "/v1/sys/unseal"
UNSEAL_PER_MINUTE = 20  # submissions per source address and minute (a share is 2^256 to guess)
TRACKED_CLIENTS = 10_000  # the addresses whose tries are counted at once
SEALED_MESSAGE = ("FerroHSM is sealed: submit unseal shares with `ferrohsm unseal` (POST "
                  "/v1/sys/unseal) until the threshold is reached")


class Sink(Protocol):
    def append(self, event: AuditEvent) -> Any: ...
    def write_queued(self) -> None: ...
    def is_durable(self, ticket: Any) -> bool: ...
    def wait(self, ticket: Any) -> None: ...
    def commits_in_write(self) -> bool: ...
    def close(self) -> None: ...


class Opened(Protocol):
    """What the gate needs of a runtime (app.Runtime)."""

    app: Any
    audit: Any


class SealGate:
    def __init__(self, unsealer: Unsealer, *, open_sink: Callable[[], Sink],
                 open_runtime: Callable[[bytes], Opened], close_runtime: Callable[[Any], None],
                 version: str, limiter: Any = None) -> None:
        self._unsealer = unsealer
        self._open_sink = open_sink
        self._open_runtime = open_runtime
        self._close_runtime = close_runtime
        self._version = version
        self.limiter = limiter  # the server's admission asks it which peers are proxies
        self._lock = threading.Condition()
        self._rt: Opened | None = None
        self._sink: Sink | None = open_sink()
        self._in_flight = 0
        self._sealing = False
        self._tries: dict[str, list[float]] = {}
        self._refusals_audited: dict[str, float] = {}

    # ---- the server's application interface ----

    def __call__(self, req: Request) -> Response:
        rt = self._enter()
        if rt is None:
            return self._sealed(req)
        try:
            if req.path == UNSEAL_PATH and req.method == "POST":
                return json_response(200, self.status())
            return rt.app(req)  # type: ignore[no-any-return]
        finally:
            self._leave()

    def runs_inline(self, req: Request) -> bool:
        rt = self._rt
        return rt is not None and not self._sealing and bool(rt.app.runs_inline(req))

    def finished(self, req: Request, resp: Response, seconds: float) -> None:
        """The answer was written: the runtime's application logs and counts a request answered
        by the event loop only now, and ends its spans (api/application.py ``finished``)."""
        rt = self._rt
        if rt is not None:
            rt.app.finished(req, resp, seconds)

    def refuse(self, req: Request, exc: FerroError) -> Response:
        rt = self._rt
        if rt is not None:
            return rt.app.refuse(req, exc)  # type: ignore[no-any-return]
        return error_response(exc, req.request_id)

    def write_queued(self) -> None:
        self._current_sink().write_queued()

    def commits_in_write(self) -> bool:
        return self._current_sink().commits_in_write()

    def is_durable(self, ticket: Any) -> bool:
        return self._current_sink().is_durable(ticket)

    def wait(self, ticket: Any) -> None:
        self._current_sink().wait(ticket)

    def append(self, event: AuditEvent) -> Any:
        """Into whichever audit log is open (TLS events, start-up and shutdown records)."""
        return self._current_sink().append(event)

    def _current_sink(self) -> Sink:
        rt = self._rt
        if rt is not None:
            return rt.audit  # type: ignore[no-any-return]
        sink = self._sink
        if sink is None:  # between the two (a seal or unseal in progress): nothing is durable
            raise Sealed("the audit log is not open: sealing or unsealing is in progress")
        return sink

    # ---- state ----

    @property
    def sealed(self) -> bool:
        return self._rt is None or self._sealing

    @property
    def runtime(self) -> Opened | None:
        return self._rt

    def status(self) -> dict[str, Any]:
        progress = self._unsealer.progress()
        return {"sealed": self.sealed, **progress.as_json()}

    def _enter(self) -> Opened | None:
        with self._lock:
            if self._rt is None or self._sealing:
                return None
            self._in_flight += 1
            return self._rt

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._lock.notify_all()

    def seal(self, ctx: RequestContext) -> None:
        """Seal once the requests in flight (the caller's own included) have answered."""
        with self._lock:
            if self._rt is None or self._sealing:
                return
            self._sealing = True
        threading.Thread(target=self._finish_seal, args=(ctx,), name="ferrohsm-seal",
                         daemon=True).start()

    def _finish_seal(self, ctx: RequestContext) -> None:
        with self._lock:
            self._lock.wait_for(lambda: self._in_flight == 0)
            rt, self._rt = self._rt, None
        try:
            if rt is not None:
                self._close_runtime(rt)
            self._sink = self._open_sink()
            self._sink.append(AuditEvent.from_context(ctx, "system.sealed", "success",
                                                      "sealed: master key and derived keys "
                                                      "dropped from memory"))
        finally:
            self._unsealer.reset()
            with self._lock:
                self._sealing = False

    def close(self) -> None:
        """At shutdown: the runtime (if open) or the sealed-phase audit log."""
        with self._lock:
            rt, self._rt = self._rt, None
            sink, self._sink = self._sink, None
        if rt is not None:
            self._close_runtime(rt)
        if sink is not None:
            sink.close()

    # ---- sealed answers ----

    def _sealed(self, req: Request) -> Response:
        if req.path == "/healthz" and req.method in ("GET", "HEAD"):
            return json_response(503, {"status": "sealed", "version": self._version,
                                       **self.status()})
        if req.path == "/livez" and req.method in ("GET", "HEAD"):  # alive, if sealed
            return json_response(200, {"status": "alive"})
        if req.path == UNSEAL_PATH and req.method == "POST":
            try:
                return self._unseal(req)
            except FerroError as exc:
                return error_response(exc, req.request_id)
        self._audit_refusal(req)
        return error_response(Sealed(SEALED_MESSAGE), req.request_id)

    def _audit_refusal(self, req: Request, action: str = "request.refused",
                       message: str = "503 sealed") -> None:
        """A request refused because the service is sealed (or an unseal over its address's
        limit) is audited like an anonymous address's 429s (api/application.py): at most one
        record a second per source address, so a flood cannot turn the audit log into its
        amplifier."""
        now = time.monotonic()
        with self._lock:
            if now - self._refusals_audited.get(req.peer_ip, -1.0) < 1.0:
                return
            if len(self._refusals_audited) > 10000:
                self._refusals_audited.clear()
            self._refusals_audited[req.peer_ip] = now
        try:
            self._audit(RequestContext(None, req.request_id, source_ip=req.peer_ip),
                        action, "denied", f"{req.method} {req.path[:200]}: {message}")
        except FerroError:
            log.error("a request refused while sealed could not be audited")

    def _unseal(self, req: Request) -> Response:
        """Every submission is audited (never the share): every refused one as denied, one over
        the address's limit as the sealed refusals are (at most one record a second)."""
        ctx = RequestContext(None, req.request_id, source_ip=req.peer_ip)
        try:
            self._limit(req.peer_ip)
        except RateLimited as exc:
            self._audit_refusal(req, "system.unseal", f"429 {exc.message}")
            raise
        try:
            share = parse_share(_share_field(req.body))
        except FerroError as exc:
            self._audit(ctx, "system.unseal", "denied", f"submission refused: {exc.message}")
            raise
        try:
            progress, master = self._unsealer.submit(share)
        except FerroError as exc:
            # a refused share (another split's, out of range, a repeat, a wrong set) is a
            # refusal of the caller's input, as a malformed one is: denied; error is left to
            # the server's own failures (a 5xx)
            outcome = "denied" if exc.status < 500 else exc.outcome
            self._audit(ctx, "system.unseal_reset" if isinstance(exc, WrongShares)
                        else "system.unseal", outcome, exc.message,
                        split=share.split_id, share=share.x)
            raise
        self._audit(ctx, "system.unseal", "success",
                    f"share {share.x} of split {share.split_id} accepted "
                    f"({progress.submitted} of {progress.threshold})",
                    split=share.split_id, share=share.x, progress=progress.submitted)
        if master is not None:
            self._open(ctx, master)
        return json_response(200, {"sealed": self.sealed, **progress.as_json()})

    def _open(self, ctx: RequestContext, master: bytes) -> None:
        """Close the sealed-phase log, build the runtime (which reopens it with every check)."""
        with self._lock:
            sink, self._sink = self._sink, None
        if sink is not None:
            sink.close()
        try:
            rt = self._open_runtime(master)
        except Exception as exc:
            self._unsealer.reset()  # the shares may be submitted again
            self._sink = self._open_sink()
            message = exc.message if isinstance(exc, FerroError) else type(exc).__name__
            self._audit(ctx, "system.unsealed", "error", f"unsealing failed: {message}")
            log.error("unsealing failed: %s", message)
            raise Sealed(f"the shares are right but the service could not open: {message}; "
                         "it stays sealed") from None
        with self._lock:
            self._rt = rt
        rt.audit.append(AuditEvent.from_context(ctx, "system.unsealed", "success",
                                                "unsealed: threshold reached, check value "
                                                "verified, service open"))

    def _audit(self, ctx: RequestContext, action: str, outcome: str, message: str,
               **details: Any) -> None:
        sink = self._sink
        if sink is None:
            raise Sealed("the audit log is not open")
        sink.append(AuditEvent.from_context(ctx, action, outcome, message, details=details))

    def _limit(self, ip: str) -> None:
        """UNSEAL_PER_MINUTE tries per client (an IPv4 address, an IPv6 /64), counted for at most
        TRACKED_CLIENTS clients (_forget_quiet): a flood from many addresses never wipes every
        client's count at once (it did: one clear of the table)."""
        now, key = time.monotonic(), client_key(ip)
        with self._lock:
            # out of the table while it is pruned: the client asking now is never forgotten
            recent = [t for t in self._tries.pop(key, []) if now - t < 60.0]
            if len(self._tries) >= TRACKED_CLIENTS:
                self._forget_quiet(now)
            self._tries[key] = recent
            if len(recent) >= UNSEAL_PER_MINUTE:
                raise RateLimited("too many unseal attempts from this address (or its IPv6 /64); "
                                  "wait a minute",
                                  retry_after=60.0 - (now - recent[0]))
            recent.append(now)

    def _forget_quiet(self, now: float) -> None:
        """Down to nine tenths of the table (a flood pays this walk once per thousand new
        addresses, not once per request): first the clients quiet for a minute, then those
        with the fewest tries, for a forgotten client's tries count again: a flood of fresh
        addresses then frees its own, never a client that used its budget."""
        tries = self._tries
        for key in [k for k, times in tries.items() if not times or now - times[-1] >= 60.0]:
            del tries[key]
        excess = len(tries) - TRACKED_CLIENTS * 9 // 10
        for key in sorted(tries, key=lambda k: len(tries[k]))[:max(0, excess)]:
            del tries[key]


def _share_field(body: bytes) -> object:
    try:  # strict, as every other body: a repeated member is refused, never last-wins
        doc = json.loads(body or b"null", object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError):
        raise BadRequest("the body must be JSON: {\"share\": \"fhsm1-...\"}, each member "
                         "once") from None
    if not isinstance(doc, dict) or set(doc) != {"share"}:
        raise BadRequest("the body must be {\"share\": \"fhsm1-...\"} and nothing else")
    return doc["share"]
