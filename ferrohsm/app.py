"""Composition root: the ONLY module that names concrete classes and wires them together."""

from __future__ import annotations

import datetime as dt
import errno
import importlib.util
import logging
import os
import re
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .api import application
from .api import router as routing
from .api.admission import Admission
from .api.handlers import approvals as approval_routes
from .api.handlers import audit as audit_routes
from .api.handlers import crypto as crypto_routes
from .api.handlers import custody as custody_routes
from .api.handlers import dashboard as dashboard_routes
from .api.handlers import keys as key_routes
from .api.handlers import probes as probe_routes
from .api.handlers import rekey as rekey_routes
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
from .control.heldscheduler import HeldScheduler
from .control.policy import Policy
from .crypto.recordmac import RecordMac
from .crypto.seal import Sealer
from .custody import online as online_rekey
from .custody.rekey import refuse_if_interrupted
from .custody.serving import PausingApplication
from .domain.errors import ConfigError, FerroError
from .domain.model import SYSTEM_CONTEXT, RequestContext, Role
from .engine.keycache import MaterialCache
from .engine.keyengine import KeyEngine
from .integrity.logcheck import StartupChecks, StartupRefused
from .integrity.logscan import AuditLocation
from .integrity.reconcile import reconcile
from .integrity.records import RecordReport, check_key_records
from .service import AuditLogService, KeyService, TokenService
from .service.batch import CryptoItems
from .store.approvalstore import ApprovalStore
from .store.filesystem import FilesystemStore
from .store.keystore import KeyStore
from .store.memory import MemoryStore
from .store.memory_approvals import MemoryApprovalStore
from .store.pgdb import PgDatabase, dsn_from_env
from .store.postgres import PostgresStore
from .store.postgres_approvals import PostgresApprovalStore
from .store.postgres_revocations import PostgresDenyList
from .store.sqlite import SQLiteStore
from .store.sqlite_approvals import SQLiteApprovalStore
from .telemetry.metrics import ServerMetrics
from .tls.acme.provider import AcmeOptions, AcmeProvider
from .tls.context import ReloadingContext
from .tls.stapler import OcspStapler
from .tls.status import OCSP_STATES, Notify

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
    if kind == "postgres":
        return PostgresStore(open_postgres(config), record_mac)
    data = ensure_private_dir(config.storage.data_dir)
    if kind == "sqlite":
        return SQLiteStore(data / "keys.sqlite3", record_mac)
    return FilesystemStore(data, record_mac)


