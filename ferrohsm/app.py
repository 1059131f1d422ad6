"""Composition root: the ONLY module that names concrete classes and wires them together."""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .api import application
from .api import router as routing
from .api.admission import Admission
from .api.handlers import approvals as approval_routes
from .api.handlers import audit as audit_routes
from .api.handlers import crypto as crypto_routes
from .api.handlers import dashboard as dashboard_routes
from .api.handlers import keys as key_routes
from .api.handlers import system as system_routes
from .api.handlers import tokens as token_routes
from .api.handlers import transit as transit_routes
from .api.http import Request
from .api.server import HardenedHTTPServer
from .audit.chain import AuditEvent
from .audit.sinks import AuditSink, ChainedSink, FileSink, SQLiteSink
from .audit.witness import FileWitness, Witness, make_witness
from .auth.authn import Authenticator, build_authenticator
from .auth.ratelimit import RateLimiter, policy_from_settings
from .config import Config, Secrets, parse_listen
from .control.policy import Policy
from .control.scheduler import RetentionScheduler
from .crypto.algorithms import ALGORITHMS
from .crypto.recordmac import RecordMac
from .crypto.seal import Sealer
from .domain.approval import ApprovalState
from .domain.errors import ConfigError, FerroError
from .domain.model import SYSTEM_CONTEXT, KeyFilter, KeyState, RequestContext, Role
from .engine.keycache import MaterialCache
from .engine.keyengine import KeyEngine
from .integrity.logcheck import StartupChecks, StartupRefused
from .integrity.logscan import AuditLocation
from .integrity.reconcile import reconcile
from .integrity.records import RecordReport, check_key_records
from .service import AuditLogService, KeyService, TokenService
from .store.approvalstore import ApprovalStore
from .store.filesystem import FilesystemStore
from .store.keystore import KeyStore
from .store.memory import MemoryStore
from .store.memory_approvals import MemoryApprovalStore
from .store.sqlite import SQLiteStore
from .store.sqlite_approvals import SQLiteApprovalStore
from .telemetry import tracing
from .telemetry.metrics import ServerMetrics
from .tls.context import ReloadingContext

log = logging.getLogger("ferrohsm")
CHECK_VALUE = "master_key_check"


