"""The HTTP application: route, authenticate, build the request context, call the handler.

Errors become responses in exactly one place (``http.error_response``). Every request leaves one
structured JSON log line with OpenTelemetry semantic-convention names; tokens and bodies never do.

Every refused request leaves exactly one audit record, written by the layer that refused it. The
service's guarded call records the refusals of the operations it runs and raises them as
``Recorded``; this layer records the rest, which never reached the service: failed
authentication (``auth.authenticate``), rate limits (``ratelimit.refused``), and as
``request.refused`` unknown routes and methods, malformed bodies, fields and query strings, and
(through ``refuse``) the requests the server refused while reading them (framing, limits,
timeouts). So whether to record is a question of type, answered the same way everywhere. (The
one exception is deliberate: 429s are sampled, one a second per actor or address, see
``_audit_limited``.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..auth.authn import Authenticator, TokenRejected
from ..auth.permissions import PERMISSIONS, Action, refusal
from ..auth.ratelimit import RateLimiter
from ..domain.errors import (
    AuditUnavailable,
    BadRequest,
    FerroError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    Recorded,
    recorded,
)
from ..domain.ids import is_approval_id
from ..domain.model import Principal, RequestContext
from ..service.guard import key_ref
from ..telemetry import access as access_lines
from ..telemetry import tracing
from ..telemetry.metrics import ServerMetrics
from ..telemetry.semconv import KNOWN_METHODS, ORIGINAL_LIMIT, method_label, method_original
from ..telemetry.tracecontext import Parent, parse_traceparent
from ..telemetry.tracing import (
    CHILDREN,
    ERROR,
    ROUTE,
    SPAN_ID,
    TRACE_ID,
    USER,
    VALUES,
    RequestSpan,
    Tracer,
    running,
)
from .handlers.dashboard import harden
from .http import Request, Response, error_response, is_sane_request_id, json_response
from .router import Router
from .transit import envelope as vault
from .transit import is_vault, is_vault_unrouted, refuse_unsupported_headers

log = logging.getLogger("ferrohsm.api")
AuditHook = Callable[..., None]  # (ctx, action, outcome, message, **details)
UNMATCHED = "unmatched"  # the metrics' route label of a request no route matched
UNAVAILABLE = AuditUnavailable.code  # the error type of an answer its audit flush turned to 503
# Liveness and readiness: never rate limited, or a load balancer or kubelet sharing an address
# with a flood (or behind the same proxy) would take a healthy node out of service.
PROBES = frozenset({"/healthz", "/livez", "/readyz"})
# Answered from memory and the same for everyone, so found they spend nothing: the dashboard's
# page loads nine files, and an office behind one address would see a blank page after a few
# loads (misses still pay, so a scanner's 404s reach 429 as anywhere else).
FREE = PROBES | {"/", "/ui", "/ui/"}


class Application:
    def __init__(self, router: Router, authenticator: Authenticator, metrics: ServerMetrics,
                 audit_refusal: AuditHook, limiter: RateLimiter | None = None,
                 access: access_lines.AccessLog | None = None,
                 tracer: Tracer | None = None) -> None:
        self.access = access if access is not None else access_lines.ACCESS
        self.tracer = tracer  # None: OTLP export is off, and no span object is ever made
        self.server_port: int | None = None  # the listening port, for server.port
        # The service's record of a role refusal (service/guard.py refuse_role: names the key
        # when it exists); None: the refusal hook records it with the key as named.
        self.refuse_role: Callable[[RequestContext, Action, str | None], FerroError] | None = None
        self.router = router
        self.auth = authenticator
        self.metrics = metrics
        self.audit_refusal = audit_refusal
        self.limiter = limiter if limiter is not None else RateLimiter()
        self._limited: dict[object, tuple[float, int]] = {}  # see _audit_limited

    def __call__(self, req: Request) -> Response:
        start = time.perf_counter()
        parent = (parse_traceparent(req.headers.values_of("traceparent"),
                                    req.headers.values_of("tracestate"))
                  if "traceparent" in req.headers else None)
        # None when sampled out too: no children, no attributes, nothing to end, no ids
        span = self._start_span(req, parent) if self.tracer is not None else None
        exported = (span[TRACE_ID], span[SPAN_ID], "01") if span is not None else None
        # The audit record names the trace when there is one (a caller's, or exported spans');
        # the ids of a request nobody traces are made only for its access line (_observe).
        ctx = base_context(req, None, self.limiter.client_ip(
            req.peer_ip, req.headers.get_all("x-forwarded-for")),
            exported[0] if exported else parent.trace_id if parent else None)
        if span is not None and req.tickets is None:
            with running(span):  # on a worker: each durable record becomes an audit.flush child
                resp, ctx, route_name, error_type = self._handle(req, ctx, span)
        else:
            resp, ctx, route_name, error_type = self._handle(req, ctx, span)
        _dress(req, ctx, resp, parent)
        if span is not None:  # tracing.routed, without the call
            span[ROUTE], span[ERROR] = route_name, error_type
            span[USER] = ctx.principal.subject if ctx.principal else None
        if exported is None and parent is not None and self.tracer is not None and parent.flags:
            parent = replace(parent, flags=0)  # our sampler left it out: nothing else to say
        if req.tickets is not None:  # the answer goes out once its records are durable, or
            req.observed = (ctx, route_name, exported or parent, error_type, span)  # a 503
        else:
            self._observe(req, ctx, route_name, resp, time.perf_counter() - start,
                          exported or parent, error_type, span)
        return resp

    def _handle(self, req: Request, ctx: RequestContext, span: RequestSpan | None
                ) -> tuple[Response, RequestContext, str | None, str | None]:
        """Route, authenticate, limit and run: (the response, the context, the route's
        template or None when no route matched, the error type or None)."""
        route_name: str | None = None
        error_type: str | None = None
        params: dict[str, str] = {}
        try:
            try:
                route, params = self._route(req, ctx)
            except FerroError:  # no route, a wrong method, a path parameter that cannot be one
                ctx = self._caller(req, ctx, span)  # a valid token's actor pays, and is named
                self._limit(ctx)  # a scanner's refusals spend its IP's tokens (429 once empty)
                raise
            route_name = route.template
            if route.template.startswith("/v1/"):
                ctx = with_principal(ctx, self._authenticate(req, ctx, span))
            if route.template not in FREE:
                self._admit(req, ctx, route, params)
                result = (route.handler(ctx, req, params) if span is None
                          else _traced(span, route, ctx, req, params))
            else:
                result = self._free(req, ctx, route, params)
            resp = result if isinstance(result, Response) else json_response(*result)
        except FerroError as exc:
            if isinstance(exc, MethodNotAllowed) and exc.route:
                route_name = exc.route  # the path's template: only the method was wrong
            if not isinstance(exc, Recorded):
                self._record_refusal(req, ctx, route_name, exc, params.get("key"))
            error_type = exc.code if exc.status >= 400 else None  # 202: parked, not failed
            resp = _error(req, exc, routed=route_name is not None)
        except Exception:
            log.exception("unhandled error", extra={"request_id": req.request_id})
            failure = FerroError("internal error")
            self._record_refusal(req, ctx, route_name, failure)
            error_type = "internal"
            resp = _error(req, failure)
        return resp, ctx, route_name, error_type

    def turn_ended(self) -> None:
        """The event loop's turn is over: format its access lines here (telemetry/access.py
        ``format_queued``: cheaper than on the writer thread)."""
        self.access.format_queued()

    def finished(self, req: Request, resp: Response, seconds: float) -> None:
        """The server wrote ``resp`` (the final answer, a 503 for an audit record that did not
        become durable included): its access line and metrics, for a request whose records
        settled after the handler returned (they said 200 for such a 503: an outside tester),
        and the end of its spans (api/server.py ``on_request``)."""
        observed, span, tracer = req.observed, req.trace, self.tracer
        if observed is not None:
            req.observed = None
            ctx, route, trace, error_type, _ = observed
            if error_type is None and resp.status >= 500:  # replaced: not durable
                error_type = UNAVAILABLE
                if span is not None:
                    span[ERROR] = UNAVAILABLE
            self._observe(req, ctx, route, resp, seconds, trace, error_type, span)
        if span is not None and tracer is not None:
            tracer.finish(span, resp.status)

    def _start_span(self, req: Request, parent: Parent | None) -> RequestSpan | None:
        """The request's server span, with the HTTP semantic-convention attributes (None:
        sampled out, nothing recorded)."""
        tracer = self.tracer
        assert tracer is not None  # noqa: S101  narrows a type for mypy, not a runtime check
        span = req.trace = tracer.begin(parent, self._span_values, req)
        if span is not None and req.method not in KNOWN_METHODS:
            tracing.set_attribute(span, "http.request.method_original",
                                  method_original(req.method))
        return span

    def _span_values(self, req: Request) -> tuple[Any, ...]:
        """A traced request's values, in tracing.REQUEST order."""
        return (method_label(req.method), req.path[:256], req.peer_ip, req.request_id,
                _agent(req), self.server_port)

    def refuse(self, req: Request, exc: FerroError) -> Response:
        """The answer to a request the server refused while reading it (a framing error, a
        limit, a timeout: ``req`` holds what could be parsed). It never reached a route, so it
        is recorded here, naming the route it was for and the actor a valid token names (who
        pays for it, as for any request of theirs; without one, the source IP pays, and once
        its tokens are gone the answer is the sampled 429 instead). It gets its access line,
        metrics and span like any answered request."""
        start = time.perf_counter()
        parent = (parse_traceparent(req.headers.values_of("traceparent"),
                                    req.headers.values_of("tracestate"))
                  if "traceparent" in req.headers else None)
        span = self._start_span(req, parent) if self.tracer is not None else None
        exported = tracing.span_ids(span) if span is not None else None
        ctx = self._caller(req, base_context(req, None, self.limiter.client_ip(
            req.peer_ip, req.headers.get_all("x-forwarded-for")),
            exported[0] if exported else parent.trace_id if parent else None), span)
        route_name = self._template_of(req)  # the route the request was for, if one takes it
        try:
            self._limit(ctx)
        except RateLimited as limited:
            exc = limited
        else:
            self._record_refusal(req, ctx, route_name, exc)
        resp = _error(req, exc)
        _dress(req, ctx, resp, parent)  # as a routed answer: its ids echoed, no-store
        if span is not None:
            tracing.routed(span, route_name, ctx.principal.subject if ctx.principal else None,
                           exc.code)
        self._observe(req, ctx, route_name, resp, time.perf_counter() - start,
                      exported or parent, exc.code, span)
        return resp

    def _free(self, req: Request, ctx: RequestContext, route: Any,
              params: dict[str, str]) -> Any:
        """Run a route in ``FREE`` (a probe reports the server, not the caller; a dashboard
        file is the same for everyone): only a refusal (a miss, an approval id) pays."""
        try:
            _check_approval_header(req, route)
            return route.handler(ctx, req, params)
        except FerroError:
            self._limit(ctx)
            raise

    def _admit(self, req: Request, ctx: RequestContext, route: Any,
               params: dict[str, str]) -> None:
        """The checks of a routed request before its handler, in this order: the caller's
        rate limit first (each refusal after it is recorded, so it pays), the role, the
        X-Approval-ID header, query parameters on a route that takes none."""
        self._limit(ctx)
        if route.doc is not None and route.doc.action is not None and "id" not in params:
            # (an approval's routes name its key only once it is read: their handlers check)
            self._check_role(ctx, route.doc.action, params)
        _check_approval_header(req, route)
        if req.query:
            _check_no_query(route, req)

    def _check_role(self, ctx: RequestContext, action: str, params: dict[str, str]) -> None:
        """A role that may never perform the route's action hears 403 before its body or
        query is read (a malformed body is no reason to answer it 400), recorded as that
        action, denied, naming the key, as the service would have."""
        principal = ctx.principal
        # an Action is a StrEnum: its value finds it without building one (0.3 µs a request)
        if principal is None or principal.role in PERMISSIONS[action]:  # type: ignore[index]
            return
        if self.refuse_role is not None:
            raise self.refuse_role(ctx, Action(action), params.get("key"))
        reason = refusal(principal, Action(action)) or action  # the one wording of the rule
        details = {"key_ref": key_ref(params["key"])} if "key" in params else {}
        try:
            self.audit_refusal(ctx, action, "denied", reason, **details)
        except FerroError:  # refused anyway; the sink reports its own failure
            log.error("a refused request could not be audited",
                      extra={"request_id": ctx.request_id})
        raise recorded(Forbidden(reason))

    def _template_of(self, req: Request) -> str | None:
        """The template of the route ``req``'s method and path name (None: none does, or
        what was read is no path), for the labels of a request refused while being read."""
        if not req.path.startswith("/"):
            return None
        try:
            return str(self.router.match(req.method, req.path)[0].template)
        except FerroError:
            return None

    def runs_inline(self, req: Request) -> bool:
        """Whether the server may run ``req`` on its event loop (api/server.py): the route says
        so (Route.inline). Refusals by the router are cheap too. The match is kept on ``req``."""
        try:
            req.route = self.router.match(req.method, req.path)
        except FerroError:
            return True
        route = req.route[0]
        return bool(route.inline) and (route.offload is None or not route.offload(req))

    def _route(self, req: Request, ctx: RequestContext) -> tuple[Any, dict[str, str]]:
        if req.route is not None:
            return req.route  # type: ignore[no-any-return]
        return self.router.match(req.method, req.path)

    def _caller(self, req: Request, ctx: RequestContext,
                span: RequestSpan | None = None) -> RequestContext:
        """For a request no route takes: ``ctx`` with the principal its token names when the
        token is valid (that actor's bucket pays for the 404 and the record names them, as for
        any request of theirs), else ``ctx`` as it is (anonymous: the address pays). A bad
        token is not reported here: the answer is the 404 or 405 either way. The check is the
        request's ``authenticate`` child span, as on a routed request."""
        try:
            credentials = _credentials(req)
        except FerroError:
            return ctx
        if not credentials:
            return ctx
        start, error = time.time_ns(), None
        try:
            principal = self.auth.authenticate(credentials,
                                               client_fingerprint=ctx.client_fingerprint)
        except FerroError as exc:
            error = exc.code
            return ctx
        finally:
            if span is not None:
                span[CHILDREN] += ("authenticate", start, time.time_ns(), error, None)
        return with_principal(ctx, principal)

    def _record_refusal(self, req: Request, ctx: RequestContext, route: str | None,
                        exc: FerroError, key: str | None = None) -> None:
        """Record a refusal that never reached the service (unknown routes and methods,
        malformed JSON, unknown fields, bad base64 or query strings, framing), naming the
        key the path names as the service's refusals do."""
        details = {"key_ref": key_ref(key)} if key else {}
        try:
            self.audit_refusal(ctx, "request.refused", exc.outcome,
                               f"{req.method[:ORIGINAL_LIMIT]} {route or 'unmatched'}: "
                               f"{exc.status} {exc.code}: {exc.message}", **details)
        except FerroError:  # the call is refused anyway; the sink reports its own failure
            log.error("a refused request could not be audited",
                      extra={"request_id": req.request_id})

    def _authenticate(self, req: Request, ctx: RequestContext,
                      span: RequestSpan | None = None) -> Principal:
        if span is None:
            return self._authenticate_now(req, ctx)
        start, error = time.time_ns(), None
        try:
            return self._authenticate_now(req, ctx)
        except FerroError as exc:
            error = exc.code
            raise
        finally:
            span[CHILDREN] += ("authenticate", start, time.time_ns(), error, None)

    def _authenticate_now(self, req: Request, ctx: RequestContext) -> Principal:
        """The token from the Authorization header (never from the query string).

        A failure spends a token of the source IP's bucket; once that is empty the answer is
        429 instead of 401 and no audit record is written, so a flood of bogus tokens can
        neither flood the audit log nor lock out valid tokens sent from the same address. The
        server's own failure (its revocation list unreachable: 503) is not the caller's and
        spends nothing: a database outage must not turn valid clients' 503s into 429s.
        """
        try:
            if "access_token" in req.query:
                raise BadRequest("bearer tokens are accepted only in the Authorization header")
            principal = self.auth.authenticate(_credentials(req),
                                               client_fingerprint=ctx.client_fingerprint)
            req.authenticated = True
            return principal
        except FerroError as exc:
            self.metrics.auth_failures.inc(getattr(exc, "reason", exc.code))
            if exc.status < 500:
                self._limit(ctx)
            self.audit_refusal(ctx, "auth.authenticate",  # the server's 503 is no denial
                               "denied" if exc.status < 500 else "error",
                               f"{req.method} {req.path[:200]}: {exc.message}")
            raise recorded(exc) from None

    def _limit(self, ctx: RequestContext) -> None:
        """Spend a token of the actor's bucket, or of the source IP's when there is no actor
        (health, metrics, dashboard, 404s, failed authentication); 429 when it is empty."""
        now, principal = time.monotonic(), ctx.principal
        try:
            if principal is not None:
                self.limiter.take_actor(principal.subject, principal.role.value, now)
            else:
                self.limiter.take_ip(ctx.source_ip or "", now)
        except RateLimited as exc:
            self.metrics.rate_limited.inc("actor" if principal is not None else "ip")
            self._audit_limited(ctx, exc, now)
            raise recorded(exc) from None

    def _audit_limited(self, ctx: RequestContext, exc: RateLimited, now: float) -> None:
        """At most one 429 a second is recorded per actor (a token's subject and role) and per
        anonymous source address, with the number of its 429s left unrecorded since the one
        before (``unrecorded_refusals``): an actor holding one valid token, every 429 recorded,
        grew the log by 1.5 MB a second (an outside tester), so the flood the limit refuses
        would fill the disk, and a full disk fails every request closed. The 429 is raised as
        Recorded either way: recorded here, or counted for the next record."""
        principal = ctx.principal
        who = (principal.subject, principal.role.value) if principal is not None \
            else ctx.source_ip or ""
        last, unrecorded = self._limited.get(who, (-1.0, 0))
        if now - last < 1.0:
            self._limited[who] = (last, unrecorded + 1)
            return
        if len(self._limited) > 10000:
            self._limited.clear()
        self._limited[who] = (now, 0)
        details = {"unrecorded_refusals": unrecorded} if unrecorded else {}
        self.audit_refusal(ctx, "ratelimit.refused", "denied", exc.message, **details)

    def _observe(self, req: Request, ctx: RequestContext, route: str | None, resp: Response,
                 seconds: float, trace: tuple[str, str, str] | Parent | None,
                 error_type: str | None, span: RequestSpan | None) -> None:
        """Metrics, then the access line: ``trace`` holds the exported span's ids, or the
        caller's parent (or None) from which the access log's writer makes this request's."""
        method, label = method_label(req.method), route or UNMATCHED
        self.metrics.requests.inc(label, method, str(resp.status))
        self.metrics.latency.observe(seconds, label, method)
        access, status = self.access, resp.status
        if not access.enabled_for(status):
            return
        principal = ctx.principal
        agent = span[VALUES][4] if span is not None else _agent(req)  # decoded once
        access.record((
            time.time(), status, req.method[:ORIGINAL_LIMIT], route, req.path[:256], seconds,
            ctx.source_ip,
            req.peer_ip, self.server_port, principal.subject if principal else None,
            principal.role.value if principal else None,
            principal.session if principal else None, ctx.client_fingerprint, agent,
            error_type, req.request_id, trace, ctx.correlation_id))