def open_postgres(config: Config) -> PgDatabase:
    """The process's pool of connections to the shared database, from the DSN in the variable
    ``[storage].postgres_dsn_env`` names (psycopg is imported here, only when configured)."""
    dsn = dsn_from_env(config.storage.postgres_dsn_env, os.environ)
    return PgDatabase(dsn, max_connections=max(2, min(config.server.workers // 2 + 2, 16)))


def open_approvals(config: Config, store: KeyStore | None = None) -> ApprovalStore:
    """Approvals survive restarts beside the keys; with the memory key store nothing does. With
    PostgreSQL they live in the key store's database, shared by every node."""
    if isinstance(store, PostgresStore):
        return PostgresApprovalStore(store.database)
    if config.storage.key_store == "memory":
        return MemoryApprovalStore()
    return SQLiteApprovalStore(ensure_private_dir(config.storage.data_dir) / "approvals.sqlite3")


def shared_deny_list(store: KeyStore) -> PostgresDenyList | None:
    """Revoked tokens in the key store's database when it is PostgreSQL (every node sees a
    revocation at once); None keeps the file deny-list of [auth].deny_list_file."""
    return PostgresDenyList(store.database) if isinstance(store, PostgresStore) else None


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
    tls_status: Callable[[], dict[str, Any]] | None = None  # the TLS provider's (wire_tls)
    tls_close: Callable[[], None] | None = None  # stops its threads before the audit log closes
    serving: threading.Event = field(default_factory=threading.Event)  # set once started (/readyz)
    pause: online_rekey.Pause = field(default_factory=online_rekey.Pause)  # held by requests

    def _key_records(self) -> dict[str, Any]:
        """Counts only: the ids of failed keys are in the audit log (and a filesystem store's
        own ``unreadable_keys``), and health is served to anyone."""
        report = self.key_records
        if report is None:
            return {}
        return {"checked_at_start": report.checked, "failed_at_start": len(report.failed),
                "migrated_at_start": report.migrated}

    def health(self) -> dict[str, Any]:
        problem = self.audit.degraded() or self.pause.broken  # a rekey that failed midway
        return {
            "status": "ok" if problem is None else "degraded",
            **({} if problem is None else {"reason": problem}),
            "version": __import__("ferrohsm").__version__,
            "sealed": False,  # a sealed split-knowledge server answers from custody/gate.py
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "store": self.store.describe(),
            "key_records": self._key_records(),
            "audit": self.audit.describe(),
            "auth": self.authenticator.stats(),
            "rate_limit": self.app.limiter.stats(),
            "cache": self.service.engine.cache.stats(),
            **({} if self.tls_status is None else {"tls": self.tls_status()}),
        }


    def readiness(self) -> dict[str, bool]:
        """/readyz: each check by name. ``serving`` is set after the start-up checks, the
        listener and the startup record, and cleared when shutdown begins (drain first)."""
        return {"started": self.serving.is_set() and not self.stop.is_set(),
                "store_open": _store_open(self.store),
                "audit_writable": self.audit.degraded() is None,
                "tls_certificate": _certificate_in_date(self.tls_status)}


def _store_open(store: KeyStore) -> bool:
    """One small read: a closed or unreadable store raises."""
    try:
        store.get_meta(CHECK_VALUE)
    except (FerroError, OSError):
        return False
    return True


def _certificate_in_date(status: Callable[[], dict[str, Any]] | None) -> bool:
    if status is None:
        return False
    expiry = _expiry(status())
    return expiry > time.time()


def build_runtime(config: Config, secrets: Secrets,
                  options: StartupOptions | None = None, *,
                  seal: Callable[[RequestContext], None] | None = None) -> Runtime:
    store = open_store(config, RecordMac.derive(secrets.master_key))
    approvals: ApprovalStore | None = None
    audit: AuditSink | None = None
    try:
        secrets = resume_online_rekey(config, secrets, store)
        refuse_if_interrupted(store)  # records under two master keys are not served
        sealer = Sealer(secrets.master_key)
        policy = Policy.from_config(config.policy_tags, config.crypto.destroy_grace_hours)
        approvals = open_approvals(config, store)
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
                               on_event=config_audit(audit, "auth.keyset_reload"),
                               deny_list=shared_deny_list(store))
    limiter = RateLimiter(policy_from_settings(config.rate_limit))
    router = routing.Router()
    key_routes.register(router, service)
    # the per-item path of every batch surface (service/batch.py)
    items = CryptoItems(service, limiter, config.crypto.max_batch_items, audit)
    crypto_routes.register(router, service, items)
    audit_routes.register(router, AuditLogService(service.guard, audit))
    approval_routes.register(router, service.approvals)
    dashboard_routes.register(router)
    token_routes.register(router, TokenService(service.guard, auth))
    custody_routes.register(router, service.guard, seal, lambda: {"sealed": False})
    transit_routes.register(router, service, limiter)
    pause = online_rekey.Pause()
    app = PausingApplication(router, auth, metrics, application.audit_hook(service.record),
                             limiter, pause=pause)
    wire_rekey(router, config, secrets, store, audit, service, pause)
    runtime = Runtime(config, store, audit, service, auth, metrics, router, app,
                      approvals=approvals, key_records=key_records, pause=pause)
    system_routes.register(router, runtime.health, metrics, health_viewer(auth))
    probe_routes.register(router, runtime.readiness)
    _gauges(runtime)
    return runtime


def online_key_file(config: Config) -> tuple[str, str]:
    """Where an online rekey writes the new master key, or "" and why it cannot here."""
    s = config.secrets
    return online_rekey.key_file_for(s.unseal, bool(os.environ.get("FERROHSM_MASTER_KEY")),
                                     s.master_key_file, config.storage.key_store == "postgres")


def resume_online_rekey(config: Config, secrets: Secrets, store: KeyStore) -> Secrets:
    """Finish an online rekey a crash interrupted; the secrets to serve with."""
    def open_append() -> tuple[online_rekey.Append, Callable[[], None]]:
        sink = open_audit(config, secrets)
        return sink.append, sink.close
    master = online_rekey.resume_at_start(store, secrets.master_key, online_key_file(config)[0],
                                          open_append, SYSTEM_CONTEXT)
    return secrets if master == secrets.master_key else replace(secrets, master_key=master)


def wire_rekey(router: routing.Router, config: Config, secrets: Secrets, store: KeyStore,
               audit: AuditSink, service: KeyService, pause: online_rekey.Pause) -> None:
    run = online_rekey.OnlineRekey(store, audit.append, online_rekey.installer(service.engine),
                                   secrets.master_key, *online_key_file(config), pause)
    a = config.approvals
    rekey_routes.register(router, service.guard, service.dual, run,
                          a.rekey_approvals_required, a.rekey_approval_ttl_seconds)


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
    rt.metrics.add_gauge("ferrohsm_key_cache", "Unsealed-key cache statistics",
                         lambda: {(k,): float(v) for k, v in cache.stats().items()}, ("stat",))
    rt.metrics.add_gauge("ferrohsm_token_cache", "Verified-token cache statistics",
                         lambda: {(k,): float(v) for k, v in rt.authenticator.stats().items()},
                         ("stat",))
    rt.metrics.add_gauge("ferrohsm_audit_healthy", "1 when the audit log accepts records (0 "
                         "from a failed write or flush until the next good one)",
                         lambda: {(): 1.0 if rt.audit.degraded() is None else 0.0})


def start_scheduler(rt: Runtime) -> threading.Thread:
    """The retention scheduler (ferrohsm/scheduler.py), every [scheduler].interval_seconds."""
    scheduler = HeldScheduler(rt.service, hold=rt.pause.hold,  # never beside a rekey
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
        max_connections=s.max_connections,
        admission=Admission(s.max_connections, s.max_connections_per_ip,
                            s.max_unproductive_per_ip, s.reserved_authenticated_share,
                            exempt=rt.app.limiter.is_proxy),
        handshake_timeout=s.handshake_timeout_seconds,
        header_timeout=s.header_timeout_seconds, body_timeout=s.body_timeout_seconds,
        idle_timeout=s.idle_timeout_seconds, max_body=s.max_body_bytes, logger=log,
        workers=s.workers, inline=rt.app.runs_inline, audit=rt.audit,
        on_refused=rt.app.refuse)


def tls_provider(config: Config) -> ReloadingContext | AcmeProvider:
    t = config.tls
    if t.mode == "acme":
        return acme_provider(config)
    if not t.cert:
        raise ConfigError(f"{config.source}: [tls].cert and [tls].key are required to serve "
                          "(or use `ferrohsm quickstart` for a generated development PKI)")
    stapler = None
    if t.ocsp_staple:
        if importlib.util.find_spec("OpenSSL") is None:
            raise ConfigError(f"{config.source}: [tls].ocsp_staple needs pyOpenSSL (install "
                              "ferrohsm[ocsp]): Python's ssl module cannot staple")
        stapler = OcspStapler(t.ocsp_responder, t.ocsp_refresh_seconds)
    return ReloadingContext(t.cert, t.key, t.client_ca or None, t.require_client_cert,
                            interval=t.reload_seconds, stapler=stapler)


TLS_FAILURES = frozenset({"tls.reload_refused", "tls.acme_failed"})


def tls_notify(audit: AuditSink) -> Notify:
    """Certificate events (reload, refusal, OCSP status, ACME issuance, renewal and failure) as
    durable audit records of the system actor, written before the provider goes on; the fields
    go to ``details`` (certificates are public: no secrets)."""
    def notify(event: str, fields: Mapping[str, object]) -> None:
        failed = event in TLS_FAILURES
        outcome = "error" if failed or fields.get("status") == "revoked" else "success"
        audit.append(AuditEvent.from_context(SYSTEM_CONTEXT, event, outcome,
                                             _tls_message(event, fields)[:1000],
                                             details=_flat(fields)))
    return notify


def _tls_message(event: str, fields: Mapping[str, object]) -> str:
    if event == "tls.acme_failed":
        return f"ACME failed: {fields.get('error')}"
    if event in ("tls.issued", "tls.renewed"):
        return (f"TLS certificate {event.removeprefix('tls.')}: serial {fields.get('serial')}, "
                f"expires {fields.get('not_after')}")
    return str(fields.get("message") or fields.get("reason") or event)


def wire_tls(rt: Runtime, provider: Any) -> None:
    """The TLS provider's events to the audit log, its status to /healthz and /metrics, and its
    background work (file polling, OCSP, ACME renewal) started. Any provider with ``status()``
    (and optionally ``notify``, ``start``) fits: PEM or ACME."""
    if hasattr(provider, "notify"):
        provider.notify = tls_notify(rt.audit)
    status: Callable[[], dict[str, Any]] = provider.status
    rt.tls_status = status
    rt.metrics.add_gauge("ferrohsm_tls_certificate_expiry_timestamp_seconds",
                         "notAfter of the served TLS certificate (Unix time)",
                         lambda: {(): _expiry(status())})
    rt.metrics.add_gauge("ferrohsm_tls_ocsp_status", "1 for the OCSP status of the served "
                         "certificate (off, good, revoked, unknown, unavailable), 0 for the others",
                         lambda: _ocsp_gauge(status()), ("status",))
    if hasattr(provider, "close"):
        rt.tls_close = provider.close
    if hasattr(provider, "start") and not isinstance(provider, AcmeProvider):
        provider.start()  # ACME starts in start_tls, once the serving port answers challenges


def _expiry(status: Mapping[str, Any]) -> float:
    not_after = status.get("not_after")
    if not isinstance(not_after, str):
        return 0.0
    return dt.datetime.strptime(not_after, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=dt.UTC).timestamp()


def _ocsp_gauge(status: Mapping[str, Any]) -> dict[tuple[str, ...], float]:
    current = status.get("ocsp", "off")
    return {(state,): 1.0 if state == current else 0.0 for state in OCSP_STATES}


def acme_provider(config: Config) -> AcmeProvider:
    """``[tls] mode = "acme"``: the cache lives in ``<data_dir>/acme`` unless named."""
    t, a = config.tls, config.tls.acme
    cache_dir = a.cache_dir or str(ensure_private_dir(config.storage.data_dir) / "acme")
    return AcmeProvider(AcmeOptions(
        directory=a.directory, domains=a.domains, email=a.email, challenge=a.challenge,
        http_listen=a.http_listen, ca_bundle=a.ca_bundle, cache_dir=cache_dir,
        renew_before_fraction=a.renew_before_fraction, client_ca=t.client_ca,
        require_client_cert=t.require_client_cert))


def _flat(fields: Mapping[str, object]) -> dict[str, str | int | bool | None]:
    """Audit details are flat: lists become comma-separated text, other values their text."""
    out: dict[str, str | int | bool | None] = {}
    for key, value in fields.items():
        if value is None or isinstance(value, (str, int, bool)):
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = str(value)
    return out


def start_tls(rt: Runtime, provider: Any) -> None:
    """ACME issuance and renewal started (after ``wire_tls`` and once the server listens, so a
    tls-alpn-01 validation finds the port), and its own metrics; stopped by ``shutdown``."""
    if not isinstance(provider, AcmeProvider):
        return

    def acme() -> dict[str, Any]:  # read at scrape time
        state: dict[str, Any] = provider.status()["acme"]
        return state
    rt.metrics.add_gauge("ferrohsm_tls_acme_consecutive_failures", "ACME attempts failed in a "
                         "row (0 after a success)", lambda: {(): float(acme()["failures"])})
    rt.metrics.add_gauge("ferrohsm_tls_acme_failures", "ACME attempts failed since start",
                         lambda: {(): float(acme()["failures_total"])})
    rt.metrics.add_gauge("ferrohsm_tls_acme_certificate_present", "1 when ACME has a "
                         "certificate to serve, 0 while waiting for the first",
                         lambda: {(): 1.0 if acme()["state"] == "serving" else 0.0})
    provider.start(rt.stop)


def shutdown(rt: Runtime, server: HardenedHTTPServer | None) -> None:
    rt.stop.set()
    rt.serving.clear()
    if server is not None:
        server.shutdown(rt.config.server.shutdown_grace_seconds)
    if rt.tls_close is not None:
        rt.tls_close()
    try:
        system_event(rt, "system.shutdown", "FerroHSM stopped")
    except FerroError:
        log.error("could not record shutdown in the audit log")
    rt.audit.close()
    if rt.approvals is not None:
        rt.approvals.close()
    rt.store.close()
