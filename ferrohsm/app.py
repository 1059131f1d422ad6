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
from .api.admission import Admission
from .api.dispatch import Turn
from .api.flusher import FlushPlan
from .api.handlers import approvals as approval_routes
from .api.handlers import audit as audit_routes
from .api.handlers import crypto as crypto_routes
from .api.handlers import custody as custody_routes
from .api.handlers import dashboard as dashboard_routes
from .api.handlers import imports as import_routes
from .api.handlers import keys as key_routes
from .api.handlers import probes as probe_routes
from .api.handlers import system as system_routes
from .api.handlers import tokens as token_routes
from .api.handlers import transit as transit_routes
from .api.handlers import vaultauth as vault_auth_routes
from .api.server import HardenedHTTPServer
from .api.spread import Member, Spread
from .audit.chain import AuditEvent
from .audit.sinks import AuditSink, ChainedSink, FileSink, PostgresSink, SQLiteSink
from .audit.witness import FileWitness, Witness, make_witness
from .auth.approverkeys import ApproverKeys
from .auth.authn import Authenticator, build_authenticator, file_deny_list
from .auth.denylist import RevocationList
from .auth.ratelimit import RateLimiter, policy_from_settings
from .auth.sharedlimit import ClusterLimits
from .clusterwire import offline_alone as offline_alone  # for the CLI's offline commands
from .clusterwire import open_cluster, settle_dead
from .config import Config, Secrets, fsync_cores, parse_listen
from .control.cluster import Cluster
from .control.heldscheduler import HeldScheduler
from .control.policy import Policy
from .control.steadyclock import SteadyClock
from .control.voting import VoteRules
from .crypto.recordmac import RecordMac
from .crypto.seal import Sealer
from .custody import online as online_rekey
from .custody import restore as custody_restore
from .custody.rekey import refuse_if_interrupted
from .custody.serving import PausingApplication
from .custodywire import resume_online_rekey, wire_backup, wire_rekey
from .datadir import check_store_kind, ensure_private_dir, startup_failure, why
from .domain.errors import FerroError
from .domain.model import SYSTEM_CONTEXT, RequestContext
from .engine.keycache import MaterialCache
from .engine.keyengine import KeyEngine
from .integrity.logcheck import StartupChecks, StartupRefused
from .integrity.logscan import AuditLocation
from .integrity.reconcile import Report, newest_only, reconcile
from .integrity.records import RecordReport, check_key_records
from .obswire import share_metrics, wire_metrics
from .service import AuditLogService, KeyService, TokenService
from .service.batch import CryptoItems
from .service.imports import ImportService
from .store.approvalmac import ApprovalCodec
from .store.approvalstore import ApprovalStore
from .store.filesystem import FilesystemStore
from .store.importjobs import ImportJobStore
from .store.importjobs_files import FolderImportJobStore, MemoryImportJobStore
from .store.keystore import KeyStore
from .store.memory import MemoryStore
from .store.memory_approvals import MemoryApprovalStore
from .store.pgdb import PgDatabase, dsn_from_env
from .store.pgwatch import WATCHDOG
from .store.postgres import PostgresStore
from .store.postgres_approvals import PostgresApprovalStore
from .store.postgres_importjobs import PostgresImportJobStore
from .store.postgres_revocations import PostgresDenyList
from .store.sqlite import SQLiteStore
from .store.sqlite_approvals import SQLiteApprovalStore
from .telemetry import tracing
from .telemetry.metrics import ServerMetrics
from .tlswire import expiry_of, start_tls, tls_notify, tls_provider, wire_tls

# re-exported for the entry points: the data folder (datadir.py) and the TLS wiring (tlswire.py)
__all__ = ["ensure_private_dir", "share_metrics", "start_tls", "startup_failure", "tls_notify",
           "tls_provider", "why", "wire_tls"]