def _agent(req: Request) -> str | None:
    """The User-Agent as sent: header bytes are kept as Latin-1 by the parser, so a UTF-8 agent
    is decoded again here (invalid bytes as U+FFFD)."""
    agent = req.headers.values_of("user-agent")
    if not agent:
        return None
    value = agent[0][:256]
    if value.isascii():
        return value
    return value.encode("latin-1", "replace").decode("utf-8", "replace")


UNCACHED = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})  # /healthz has details for a token


def _dress(req: Request, ctx: RequestContext, resp: Response, parent: Parent | None) -> None:
    """The headers every answer gets, routed or refused while it was read: the caller's
    X-Correlation-ID and traceparent back, the dashboard's hardening or the API's no-store."""
    echo_context_headers(req, ctx, resp, parent)
    if req.path == "/ui" or req.path.startswith("/ui/"):
        harden(resp)  # 429, 405 and 400 are made before the dashboard handler runs
    elif (req.path.startswith("/v1/") or req.path in UNCACHED) and not any(
            n.lower() == "cache-control" for n, _ in resp.headers):
        resp.headers.append(("Cache-Control", "no-store"))


def _traced(span: RequestSpan, route: Any, ctx: RequestContext, req: Request,
            params: dict[str, str]) -> Any:
    """Run the handler inside the key operation's child span (named after the route)."""
    start, error = time.time_ns(), None
    try:
        return route.handler(ctx, req, params)
    except FerroError as exc:
        error = exc.code if exc.status >= 400 else None  # 202 approval_required: parked
        raise
    finally:
        span[CHILDREN] += (f"ferrohsm {route.name or route.template}", start, time.time_ns(),
                          error, None)


