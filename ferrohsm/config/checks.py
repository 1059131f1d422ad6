"""Cross-field and range checks of a loaded configuration: each message names the setting."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re

from ..control.policy import TagPolicy
from ..domain.errors import ConfigError
from ..domain.model import TAG_RE
from . import (
    AUDIT_SINKS,
    KEY_STORES,
    UNSEAL_MODES,
    AuthSettings,
    Config,
    RateLimitSettings,
    TLSSettings,
    parse_listen,
)


def validate(config: Config) -> None:
    """Cross-field and range checks; each message names the setting and where it came from
    (the file, a flag, an environment variable: ``Config.origin_of``), since the file is often
    not where the operator set it."""
    src = config.source
    checks: list[tuple[bool, str]] = [
        (config.storage.key_store in KEY_STORES,
         f"[storage].key_store must be one of {', '.join(KEY_STORES)}"),
        (config.audit.sink in AUDIT_SINKS, f"[audit].sink must be one of {', '.join(AUDIT_SINKS)}"),
        (1 <= config.server.max_connections <= 10000, "[server].max_connections must be 1-10000"),
        (1 <= config.server.max_connections_per_ip <= 10000,
         "[server].max_connections_per_ip must be 1-10000"),
        (1 <= config.server.max_unproductive_per_ip <= config.server.max_connections_per_ip,
         "[server].max_unproductive_per_ip must be 1..[server].max_connections_per_ip"),
        (0.0 <= config.server.reserved_authenticated_share <= 0.9,
         "[server].reserved_authenticated_share must be 0-0.9"),
        (1 <= config.server.workers <= 1000, "[server].workers must be 1-1000"),
        *_process_checks(config),
        (1024 <= config.server.max_body_bytes <= 64 << 20,
         "[server].max_body_bytes must be 1 KiB-64 MiB"),
        (1 <= config.crypto.max_input_bytes <= config.server.max_body_bytes,
         "[crypto].max_input_bytes must be 1..[server].max_body_bytes"),
        (math.isfinite(config.crypto.destroy_grace_hours)
         and 0 <= config.crypto.destroy_grace_hours <= MAX_DAYS * 24,
         f"[crypto].destroy_grace_hours must be a number from 0 to {MAX_DAYS * 24}"),
        (1 <= config.crypto.max_batch_items <= 100000,
         "[crypto].max_batch_items must be 1-100000"),
        (60 <= config.auth.max_token_ttl_seconds <= 86400,
         "[auth].max_token_ttl_seconds must be 60-86400"),
        (0 <= config.auth.leeway_seconds <= 300, "[auth].leeway_seconds must be 0-300"),
        (bool(config.auth.issuer) and bool(config.auth.audience),
         "[auth].issuer and [auth].audience must not be empty"),
        (config.rate_limit.requests_per_second >= MIN_RATE,
         f"[rate_limit].requests_per_second must be >= {MIN_RATE}"),
        (config.rate_limit.burst >= 1, "[rate_limit].burst must be >= 1"),
        *_auth_checks(config.auth), *_rate_limit_checks(config.rate_limit),
        (config.audit.retention_days == 0 or config.audit.sink == "sqlite",
         '[audit].retention_days (--audit-retention-days) needs [audit].sink = "sqlite": the '
         f"{config.audit.sink} sink keeps every record"),
        (config.audit.checkpoint_interval_seconds == 0
         or MIN_CHECKPOINT_INTERVAL <= config.audit.checkpoint_interval_seconds <= 3600,
         f"[audit].checkpoint_interval_seconds must be 0 (no time checkpoints) or "
         f"{MIN_CHECKPOINT_INTERVAL}-3600"),
        (_witness_ok(config.audit.witness),
         '[audit].witness must be "", "syslog", "file:/path" or "https://host/path"'),
        (0 < config.audit.witness_timeout_seconds <= 60,
         "[audit].witness_timeout_seconds must be > 0 and <= 60"),
        (config.audit.flush in ("auto", "thread"), '[audit].flush must be "auto" or "thread"'),
        (type(config.audit.flush_spin_microseconds) is int
         and 0 <= config.audit.flush_spin_microseconds <= 100_000,
         "[audit].flush_spin_microseconds must be an integer 0-100000 (0: never poll)"),
        (not config.approvals.require_vote_signature or bool(config.approvals.approver_keys_file),
         "[approvals].require_vote_signature needs [approvals].approver_keys_file"),
        (bool(config.tls.cert) == bool(config.tls.key), "[tls].cert and [tls].key go together"),
        (not config.tls.require_client_cert or bool(config.tls.client_ca),
         "[tls].require_client_cert needs [tls].client_ca"),
        (not config.tls.client_crl or bool(config.tls.client_ca),
         "[tls].client_crl needs [tls].client_ca"),
        *_tls_checks(config.tls),
        (config.logging.level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
         "[logging].level must be DEBUG, INFO, WARNING or ERROR"),
        (_ENV_NAME_RE.fullmatch(config.storage.postgres_dsn_env) is not None,
         "[storage].postgres_dsn_env must be an environment variable name (A-Z, 0-9, _)"),
        (config.secrets.unseal in UNSEAL_MODES,
         f"[secrets].unseal must be one of {', '.join(UNSEAL_MODES)}"),
    ]
    checks += _tls_mode_checks(config.tls)
    checks = [*_path_checks(config), *_bounded_checks(config), *checks]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{config.origin_of(message)}: {message}")
    try:
        parse_listen(config.server.listen)
    except ConfigError as exc:
        raise ConfigError(f"{config.origin_of('[server].listen')}: {exc.message}") from None
    for name, tag in config.policy_tags.items():
        _check_tag_policy(src, name, tag)


def _check_tag_policy(src: str, name: str, tag: TagPolicy) -> None:
    """A tag policy that could never apply (a name no key may carry) or a value out of range
    stops start-up, naming the setting."""
    if not TAG_RE.fullmatch(name):
        raise ConfigError(f"{src}: [policy.tags.{name[:64]!a}]: a tag name is 1-63 characters "
                          "a-z, 0-9, '_', '.', '-', starting with a letter or digit (no key "
                          "could carry this one)")
    for setting, value, least, most in (
            ("approvals_required", tag.approvals_required, 0, 100),
            ("approval_ttl_seconds", tag.approval_ttl_seconds, 1, MAX_DAYS * 86400),
            ("rotation_days", tag.rotation_days, 0, MAX_DAYS),
            ("archive_after_days", tag.archive_after_days, 0, MAX_DAYS),
            ("destroy_grace_hours", tag.destroy_grace_hours or 0, 0, MAX_DAYS * 24),
            ("purge_after_days", tag.purge_after_days, 0, MAX_DAYS),
            ("max_key_age_days", tag.max_key_age_days, 0, MAX_DAYS)):
        # NaN passes no comparison and infinity overflows every date sum: both refused here,
        # as is a period past any date the scheduler could compute (100 years is "never")
        if not (math.isfinite(value) and least <= value <= most):
            raise ConfigError(f"{src}: [policy.tags.{name}].{setting} must be a number from "
                              f"{least} to {most:g}")
    if tag.approval_actions and not tag.approvals_required:
        # listed actions mean dual control: without a quorum they would silently need none
        raise ConfigError(f"{src}: [policy.tags.{name}].approval_actions lists actions that "
                          "need approval, but approvals_required is 0 (not set): set "
                          "approvals_required to the number of approvers (at least 1), or "
                          "remove approval_actions")


MAX_DAYS = 36_500  # the longest period a setting may name: 100 years, well inside datetime
# A rate of 1e-300 a second was taken: its Retry-After had 301 digits (an outside tester).
MIN_RATE = 0.001  # one request every 1,000 s: the least rate that still means a rate
# 1e-300 s was taken, and signed a checkpoint after every record
MIN_CHECKPOINT_INTERVAL = 0.1

# Number settings whose range no other check states: (least, most, what a value means). NaN and
# infinity pass no comparison here; every other float setting is at least refused those
# (_bounded_checks), which no limit, rate or period can mean.
BOUNDS: dict[tuple[str, str], tuple[float, float, str]] = {
    ("server", "handshake_timeout_seconds"): (0.1, 3600, ""),
    ("server", "header_timeout_seconds"): (0.1, 3600, ""),
    ("server", "body_timeout_seconds"): (0.1, 3600, ""),
    ("server", "idle_timeout_seconds"): (0.1, 86400, ""),
    ("server", "shutdown_grace_seconds"): (0, 3600, ""),
    ("server", "pin_cpu"): (-1, 8191, " (-1: not pinned; else the number of a core)"),
    ("crypto", "cache_max_entries"): (0, 10_000_000, ""),
    ("crypto", "cache_ttl_seconds"): (0, 86400, ""),
    ("audit", "retention_days"): (0, MAX_DAYS, " (0 keeps everything)"),
    ("audit", "segment_max_bytes"): (4096, 1 << 40, ""),
    ("approvals", "retention_days"): (0, MAX_DAYS, ""),
    ("approvals", "rekey_approvals_required"): (0, 100, ""),
    ("approvals", "rekey_approval_ttl_seconds"): (1, MAX_DAYS * 86400, ""),
    ("scheduler", "interval_seconds"): (1, 86400, ""),
    ("storage", "postgres_timeout_seconds"): (0.5, 3600, ""),
}


def _sections(config: Config) -> list[tuple[str, object]]:
    """Every settings table with its name in messages, [tls.acme] included."""
    tables = [(f.name, getattr(config, f.name)) for f in dataclasses.fields(config)
              if dataclasses.is_dataclass(getattr(config, f.name))]
    return [*tables, ("tls.acme", config.tls.acme)]


def _bounded_checks(config: Config) -> list[tuple[bool, str]]:
    """The ranges of BOUNDS, then NaN or infinity in any other number setting."""
    checks = []
    for section, table in _sections(config):
        for f in dataclasses.fields(table):  # type: ignore[arg-type]
            value = getattr(table, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            bound = BOUNDS.get((section, f.name))
            if bound is not None:
                least, most, note = bound
                checks.append((math.isfinite(value) and least <= value <= most,
                               f"[{section}].{f.name} must be a number from {_num(least)} "
                               f"to {_num(most)}{note}"))
            elif not math.isfinite(value):
                checks.append((False, f"[{section}].{f.name} must be a finite number "
                                      "(not nan or inf)"))
    return checks


# Settings naming a file or folder: "" means "none" (or a default place) for all but data_dir;
# a path of only spaces is a mistake in every one.
PATH_SETTINGS = (("secrets", "master_key_file"), ("secrets", "jwt_hs256_secret_file"),
                 ("secrets", "audit_hmac_key_file"), ("secrets", "backup_key_file"),
                 ("auth", "jwks_file"), ("auth", "deny_list_file"), ("tls", "cert"),
                 ("tls", "key"), ("tls", "client_ca"), ("tls", "client_crl"),
                 ("tls.acme", "ca_bundle"),
                 ("tls.acme", "cache_dir"), ("audit", "witness_ca_file"),
                 ("approvals", "approver_keys_file"))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _path_checks(config: Config) -> list[tuple[bool, str]]:
    """An empty data_dir would make the current directory the data directory (and chmod it
    0700); a blank path anywhere names no file."""
    tables = dict(_sections(config))
    checks = [(config.storage.data_dir.strip() != "",
               "[storage].data_dir must name a directory (it is empty or only spaces; the "
               "default is ./ferrohsm-data)")]
    for section, name in PATH_SETTINGS:
        value = getattr(tables[section], name)
        checks.append((value == "" or value.strip() != "",
                       f'[{section}].{name} is only spaces: give a path, or "" for none'))
    return checks

TLS_MODES = ("pem", "acme")
ACME_CHALLENGES = ("http-01", "tls-alpn-01")
_DNS_NAME_RE = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*"
                          r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _tls_mode_checks(t: TLSSettings) -> list[tuple[bool, str]]:
    """[tls].mode and [tls.acme]: values that are wrong in any mode (a range, a name) always,
    what ACME needs to run (domains, a listener) in ACME mode only."""
    a = t.acme
    always = [
        (t.mode in TLS_MODES, f"[tls].mode must be one of {', '.join(TLS_MODES)}"),
        (a.challenge in ACME_CHALLENGES,
         f"[tls.acme].challenge must be one of {', '.join(ACME_CHALLENGES)}"),
        (0.0 < a.renew_before_fraction < 1.0,
         "[tls.acme].renew_before_fraction must be between 0 and 1 (exclusive)"),
        (a.directory in ("letsencrypt", "letsencrypt-staging")
         or a.directory.startswith("https://"),
         "[tls.acme].directory must be letsencrypt, letsencrypt-staging or an https:// URL"),
        (not a.email or ("@" in a.email and not a.email.startswith("mailto:")),
         "[tls.acme].email must be an address like ops@example.com"),
    ]
    if t.mode != "acme":
        return always
    always.append((not t.ocsp_staple, '[tls].ocsp_staple works with [tls].mode = "pem" only: '
                   "ACME mode does not staple (leave ocsp_staple off, or serve PEM files)"))
    listen_ok = True
    if a.challenge == "http-01":
        try:
            parse_listen(a.http_listen)
        except ConfigError:
            listen_ok = False
    return [
        *always,
        (bool(a.domains), "[tls.acme].domains must name at least one domain"),
        (all(_DNS_NAME_RE.fullmatch(d) and not _is_ip(d) for d in a.domains),
         "[tls.acme].domains must be DNS names (no wildcards, IP addresses or ports)"),
        (listen_ok, f"[tls.acme].http_listen must be HOST:PORT, got {a.http_listen!r}"),
    ]


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


SHARED_STORES = ("sqlite", "postgres")  # stores several processes may share


def _process_checks(config: Config) -> list[tuple[bool, str]]:
    """``[server].processes``: N > 1 needs a store that several processes share safely."""
    n, store = config.server.processes, config.storage.key_store
    return [(1 <= n <= 256, "[server].processes (--processes) must be 1-256 or auto"),
            (n == 1 or store in SHARED_STORES,
             f"[server].processes = {n} needs [storage].key_store = "
             f"{' or '.join(repr(s) for s in SHARED_STORES)}: the {store} store belongs to one "
             "process (use --processes 1, or --key-store sqlite)"),
            (n == 1 or config.server.pin_cpu < 0,
             "[server].pin_cpu would pin every one of [server].processes to one core: use one"),
            (n == 1 or config.secrets.unseal != "shamir",
             f'[server].processes = {n} cannot start sealed ([secrets] unseal = "shamir"): '
             "each process would keep its own unseal progress behind the one port, so the "
             "shares given to one would unseal only that one; run one process per node and "
             "unseal each node at its own address")]


def _witness_ok(spec: str) -> bool:
    return (spec in ("", "syslog") or (spec.startswith("file:") and len(spec) > 5)
            or (spec.startswith("https://") and len(spec) > 8))


def _tls_checks(t: TLSSettings) -> list[tuple[bool, str]]:
    return [
        (0.05 <= t.reload_seconds <= 86400, "[tls].reload_seconds must be 0.05-86400"),
        (1 <= t.ocsp_refresh_seconds <= 7 * 86400,
         "[tls].ocsp_refresh_seconds must be 1-604800"),
        (t.ocsp_responder == "" or t.ocsp_responder.startswith(("http://", "https://")),
         '[tls].ocsp_responder must be "" (the AIA URL) or an http:// or https:// URL'),
    ]


def _auth_checks(a: AuthSettings) -> list[tuple[bool, str]]:
    roles = ("administrator", "operator", "auditor", "service")
    return [
        (0 <= a.keyset_reload_seconds <= 3600, "[auth].keyset_reload_seconds must be 0-3600"),
        (512 <= a.max_token_bytes <= 65536, "[auth].max_token_bytes must be 512-65536"),
        (0 <= a.token_cache_entries <= 10_000_000, "[auth].token_cache_entries must be 0-10000000"),
        (all(r in roles for r in a.require_bound_tokens_for_roles),
         f"[auth].require_bound_tokens_for_roles may only name {', '.join(roles)}"),
        (all(e.count(":") >= 1 for e in a.hs256_secret_envs),
         "[auth].hs256_secret_envs entries must look like 'kid:ENV_VAR'"),
        (all(e.count(":") >= 2 for e in a.public_key_files),
         "[auth].public_key_files entries must look like 'kid:ALG:path'"),
    ]


def _rate_limit_checks(r: RateLimitSettings) -> list[tuple[bool, str]]:
    checks = [(r.ip_requests_per_second >= MIN_RATE,
               f"[rate_limit].ip_requests_per_second must be >= {MIN_RATE}"),
              (r.ip_burst >= 1, "[rate_limit].ip_burst must be >= 1"),
              (100 <= r.max_tracked <= 10_000_000, "[rate_limit].max_tracked must be 100-10000000")]
    for role in ("administrator", "operator", "auditor", "service"):
        rate = getattr(r, f"{role}_requests_per_second")
        checks.append(((rate == 0 or rate >= MIN_RATE) and getattr(r, f"{role}_burst") >= 0,
                       f"[rate_limit].{role}_requests_per_second must be 0 (the general rate) "
                       f"or >= {MIN_RATE}, and its _burst >= 0"))
    for entry in r.trusted_proxies:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            checks.append((False, f"[rate_limit].trusted_proxies: not a CIDR: {entry!r:.60}"))
    return checks
