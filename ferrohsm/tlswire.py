"""Composition of the TLS side: which provider serves the certificate (PEM files with hot
reload and optional OCSP stapling, or ACME), and how its events, status and background work are
wired into the runtime (audit records, /healthz, metrics). Part of the composition root, kept
apart from app.py so each stays readable; it names no store.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .audit.chain import AuditEvent
from .audit.sinks import AuditSink
from .config import Config
from .datadir import ensure_private_dir
from .domain.errors import ConfigError
from .domain.model import SYSTEM_CONTEXT
from .telemetry.metrics import ServerMetrics
from .tls.acme.provider import AcmeOptions, AcmeProvider
from .tls.context import ReloadingContext
from .tls.stapler import OcspStapler
from .tls.status import OCSP_STATES, Notify


class Runtime(Protocol):
    """What the TLS wiring touches of app.Runtime (a protocol: app imports this module)."""

    audit: AuditSink
    metrics: ServerMetrics
    stop: threading.Event
    tls_status: Callable[[], dict[str, Any]] | None
    tls_close: Callable[[], None] | None


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
            raise ConfigError(f"{config.origin_of('[tls].ocsp_staple')}: [tls].ocsp_staple needs pyOpenSSL (install "
                              "ferrohsm[ocsp]): Python's ssl module cannot staple")
        stapler = OcspStapler(t.ocsp_responder, t.ocsp_refresh_seconds)
    return ReloadingContext(t.cert, t.key, t.client_ca or None, t.require_client_cert,
                            client_crl=t.client_crl or None, interval=t.reload_seconds,
                            stapler=stapler)


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
                         lambda: {(): expiry_of(status())})
    rt.metrics.add_gauge("ferrohsm_tls_ocsp_status", "1 for the OCSP status of the served "
                         "certificate (off, good, revoked, unknown, unavailable), 0 for the others",
                         lambda: _ocsp_gauge(status()), ("status",))
    if hasattr(provider, "close"):
        rt.tls_close = provider.close
    if hasattr(provider, "start") and not isinstance(provider, AcmeProvider):
        provider.start()  # ACME starts in start_tls, once the serving port answers challenges


def expiry_of(status: Mapping[str, Any]) -> float:
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
        require_client_cert=t.require_client_cert, reload_seconds=t.reload_seconds,
        client_crl=t.client_crl),
        shared=config.server.processes > 1)


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