def _error(req: Request, exc: FerroError, routed: bool = True) -> Response:
    """The error response: Vault's shape on the Vault surface (api/transit/envelope.py), and
    for a path under /v1/sys/ that no route serves (``routed`` False); the native one
    everywhere else."""
    if is_vault(req.path) or (not routed and isinstance(exc, NotFound)
                                and is_vault_unrouted(req.path)):
        return vault.error(exc)
    return error_response(exc, req.request_id)


def _credentials(req: Request) -> list[str]:
    """The Authorization values to authenticate. On the Vault surface (/v1/transit/, and
    /v1/auth/token/lookup-self) a Vault client sends its token as ``X-Vault-Token``: the same
    FerroHSM bearer token, validated the same way (one header or the other, never both)."""
    if is_vault(req.path):
        refuse_unsupported_headers(req.headers.get)
        vault_tokens = req.headers.get_all("x-vault-token")
        if vault_tokens:
            if len(vault_tokens) > 1 or "authorization" in req.headers:
                raise BadRequest("send the token once: one X-Vault-Token or Authorization")
            if not vault_tokens[0].strip():
                raise TokenRejected("empty X-Vault-Token header", "missing")
            return [f"Bearer {vault_tokens[0]}"]
    return req.headers.get_all("authorization")


def base_context(req: Request, principal: Principal | None,
                 source_ip: str | None = None, trace_id: str | None = None) -> RequestContext:
    """The context before authentication. ``trace_id``: the request's trace (from a valid
    ``traceparent``, or new); without it, the valid ``traceparent``'s, if any."""
    correlation = req.headers.get("x-correlation-id")
    if trace_id is None and "traceparent" in req.headers:
        parent = parse_traceparent(req.headers.values_of("traceparent"))
        trace_id = parent.trace_id if parent is not None else None
    fingerprint = None
    if req.client_cert_der:
        from ..tls.context import cert_fingerprint
        fingerprint = cert_fingerprint(req.client_cert_der)
    return RequestContext(
        principal=principal, request_id=req.request_id,
        correlation_id=_sane(correlation),
        trace_id=trace_id, source_ip=source_ip or req.peer_ip,
        client_fingerprint=fingerprint,
        approval_id=_approval_id(req.headers.get("x-approval-id")), tickets=req.tickets)


