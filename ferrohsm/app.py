"""Composition root: the ONLY module that names concrete classes and wires them together."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from .api import application, router as routing
from .api.handlers import audit as audit_routes, crypto as crypto_routes, keys as key_routes
from .api.handlers import system as system_routes
from .api.handlers import tokens as token_routes
from .api.server import HardenedHTTPServer
from .audit.chain import AuditEvent
from .audit.sinks import AuditSink, FileSink, SQLiteSink
from .authn import Authenticator, build_authenticator
from .ratelimit import RateLimiter, policy_from_settings
from .config import Config, Secrets, parse_listen
from .crypto.seal import Sealer
from .errors import ConfigError, FerroError
from .keycache import MaterialCache
from .keyops import KeyEngine
from .metrics import ServerMetrics
from .model import SYSTEM_CONTEXT, Key
from .service import KeyService
from .store.base import KeyStore
from .store.filesystem import FilesystemStore
from .store.memory import MemoryStore
from .store.sqlite import SQLiteStore
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


def destroy_grace(config: Config) -> Any:
    """The longest grace any of the key's tags asks for (strictest wins), else the default."""
    default = timedelta(hours=config.crypto.destroy_grace_hours)

    def grace(key: Key) -> timedelta:
        hours = [config.policy_tags[t].destroy_grace_hours for t in key.tags
                 if t in config.policy_tags]
        return max([default, *(timedelta(hours=h) for h in hours)])
    return grace


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


def build_runtime(config: Config, secrets: Secrets) -> Runtime:
    store = open_store(config)
    try:
        sealer = Sealer(secrets.master_key)
        check_master_key(store, sealer)
        audit = open_audit(config, secrets)
    except Exception:
        store.close()
        raise
    cache: MaterialCache[Any] = MaterialCache(config.crypto.cache_max_entries,
                                              config.crypto.cache_ttl_seconds)
    engine = KeyEngine(store, sealer, cache, config.crypto.max_input_bytes)
    metrics = ServerMetrics()
    service = KeyService(store, engine, audit, destroy_grace=destroy_grace(config),
                         on_crypto=lambda alg, op, outcome: metrics.crypto_ops.inc(alg, op, outcome))
    auth = build_authenticator(config.auth, secrets.jwt_hs256_secret, config.storage.data_dir,
                               on_event=keyset_audit(audit))
    limiter = RateLimiter(policy_from_settings(config.rate_limit))
    router = routing.Router()
    key_routes.register(router, service)
    crypto_routes.register(router, service)
    audit_routes.register(router, service, audit)
    token_routes.register(router, auth, service.record)
    app = application.Application(router, auth, metrics, application.audit_hook(service.record),
                                  limiter)
    runtime = Runtime(config, store, audit, service, auth, metrics, router, app)
    system_routes.register(router, runtime.health, metrics,
                           extra_operations=token_routes.OPERATIONS)
    _gauges(runtime)
    return runtime


def keyset_audit(audit: AuditSink) -> Any:
    """Every keyset reload, accepted or refused, leaves an audit record."""
    def record(outcome: str, message: str) -> None:
        audit.append(AuditEvent.from_context(SYSTEM_CONTEXT, "auth.keyset_reload", outcome,
                                             message))
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
    """Finish destructions whose grace has passed, every [scheduler].interval_seconds."""
    def tick() -> None:
        for key in rt.service.due_destructions(rt.service.clock()):
            try:
                rt.service.complete_destroy(SYSTEM_CONTEXT, key)
            except FerroError as exc:
                log.warning("scheduled destruction of %s failed: %s", key.id, exc.message)

    def loop() -> None:
        while not rt.stop.wait(rt.config.scheduler.interval_seconds):
            try:
                tick()
            except Exception:  # noqa: BLE001 - the scheduler must survive a bad tick
                log.exception("scheduler tick failed")
    thread = threading.Thread(target=loop, name="ferrohsm-scheduler", daemon=True)
    thread.start()
    return thread


def system_event(rt: Runtime, action: str, message: str) -> None:
    rt.audit.append(AuditEvent.from_context(SYSTEM_CONTEXT, action, "success", message))


def make_server(rt: Runtime, ssl_provider: Any) -> HardenedHTTPServer:
    s = rt.config.server
    host, port = parse_listen(s.listen)
    return HardenedHTTPServer(
        rt.app, host=host, port=port, ssl_context_provider=ssl_provider,
        max_connections=s.max_connections, handshake_timeout=s.handshake_timeout_seconds,
        header_timeout=s.header_timeout_seconds, body_timeout=s.body_timeout_seconds,
        idle_timeout=s.idle_timeout_seconds, max_body=s.max_body_bytes, logger=log)


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
    rt.store.close()
