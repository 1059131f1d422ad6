"""Composition root: the ONLY module that names concrete classes and wires them together."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import application
from .api import router as routing
from .api.handlers import approvals as approval_routes
from .api.handlers import audit as audit_routes
from .api.handlers import crypto as crypto_routes
from .api.handlers import dashboard as dashboard_routes
from .api.handlers import keys as key_routes
from .api.handlers import system as system_routes
from .api.handlers import tokens as token_routes
from .api.server import HardenedHTTPServer
from .audit.chain import AuditEvent
from .audit.sinks import AuditSink, FileSink, SQLiteSink
from .auth.authn import Authenticator, build_authenticator
from .auth.ratelimit import RateLimiter, policy_from_settings
from .config import Config, Secrets, parse_listen
from .control.policy import Policy
from .control.scheduler import RetentionScheduler
from .crypto.seal import Sealer
from .domain.errors import ConfigError, FerroError
from .domain.model import SYSTEM_CONTEXT
from .engine.keycache import MaterialCache
from .engine.keyengine import KeyEngine
from .integrity.reconcile import reconcile
from .service import AuditLogService, KeyService, TokenService
from .store.approvalstore import ApprovalStore
from .store.filesystem import FilesystemStore
from .store.keystore import KeyStore
from .store.memory import MemoryStore
from .store.memory_approvals import MemoryApprovalStore
from .store.sqlite import SQLiteStore
from .store.sqlite_approvals import SQLiteApprovalStore
from .telemetry.metrics import ServerMetrics
from .tls.context import ReloadingContext

log = logging.getLogger("ferrohsm")
CHECK_VALUE = "master_key_check"


def ensure_private_dir(path: str | Path) -> Path:
    """Create ``path`` 0700 (and tighten it if it exists): data directories hold sealed secrets."""
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    if p.is_symlink():
        raise ConfigError(f"data directory {p} must not be a symlink")
    os.chmod(p, 0o700)
    return p


def open_store(config: Config) -> KeyStore:
    kind = config.storage.key_store
    if kind == "memory":
        return MemoryStore()
    data = ensure_private_dir(config.storage.data_dir)
    if kind == "sqlite":
        return SQLiteStore(data / "keys.sqlite3")
    return FilesystemStore(data)


def open_approvals(config: Config) -> ApprovalStore:
    """Approvals survive restarts beside the keys; with the memory key store nothing does."""
    if config.storage.key_store == "memory":
        return MemoryApprovalStore()
    return SQLiteApprovalStore(ensure_private_dir(config.storage.data_dir) / "approvals.sqlite3")


def open_audit(config: Config, secrets: Secrets) -> AuditSink:
    directory = ensure_private_dir(Path(config.storage.data_dir) / "audit")
    if config.audit.sink == "sqlite":
        return SQLiteSink(directory / "audit.sqlite3", secrets.audit_hmac_key,
                          retention_days=config.audit.retention_days or None,
                          durable=config.audit.durable)
    return FileSink(directory, secrets.audit_hmac_key,
                    segment_max_bytes=config.audit.segment_max_bytes,
                    durable=config.audit.durable)


def check_master_key(store: KeyStore, sealer: Sealer) -> None:
    """A wrong master key must stop start-up, not surface later as corrupted keys."""
    stored = store.get_meta(CHECK_VALUE)
    if stored is None:
        store.put_meta(CHECK_VALUE, sealer.make_check_value())
    else:
        sealer.verify_check_value(stored)


@dataclass(frozen=True)
class StartupOptions:
    """One-off acceptances of a degraded state (``serve --accept-...``); each is audited."""

    accept_unrecorded: bool = False


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

    def health(self) -> dict[str, Any]:
        audit_ok = self.audit.healthy()
        return {
            "status": "ok" if audit_ok else "degraded",
            "version": __import__("ferrohsm").__version__,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "store": self.store.describe(),
            "audit": self.audit.describe(),
            "auth": self.authenticator.stats(),
            "rate_limit": self.app.limiter.stats(),
            "cache": self.service.engine.cache.stats(),
        }


def build_runtime(config: Config, secrets: Secrets,
                  options: StartupOptions | None = None) -> Runtime:
    store = open_store(config)
    approvals: ApprovalStore | None = None
    audit: AuditSink | None = None
    try:
        sealer = Sealer(secrets.master_key)
        check_master_key(store, sealer)
        policy = Policy.from_config(config.policy_tags, config.crypto.destroy_grace_hours)
        approvals = open_approvals(config)
        audit = open_audit(config, secrets)
        if config.storage.key_store != "memory":  # the memory store forgets by design
            # before anything is served: settle what a crash left unsettled, refuse what the
            # log does not explain (integrity/reconcile.py)
            reconcile(store, audit, secrets.audit_hmac_key, approvals=approvals,
                      accept_unrecorded=(options or StartupOptions()).accept_unrecorded)
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
    app = application.Application(router, auth, metrics, application.audit_hook(service.record),
                                  limiter)
    runtime = Runtime(config, store, audit, service, auth, metrics, router, app,
                      approvals=approvals)
    system_routes.register(router, runtime.health, metrics)
    _gauges(runtime)
    return runtime


def config_audit(audit: AuditSink, action: str) -> Callable[[str, str], None]:
    """Every configuration reload (keysets, TLS files), accepted or refused, is audited."""
    def record(outcome: str, message: str) -> None:
        audit.append(AuditEvent.from_context(SYSTEM_CONTEXT, action, outcome, message))
    return record


def _gauges(rt: Runtime) -> None:
    cache = rt.service.engine.cache
    rt.metrics.add_gauge("ferrohsm_key_cache", "Unsealed-key cache statistics",
                         lambda: {(k,): float(v) for k, v in cache.stats().items()}, ("stat",))
    rt.metrics.add_gauge("ferrohsm_token_cache", "Verified-token cache statistics",
                         lambda: {(k,): float(v) for k, v in rt.authenticator.stats().items()},
                         ("stat",))
    rt.metrics.add_gauge("ferrohsm_audit_healthy", "1 when the audit log accepts records",
                         lambda: {(): 1.0 if rt.audit.healthy() else 0.0})


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
    return HardenedHTTPServer(
        rt.app, host=host, port=port, ssl_context_provider=ssl_provider,
        max_connections=s.max_connections, handshake_timeout=s.handshake_timeout_seconds,
        header_timeout=s.header_timeout_seconds, body_timeout=s.body_timeout_seconds,
        idle_timeout=s.idle_timeout_seconds, max_body=s.max_body_bytes, logger=log,
        workers=s.workers, inline=rt.app.runs_inline, deferral=rt.audit,
        on_refused=rt.app.refuse)


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