def with_principal(ctx: RequestContext, principal: Principal) -> RequestContext:
    """The context once authenticated (built directly: dataclasses.replace is slow per request)."""
    return RequestContext(principal=principal, request_id=ctx.request_id,
                          correlation_id=ctx.correlation_id, trace_id=ctx.trace_id,
                          source_ip=ctx.source_ip, client_fingerprint=ctx.client_fingerprint,
                          approval_id=ctx.approval_id, tickets=ctx.tickets)


def _check_approval_header(req: Request, route: Any) -> None:
    """A malformed X-Approval-ID is refused, never ignored (ignoring it would park a second
    request for approval). The value is not echoed: it is the client's. A well-formed one on
    a public route (documented without a permission action: health, metrics, this document,
    the dashboard's files) is refused too: such a route never reaches the service, whose guard
    refuses the header on every call that can never be approved (service/guard.py
    no_approval_for), so it would be ignored there, where README says it is always checked."""
    values = req.headers.values_of("x-approval-id")
    if not values:
        return
    if len(values) > 1 or not is_approval_id(values[0]):
        raise BadRequest("X-Approval-ID must be one approval id (a lowercase UUID)")
    if route.doc is not None and route.doc.action is None:
        raise BadRequest(f"X-Approval-ID given, but {route.method} {route.template} never "
                         "needs an approval: send it only when repeating the request that was "
                         "parked")