log = logging.getLogger("ferrohsm")
CHECK_VALUE = "master_key_check"


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
    dsn = postgres_dsn(config)
    return PgDatabase(dsn, max_connections=max(2, min(config.server.workers // 2 + 2, 16)))


def open_approvals(config: Config, secrets: Secrets, store: KeyStore | None = None
                   ) -> ApprovalStore:
    """Approvals survive restarts beside the keys; with the memory key store nothing does. With
    PostgreSQL they live in the key store's database, shared by every node. Stored records are
    authenticated (store/approvalmac.py)."""
    codec = ApprovalCodec(RecordMac.for_approvals(secrets.audit_hmac_key))
    if isinstance(store, PostgresStore):
        return PostgresApprovalStore(store.database, codec)
    if config.storage.key_store == "memory":
        return MemoryApprovalStore()
    return SQLiteApprovalStore(ensure_private_dir(config.storage.data_dir) / "approvals.sqlite3",
                               codec)


def shared_deny_list(store: KeyStore) -> PostgresDenyList | None:
    """Revoked tokens in the key store's database when it is PostgreSQL (every node sees a
    revocation at once); None keeps the file deny-list of [auth].deny_list_file."""
    return (PostgresDenyList(store.database, freshness=store.freshness)
            if isinstance(store, PostgresStore) else None)


def open_revocations(config: Config, store: KeyStore) -> RevocationList:
    """The revoked-token list ``serve`` would use with ``store`` (PostgreSQL's table, or the
    file): an offline backup reads it, a restore writes the archive's revocations into it."""
    shared = shared_deny_list(store)  # not ``or``: an empty list has len() 0, it is falsy
    return shared if shared is not None else file_deny_list(config.auth, config.storage.data_dir)


def store_turn(store: object) -> Turn | None:
    """One freshness check per event-loop turn for a store other processes write: PostgreSQL
    (store/pgfresh.py: the store's and the revoked-token list's caches, one round trip) and
    SQLite (one ``data_version``). Without it (other stores; a sealed server, whose store
    opens later) each lookup checks alone."""
    if isinstance(store, PostgresStore):
        return store.freshness.turn
    return store.turn if isinstance(store, SQLiteStore) else None


def open_import_jobs(config: Config, store: KeyStore | None = None) -> ImportJobStore:
    """Import jobs (sealed) beside the keys; with the memory key store they are forgotten too.
    With PostgreSQL they live in its database: a client failing over finds its job there."""
    if isinstance(store, PostgresStore):
        return PostgresImportJobStore(store.database)
    if config.storage.key_store == "memory":
        return MemoryImportJobStore()
    return FolderImportJobStore(ensure_private_dir(config.storage.data_dir) / "import-jobs")


def audit_location(config: Config) -> AuditLocation:
    dsn = postgres_dsn(config) if config.audit.sink == "postgres" else ""
    return AuditLocation(str(Path(config.storage.data_dir) / "audit"), config.audit.sink, dsn)


def postgres_dsn(config: Config) -> str:
    """The PostgreSQL DSN, only ever from the environment variable ``[storage].postgres_dsn_env``
    names (it carries the password): the store, the audit sink and the cluster all read it so.
    The deadline of every wait for that database (store/pgwatch.py) is set here too."""
    WATCHDOG.configure(config.storage.postgres_timeout_seconds)
    return dsn_from_env(config.storage.postgres_dsn_env, os.environ)


def open_audit(config: Config, secrets: Secrets) -> ChainedSink:
    if not config.audit.durable:  # said loudly: it breaks "durable before the answer"
        log.warning("[audit] durable = false: audit records are NOT fsynced before answers; "
                    "a crash or power loss can lose acknowledged records (for benchmarks only)")
    directory = ensure_private_dir(audit_location(config).directory)
    interval = config.audit.checkpoint_interval_seconds
    if config.audit.sink == "sqlite":
        return SQLiteSink(directory / "audit.sqlite3", secrets.audit_hmac_key,
                          retention_days=config.audit.retention_days or None,
                          durable=config.audit.durable, checkpoint_interval=interval)
    if config.audit.sink == "postgres":  # this node's checkpoints and signing key: directory
        return PostgresSink(postgres_dsn(config), secrets.audit_hmac_key, directory=str(directory),
                            durable=config.audit.durable, checkpoint_interval=interval,
                            watchdog=WATCHDOG)
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


def open_joined(config: Config, secrets: Secrets, store: KeyStore, sealer: Sealer) -> ChainedSink:
    """A node joining live ones: the master key is checked, the audit log opened; the checks
    that compare the store with the log ran at the cold start and are not repeated (another
    node's change in flight would look like a crash's leftover)."""
    stored = store.get_meta(CHECK_VALUE)
    if stored is None:
        raise StartupRefused("the shared key store has no master-key check value; start one "
                             "node alone first")
    sealer.verify_check_value(stored)
    audit = open_audit(config, secrets)
    witness = open_witness(config)
    if witness is not None:
        audit.attach_witness(witness)
    return audit


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
    interrupted = custody_restore.refuse_interrupted(store)
    if interrupted is not None:
        raise StartupRefused(interrupted)
    new_store = check_master_key(store, sealer)
    witness = open_witness(config)
    checks = StartupChecks(store, audit_location(config),
                           witness_file=witness.path if isinstance(witness, FileWitness) else "",
                           store_is_persistent=config.storage.key_store != "memory",
                           store_is_new=new_store, accept_store_loss=options.accept_store_loss,
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
    cluster: Cluster | None = None  # the coordination of processes sharing the store
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
        store = self.store.describe()
        problem = (self.audit.degraded() or self.pause.broken  # a rekey that failed midway
                   or (None if store.get("reachable", True) else str(store.get("reason"))))
        return {
            "status": "ok" if problem is None else "degraded",
            **({} if problem is None else {"reason": problem}),
            "version": __import__("ferrohsm").__version__,
            "sealed": False,  # a sealed split-knowledge server answers from custody/gate.py
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "store": store, "key_records": self._key_records(),
            "audit": self.audit.describe(),
            "auth": self.authenticator.stats(),
            "rate_limit": self.app.limiter.stats(),
            "cache": self.service.engine.cache.stats(),
            **({} if self.tls_status is None else {"tls": self.tls_status()}),
            **({"cluster": self.cluster.describe()} if self.cluster else {}),
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
    expiry = expiry_of(status())
    return expiry > time.time()


def open_state(config: Config, secrets: Secrets, store: KeyStore, sealer: Sealer,
               approvals: ApprovalStore, opts: StartupOptions, cluster: Cluster | None
               ) -> tuple[ChainedSink, RecordReport | None, Report | None]:
    """The audit log, checked against the store and reconciled on a cold start; opened as is
    by a node that joins live ones (store/nodelock.py says why)."""
    if cluster is not None and not cluster.membership.enter():
        joined = open_joined(config, secrets, store, sealer)
        try:  # older copies of what the live nodes changed are refused here too
            return joined, None, newest_only(joined, secrets.audit_hmac_key)
        except BaseException:
            joined.close()
            raise
    audit, audit_loss = open_checked(config, secrets, store, sealer, opts)
    settled = None
    try:
        key_records = check_key_records(store, audit)  # before anything is served
        if config.storage.key_store != "memory":  # the memory store forgets by design
            # settle what a crash left unsettled, refuse what the log does not explain
            # (integrity/reconcile.py); after an accepted audit loss, bind every key anew
            settled = reconcile(store, audit, secrets.audit_hmac_key, approvals=approvals,
                                accept_unrecorded=opts.accept_unrecorded or audit_loss)
        if cluster is not None and cluster.leases is not None:  # all settled: none alive
            for node in cluster.leases.dead():
                cluster.leases.bury(node)
    except BaseException:
        audit.close()
        raise
    return audit, key_records, settled


def build_runtime(config: Config, secrets: Secrets,
                  options: StartupOptions | None = None, *,
                  seal: Callable[[RequestContext], None] | None = None) -> Runtime:
    voters = approver_keys(config)  # a broken approver keys file stops start-up before any open
    check_store_kind(config.storage.key_store, config.storage.data_dir)
    store = open_store(config, RecordMac.derive(secrets.master_key))
    approvals: ApprovalStore | None = None
    audit: AuditSink | None = None
    cluster: Cluster | None = None
    try:
        jobs = open_import_jobs(config, store)
        secrets = resume_online_rekey(config, secrets, store, jobs, open_audit, offline_alone)
        refuse_if_interrupted(store)  # records under two master keys are not served
        sealer = Sealer(secrets.master_key)
        policy = Policy.from_config(config.policy_tags, config.crypto.destroy_grace_hours)
        approvals = open_approvals(config, secrets, store)
        cluster = open_cluster(config)
        audit, key_records, settled = open_state(config, secrets, store, sealer, approvals,
                                                 options or StartupOptions(), cluster)
        auth = build_authenticator(config.auth, secrets.jwt_hs256_secret,
                                   config.storage.data_dir,
                                   on_event=config_audit(audit, "auth.keyset_reload"),
                                   deny_list=shared_deny_list(store))
        # the log's revocations are back on the list before any other process or node may
        # serve: they wait for this cold start (store/nodelock.py) until ``started``
        if settled is not None and settled.revoked and auth.restore_revocations(settled.revoked):
            log.warning("token deny-list: revocations the audit log holds were missing; restored")
        if cluster is not None:
            cluster.membership.started()
    except Exception:
        for opened in (audit, approvals, store, cluster):
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
    service.approvals.rules = vote_rules(config, voters, audit)
    if settled is not None:  # what the log says is newest: older copies are refused
        service.dual.seen(settled.approval_revisions)
        for key_id, seq in settled.key_bindings.items():
            store.note_binding(key_id, seq)
    service.guard.node = cluster.leases.node if cluster and cluster.leases else None
    settle_dead(cluster, store, approvals, audit, secrets.audit_hmac_key)
    limiter = RateLimiter(policy_from_settings(config.rate_limit))
    if cluster is not None:
        cluster.limits = ClusterLimits(limiter, cluster.usage)
    router = routing.Router()
    imports = ImportService(service, jobs)
    try:
        imports.purge_expired(SYSTEM_CONTEXT)  # expired import jobs do not outlive a restart
    except FerroError as exc:  # they are refused when used anyway; never a reason not to start
        log.warning("expired import jobs not purged at start-up: %s", exc.message)
    key_routes.register(router, service, imports)
    import_routes.register(router, imports)
    # the per-item path of every batch surface (service/batch.py)
    items = CryptoItems(service, limiter, config.crypto.max_batch_items, audit)
    crypto_routes.register(router, service, items)
    audit_routes.register(router, AuditLogService(service.guard, audit))
    approval_routes.register(router, service.approvals)
    dashboard_routes.register(router)
    tokens = TokenService(service.guard, auth, audit.anchor_now)
    token_routes.register(router, tokens)
    vault_auth_routes.register(router, tokens)  # Vault's token lookup-self, over whoami
    custody_routes.register(router, service.guard, seal, lambda: {"sealed": False})
    transit_routes.register(router, service, items)
    pause = online_rekey.Pause()
    engine.budget.hold = pause.hold  # its reservations, like requests, never beside a rekey
    app = PausingApplication(router, auth, metrics, application.audit_hook(service.record),
                             limiter, pause=pause, tracer=tracing.from_environment())
    app.refuse_role = service.guard.refuse_role  # names the key in a role's 403 record
    rekeyer = wire_rekey(router, config, secrets, store, imports.jobs, audit, service, pause,
                         cluster.leases.sole if cluster and cluster.leases else None)
    wire_backup(router, config, lambda: rekeyer.master, service, approvals, audit,
                auth.deny_list)
    runtime = Runtime(config, store, audit, service, auth, metrics, router, app,
                      approvals=approvals, key_records=key_records, cluster=cluster, pause=pause)
    system_routes.register(router, runtime.health, metrics, system_routes.health_viewer(auth, limiter))
    probe_routes.register(router, runtime.readiness)
    wire_metrics(runtime, audit)
    return runtime


def approver_keys(config: Config) -> ApproverKeys | None:
    """[approvals].approver_keys_file, loaded (and checked) now; reloaded like the keysets."""
    path = config.approvals.approver_keys_file
    return ApproverKeys(path, interval=config.auth.keyset_reload_seconds) if path else None


def vote_rules(config: Config, keys: ApproverKeys | None, audit: AuditSink) -> VoteRules:
    """[approvals]: who may vote and with what proof; every approver keys reload is audited."""
    if keys is not None:
        keys.set_event_hook(config_audit(audit, "approvals.keys_reload"))
    settings = config.approvals
    return VoteRules(settings.require_asymmetric_tokens, settings.require_vote_signature,
                     keys.current if keys else None)


def config_audit(audit: AuditSink, action: str) -> Callable[[str, str], None]:
    """Every configuration reload (keysets, TLS files), accepted or refused, is audited."""
    def record(outcome: str, message: str) -> None:
        audit.append(AuditEvent.from_context(SYSTEM_CONTEXT, action, outcome, message))
    return record


def start_scheduler(rt: Runtime) -> threading.Thread:
    """The retention scheduler (ferrohsm/scheduler.py), every [scheduler].interval_seconds."""
    cluster = rt.cluster
    scheduler = HeldScheduler(rt.service, hold=rt.pause.hold,  # never beside a rekey
                              clock=SteadyClock(rt.service.clock),  # no work for a clock's jump
                              approval_retention_days=rt.config.approvals.retention_days,
                              audit_prune=rt.audit.prune,
                              settle=cluster.settle if cluster else None,
                              leader=cluster.leader.is_leader if cluster else None)
    if cluster is not None:
        cluster.keep_membership(rt.stop)
    if cluster is not None and cluster.limits is not None:
        cluster.limits.start(rt.stop)  # shared rate limits (auth/sharedlimit.py)
    return scheduler.start(rt.stop, rt.config.scheduler.interval_seconds)


def system_event(rt: Runtime, action: str, message: str) -> None:
    rt.audit.append(AuditEvent.from_context(SYSTEM_CONTEXT, action, "success", message))


def connection_spread(processes: int) -> Spread:
    """``processes = N``: what the children share to split connections (before fork; spread.py)."""
    return Spread(processes)


def make_server(rt: Runtime, ssl_provider: Any, spread: Member | None = None
                ) -> HardenedHTTPServer:
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
        on_refused=rt.app.refuse, reuse_port=s.processes > 1, spread=spread, turn=store_turn(getattr(rt, "store", None)),
        flush=FlushPlan(rt.config.audit.flush, rt.config.audit.flush_spin_microseconds / 1e6,
                        fsync_cores(rt.config)), after_turn=getattr(rt.app, "turn_ended", None),
        # spans end, and settled requests are logged, when the answer is written
        on_request=getattr(rt.app, "finished", None))


def shutdown(rt: Runtime, server: HardenedHTTPServer | None) -> None:
    rt.stop.set()
    rt.serving.clear()
    if server is not None:
        server.shutdown(rt.config.server.shutdown_grace_seconds)
    if rt.tls_close is not None:
        rt.tls_close()
    rt.pause.drain(rt.config.server.shutdown_grace_seconds)  # a scheduler tick mid-change too
    rt.service.engine.budget.close()  # a reservation it runs still reaches the audit log
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
    if rt.cluster is not None:
        rt.cluster.close()


def open_for_backup(config: Config, secrets: Secrets
                    ) -> tuple[KeyStore, ApprovalStore, ChainedSink, Report]:
    """The stores and the audit log opened as ``serve`` opens them, every start-up check passed
    (reconciliation included): a backup is only ever taken of a consistent state. The report
    holds the log's token revocations (those a lost deny-list file no longer has)."""
    check_store_kind(config.storage.key_store, config.storage.data_dir)
    store = open_store(config, RecordMac.derive(secrets.master_key))
    approvals: ApprovalStore | None = None
    audit: ChainedSink | None = None
    try:
        approvals = open_approvals(config, secrets, store)
        audit, _ = open_checked(config, secrets, store, Sealer(secrets.master_key),
                                StartupOptions())
        report = check_key_records(store, audit)
        if report.failed:
            raise StartupRefused(f"{len(report.failed)} key record(s) fail their integrity "
                                 "check (see the audit log): not backing up a damaged store")
        settled = reconcile(store, audit, secrets.audit_hmac_key, approvals=approvals) \
            if config.storage.key_store != "memory" else Report()
    except Exception:
        for opened in (audit, approvals, store):
            if opened is not None:
                opened.close()
        raise
    return store, approvals, audit, settled


def open_restore_target(config: Config, secrets: Secrets) -> tuple[KeyStore, ApprovalStore]:
    """The configured (empty) key store and approval store a restore writes into."""
    check_store_kind(config.storage.key_store, config.storage.data_dir)
    store = open_store(config, RecordMac.derive(secrets.master_key))
    try:
        return store, open_approvals(config, secrets, store)
    except Exception:
        store.close()
        raise