def ensure_private_dir(path: str | Path) -> Path:
    """Create ``path`` 0700 (and tighten it if it exists): data directories hold sealed secrets.
    A directory that cannot be made, tightened or written is a ConfigError naming it."""
    p = Path(path)
    try:
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create data directory {p.absolute()}: {why(exc)}") from None
    if p.is_symlink():
        raise ConfigError(f"data directory {p} must not be a symlink")
    try:
        os.chmod(p, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot make data directory {p.absolute()} private (chmod 0700): "
                          f"{why(exc)}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"data directory {p.absolute()} is not writable")
    return p


def why(exc: OSError) -> str:
    """``Read-only file system (EROFS)``: the reason of an OS error, in one short phrase."""
    code = errno.errorcode.get(exc.errno or 0)
    reason = exc.strerror or type(exc).__name__
    return f"{reason} ({code})" if code else reason


_CALL_RE = re.compile(r"([A-Za-z_][\w.]*)\(")


def startup_failure(exc: OSError) -> ConfigError:
    """An OS error while starting (a read-only or full data directory, a missing file), as the
    one-line configuration error ``cannot <operation> <path>: <reason>``."""
    frames = traceback.extract_tb(exc.__traceback__)
    inner = frames[-1] if frames else None
    call = _CALL_RE.search(inner.line or "") if inner else None
    operation = call.group(1) if call else "access"
    where = f" (in {inner.name})" if inner else ""
    path = exc.filename if exc.filename is not None else "a file of the data directory"
    return ConfigError(f"cannot {operation} {path}{where}: {why(exc)}")


def open_store(config: Config, record_mac: RecordMac) -> KeyStore:
    """The configured key store; its records are authenticated under ``record_mac``."""
    kind = config.storage.key_store
    if kind == "memory":
        return MemoryStore(record_mac)
    data = ensure_private_dir(config.storage.data_dir)
    if kind == "sqlite":
        return SQLiteStore(data / "keys.sqlite3", record_mac)
    return FilesystemStore(data, record_mac)


def open_approvals(config: Config) -> ApprovalStore:
    """Approvals survive restarts beside the keys; with the memory key store nothing does."""
    if config.storage.key_store == "memory":
        return MemoryApprovalStore()
    return SQLiteApprovalStore(ensure_private_dir(config.storage.data_dir) / "approvals.sqlite3")


def audit_location(config: Config) -> AuditLocation:
    return AuditLocation(str(Path(config.storage.data_dir) / "audit"), config.audit.sink)


def open_audit(config: Config, secrets: Secrets) -> ChainedSink:
    directory = ensure_private_dir(audit_location(config).directory)
    interval = config.audit.checkpoint_interval_seconds
    if config.audit.sink == "sqlite":
        return SQLiteSink(directory / "audit.sqlite3", secrets.audit_hmac_key,
                          retention_days=config.audit.retention_days or None,
                          durable=config.audit.durable, checkpoint_interval=interval)
    return FileSink(directory, secrets.audit_hmac_key,
                    segment_max_bytes=config.audit.segment_max_bytes,
                    durable=config.audit.durable, checkpoint_interval=interval)


def open_witness(config: Config) -> Witness | None:
    """``[audit].witness``: where checkpoints are copied, outside the data directory."""
    a = config.audit
    return make_witness(a.witness, data_dir=config.storage.data_dir, ca_file=a.witness_ca_file,
                        timeout=a.witness_timeout_seconds)


def check_master_key(store: KeyStore, sealer: Sealer) -> bool:
    """A wrong master key must stop start-up, not surface later as corrupted keys.

    True when the check value is still to be written: only for a new, EMPTY store, and only once
    every other start-up check has passed. A store that holds keys but no check value lost it
    (or had it deleted): writing one now would let whatever master key was given claim the store
    and lock the right one out, so refuse.
    """
    stored = store.get_meta(CHECK_VALUE)
    if stored is not None:
        sealer.verify_check_value(stored)
        return False
    keys = store.count()
    if keys:
        raise StartupRefused(f"the key store holds {keys} key(s) but no master-key check value "
                             f"(meta {CHECK_VALUE!r}): it was deleted or the store was tampered "
                             "with. Restore it from a backup of the store; it is only ever "
                             "written for a new, empty store")
    return True


@dataclass(frozen=True)
class StartupOptions:
    """One-off acceptances of a degraded state (``serve --accept-...``); each is audited."""

    accept_store_loss: bool = False
    accept_audit_loss: bool = False
    accept_unrecorded: bool = False


def open_checked(config: Config, secrets: Secrets, store: KeyStore, sealer: Sealer,
                 options: StartupOptions) -> tuple[ChainedSink, bool]:
    """Check the master key, the audit log against the store and the witness, then open the
    audit log; the check value of a new store is written only when all of that passed. Also
    whether a lost or cut audit log was accepted (the key records are then bound anew)."""
    new_store = check_master_key(store, sealer)
    witness = open_witness(config)
    checks = StartupChecks(store, audit_location(config),
                           witness_file=witness.path if isinstance(witness, FileWitness) else "",
                           store_is_persistent=config.storage.key_store != "memory",
                           accept_store_loss=options.accept_store_loss,
                           accept_audit_loss=options.accept_audit_loss)
    checks.before_audit()
    audit = open_audit(config, secrets)
    try:
        checks.after_audit(audit)
        if new_store:
            store.put_meta(CHECK_VALUE, sealer.make_check_value())
    except BaseException:
        audit.close()
        raise
    if witness is not None:
        audit.attach_witness(witness)
    return audit, checks.audit_loss_accepted


@dataclass
class Runtime:
    """Everything a running FerroHSM holds, so shutdown can release it in order."""

    config: Config
    store: KeyStore
    audit: AuditSink
    service: KeyService
    authenticator: Authenticator
    metrics: ServerMetrics
    router: routing.Router
    app: application.Application
    started: float = field(default_factory=time.monotonic)
    stop: threading.Event = field(default_factory=threading.Event)
    approvals: ApprovalStore | None = None
    key_records: RecordReport | None = None  # the start-up check of the key records

    def _key_records(self) -> dict[str, Any]:
        """Counts only: the ids of failed keys are in the audit log (and a filesystem store's
        own ``unreadable_keys``), and health is served to anyone."""
        report = self.key_records
        if report is None:
            return {}
        return {"checked_at_start": report.checked, "failed_at_start": len(report.failed),
                "migrated_at_start": report.migrated}

    def health(self) -> dict[str, Any]:
        problem = self.audit.degraded()
        return {
            "status": "ok" if problem is None else "degraded",
            **({} if problem is None else {"reason": problem}),
            "version": __import__("ferrohsm").__version__,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "store": self.store.describe(),
            "key_records": self._key_records(),
            "audit": self.audit.describe(),
            "auth": self.authenticator.stats(),
            "rate_limit": self.app.limiter.stats(),
            "cache": self.service.engine.cache.stats(),
        }


def build_runtime(config: Config, secrets: Secrets,
                  options: StartupOptions | None = None) -> Runtime:
    store = open_store(config, RecordMac.derive(secrets.master_key))
    approvals: ApprovalStore | None = None
    audit: AuditSink | None = None
    try:
        sealer = Sealer(secrets.master_key)
        policy = Policy.from_config(config.policy_tags, config.crypto.destroy_grace_hours)
        approvals = open_approvals(config)
        opts = options or StartupOptions()
        audit, audit_loss = open_checked(config, secrets, store, sealer, opts)
        key_records = check_key_records(store, audit)  # before anything is served
        if config.storage.key_store != "memory":  # the memory store forgets by design
            # settle what a crash left unsettled, refuse what the log does not explain
            # (integrity/reconcile.py); after an accepted audit loss, bind every key anew
            reconcile(store, audit, secrets.audit_hmac_key, approvals=approvals,
                      accept_unrecorded=opts.accept_unrecorded or audit_loss)
    except Exception:
        for opened in (audit, approvals, store):
            if opened is not None:
                opened.close()
        raise
    cache: MaterialCache[Any] = MaterialCache(config.crypto.cache_max_entries,
                                              config.crypto.cache_ttl_seconds)
    engine = KeyEngine(sealer, cache, config.crypto.max_input_bytes)
    metrics = ServerMetrics()
    service = KeyService(store, engine, audit,
                         destroy_grace=lambda key: policy.rules_for(key).destroy_grace,
                         on_crypto=lambda alg, op, outcome: metrics.crypto_ops.inc(alg, op, outcome),
                         policy=policy, approvals=approvals)
    auth = build_authenticator(config.auth, secrets.jwt_hs256_secret, config.storage.data_dir,
                               on_event=config_audit(audit, "auth.keyset_reload"))
    limiter = RateLimiter(policy_from_settings(config.rate_limit))
    router = routing.Router()
    key_routes.register(router, service)
    crypto_routes.register(router, service)
    audit_routes.register(router, AuditLogService(service.guard, audit))
    approval_routes.register(router, service.approvals)
    dashboard_routes.register(router)
    token_routes.register(router, TokenService(service.guard, auth))
    transit_routes.register(router, service, limiter)
    app = application.Application(router, auth, metrics, application.audit_hook(service.record),
                                  limiter, tracer=tracing.from_environment())
    runtime = Runtime(config, store, audit, service, auth, metrics, router, app,
                      approvals=approvals, key_records=key_records)
    system_routes.register(router, runtime.health, metrics, health_viewer(auth))
    _gauges(runtime)
    _observability(runtime, audit)
    return runtime


HEALTH_DETAIL_ROLES = frozenset({Role.AUDITOR, Role.ADMINISTRATOR})


def health_viewer(auth: Authenticator) -> Callable[[RequestContext, Request], bool]:
    """Whether a /healthz caller may see the details (paths, counts, key ids, the audit head):
    a valid Auditor or Administrator token. No token or any other (an invalid one included)
    gets the status only and no 401, so load balancers keep working whatever they send."""
    def may_see(ctx: RequestContext, req: Request) -> bool:
        values = req.headers.get_all("authorization")
        if not values:
            return False
        try:
            principal = auth.authenticate(values, client_fingerprint=ctx.client_fingerprint)
        except FerroError:
            return False
        return principal.role in HEALTH_DETAIL_ROLES
    return may_see


def config_audit(audit: AuditSink, action: str) -> Callable[[str, str], None]:
    """Every configuration reload (keysets, TLS files), accepted or refused, is audited."""
    def record(outcome: str, message: str) -> None:
        audit.append(AuditEvent.from_context(SYSTEM_CONTEXT, action, outcome, message))
    return record


def _gauges(rt: Runtime) -> None:
    cache = rt.service.engine.cache
    rt.metrics.add_gauge("ferrohsm_key_cache", "Unsealed-key cache size and bound",
                         lambda: _levels(cache.stats()), ("stat",))
    rt.metrics.add_counter("ferrohsm_key_cache_events", "Unsealed-key cache hits, misses, "
                           "evictions", lambda: _events(cache.stats()), ("event",))
    rt.metrics.add_gauge("ferrohsm_token_cache", "Verified-token cache and keyset state",
                         lambda: _levels(rt.authenticator.stats()), ("stat",))
    rt.metrics.add_counter("ferrohsm_token_cache_events", "Token verification cache hits and "
                           "misses, failures, keyset reloads",
                           lambda: _events(rt.authenticator.stats()), ("event",))
    rt.metrics.add_gauge("ferrohsm_audit_healthy", "1 when the audit log accepts records (0 "
                         "from a failed write or flush until the next good one)",
                         lambda: {(): 1.0 if rt.audit.degraded() is None else 0.0})


# The cache statistics that only grow: exported as counters (``_total``), the rest as gauges.
MONOTONIC_STATS = frozenset({"hits", "misses", "evictions", "failures", "cache_hits",
                             "cache_misses", "keyset_reloads", "keyset_reload_failures"})


def _levels(stats: dict[str, int]) -> dict[tuple[str, ...], float]:
    return {(k,): float(v) for k, v in stats.items() if k not in MONOTONIC_STATS}


def _events(stats: dict[str, int]) -> dict[tuple[str, ...], float]:
    return {(k,): float(v) for k, v in stats.items() if k in MONOTONIC_STATS}


def _observability(rt: Runtime, audit: ChainedSink) -> None:
    """Issue 18's metrics: audit flush histograms, keys by state, pending approvals, and every
    series that can be known at start created at zero."""
    audit.on_sync = rt.metrics.observe_audit_sync
    store, approvals = rt.store, rt.approvals
    rt.metrics.add_gauge("ferrohsm_keys", "Keys by lifecycle state",
                         lambda: {(s.value,): float(store.count(KeyFilter(state=s)))
                                  for s in KeyState}, ("state",))
    if approvals is not None:
        rt.metrics.add_gauge(
            "ferrohsm_approvals_pending", "Approvals waiting for decisions (counted to 10000)",
            lambda: {(): float(len(approvals.list(ApprovalState.PENDING, datetime.now(UTC),
                                                  limit=10000)))})
    for name in ALGORITHMS:
        for operation in CRYPTO_OPERATIONS:
            for outcome in ("success", "error"):
                rt.metrics.crypto_ops.touch(name, operation, outcome)
    for reason in AUTH_FAILURE_REASONS:
        rt.metrics.auth_failures.touch(reason)
    for route in rt.router.routes():
        rt.metrics.latency.touch(route.template, route.method)


CRYPTO_OPERATIONS = ("encrypt", "decrypt", "sign", "verify", "wrap", "unwrap")
AUTH_FAILURE_REASONS = ("missing", "scheme", "malformed", "oversized", "header", "algorithm",
                        "kid", "signature", "claims", "issuer", "audience", "expired",
                        "immature", "lifetime", "role", "binding", "revoked")


def start_scheduler(rt: Runtime) -> threading.Thread:
    """The retention scheduler (ferrohsm/scheduler.py), every [scheduler].interval_seconds."""
    scheduler = RetentionScheduler(rt.service,
                                   approval_retention_days=rt.config.approvals.retention_days,
                                   audit_prune=rt.audit.prune)
    return scheduler.start(rt.stop, rt.config.scheduler.interval_seconds)


def system_event(rt: Runtime, action: str, message: str) -> None:
    rt.audit.append(AuditEvent.from_context(SYSTEM_CONTEXT, action, "success", message))


def make_server(rt: Runtime, ssl_provider: Any) -> HardenedHTTPServer:
    s = rt.config.server
    host, port = parse_listen(s.listen)
    rt.app.server_port = port or None  # port 0: known once bound (cli/serve.py sets it)
    return HardenedHTTPServer(
        rt.app, host=host, port=port, ssl_context_provider=ssl_provider,
        max_connections=s.max_connections,
        admission=Admission(s.max_connections, s.max_connections_per_ip,
                            s.max_unproductive_per_ip, s.reserved_authenticated_share,
                            exempt=rt.app.limiter.is_proxy),
        handshake_timeout=s.handshake_timeout_seconds,
        header_timeout=s.header_timeout_seconds, body_timeout=s.body_timeout_seconds,
        idle_timeout=s.idle_timeout_seconds, max_body=s.max_body_bytes, logger=log,
        workers=s.workers, inline=rt.app.runs_inline, audit=rt.audit,
        on_refused=rt.app.refuse,
        on_request=rt.app.finished if rt.app.tracer is not None else None)


def tls_provider(config: Config) -> ReloadingContext:
    t = config.tls
    if not t.cert:
        raise ConfigError(f"{config.source}: [tls].cert and [tls].key are required to serve "
                          "(or use `ferrohsm quickstart` for a generated development PKI)")
    return ReloadingContext(t.cert, t.key, t.client_ca or None, t.require_client_cert)


def shutdown(rt: Runtime, server: HardenedHTTPServer | None) -> None:
    rt.stop.set()
    if server is not None:
        server.shutdown(rt.config.server.shutdown_grace_seconds)
    try:
        system_event(rt, "system.shutdown", "FerroHSM stopped")
    except FerroError:
        log.error("could not record shutdown in the audit log")
    rt.audit.close()
    if rt.approvals is not None:
        rt.approvals.close()
    rt.store.close()
    rt.app.access.close()  # every access line written before we return
    if rt.app.tracer is not None:
        rt.app.tracer.shutdown()