def _check_no_query(route: Any, req: Request) -> None:
    """A native route that documents no query parameter refuses any (docs/api.md): a
    ``verify?key_version=7`` must not be answered for the primary version. Routes that take
    some check theirs in the handler; Vault's routes follow Vault, which ignores them."""
    if route.doc is not None and not route.doc.query and route.template.startswith("/v1/"):
        name = next(iter(req.query))
        raise BadRequest(f"unknown query parameter {name[:40]!a}: this route takes none")


def _approval_id(value: str | None) -> str | None:
    return value if value is not None and is_approval_id(value) else None


def _sane(value: str | None) -> str | None:
    return value if is_sane_request_id(value) else None


def echo_context_headers(req: Request, ctx: RequestContext, resp: Response,
                         parent: Parent | None = None) -> None:
    """X-Correlation-ID back as sent; a valid ``traceparent`` back as sent, its four fields only
    (a later version may carry more after them, which is neither checked nor echoed; an
    invalid one started a new trace and is not echoed)."""
    if ctx.correlation_id:
        resp.headers.append(("X-Correlation-ID", ctx.correlation_id))
    if parent is not None:
        resp.headers.append(("traceparent", (req.headers.get("traceparent") or "")[:55]))


def audit_hook(record: Callable[..., Any]) -> AuditHook:
    """Adapt the service's audit call to the refusals the HTTP layer itself decides (401s). A
    refusal changes nothing, so its record may wait: on the event loop its ticket joins the
    request's (``ctx.tickets``, from ``Request.tickets``) and the server answers once it is
    durable; elsewhere the record is durable before the hook returns."""
    def hook(ctx: RequestContext, action: str, outcome: str, message: str,
             **details: Any) -> None:
        record(ctx, action, outcome, message, defer=True, **details)
    return hook
