"""Settings: TOML file, then FERROHSM_* environment, then command-line flags.

Everything ends up in frozen, validated dataclasses. A bad value stops start-up with a ConfigError
naming the setting and where it came from (file, environment variable or flag). Secrets are loaded
separately (``load_secrets``) and never appear in a repr or a message.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..control.policy import TagPolicy
from ..datadir import user_name
from ..domain.errors import ConfigError
from ..smallfile import MIB, read_at_most

KEY_STORES = ("filesystem", "sqlite", "memory", "postgres")
AUDIT_SINKS = ("file", "sqlite", "postgres")
UNSEAL_MODES = ("env", "shamir")


@dataclass(frozen=True)
class ServerSettings:
    listen: str = "127.0.0.1:8443"
    max_connections: int = 64
    # Admission (api/server.py): per source address, and slots kept for authenticated peers.
    max_connections_per_ip: int = 48
    max_unproductive_per_ip: int = 32  # not yet past a handshake and a first answered request
    reserved_authenticated_share: float = 0.25
    workers: int = 16  # threads for requests the event loop does not run itself (api/server.py)
    max_body_bytes: int = 1 << 20
    handshake_timeout_seconds: float = 10.0
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    idle_timeout_seconds: float = 60.0
    shutdown_grace_seconds: float = 10.0
    pin_cpu: int = -1  # >= 0 pins the server process to that core (see bench/RESULTS.md)
    processes: int = 1  # N > 1: N processes share the port (SO_REUSEPORT) and the state
    pin_processes: bool = True  # processes = N <= cores: child i runs on the i-th allowed core


@dataclass(frozen=True)
class StorageSettings:
    key_store: str = "filesystem"
    data_dir: str = "./ferrohsm-data"
    postgres_dsn_env: str = "FERROHSM_POSTGRES_DSN"  # the variable holding the DSN (password)
    # the longest any statement may run (statement_timeout) and, one second later, the longest
    # a node waits for any answer from PostgreSQL (store/pgwatch.py)
    postgres_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class SecretSettings:
    """Paths of 0600 files holding secrets, used when the environment variable is not set."""

    master_key_file: str = ""
    jwt_hs256_secret_file: str = ""
    audit_hmac_key_file: str = ""
    # "env": the master key from FERROHSM_MASTER_KEY / master_key_file (the default);
    # "shamir": split knowledge, the server starts sealed (ferrohsm init, custody/)
    unseal: str = "env"
    backup_key_file: str = ""  # a separate backup key (else derived from the master key)


@dataclass(frozen=True)
class CryptoSettings:
    max_input_bytes: int = 64 * 1024
    cache_max_entries: int = 4096
    cache_ttl_seconds: float = 300.0
    destroy_grace_hours: float = 24.0
    max_batch_items: int = 1000  # items in one batch request (400 above); docs/api.md, Batches


@dataclass(frozen=True)
class AuthSettings:
    issuer: str = "ferrohsm"
    audience: str = "ferrohsm"
    max_token_ttl_seconds: int = 900
    leeway_seconds: int = 30
    token_cache_entries: int = 10000
    # Keysets (see ferrohsm/keysets.py). FERROHSM_JWT_HS256_SECRET verifies tokens without a kid.
    hs256_secret_envs: tuple[str, ...] = ()   # "kid:ENV_VAR": more HS256 secrets, by kid
    public_key_files: tuple[str, ...] = ()    # "kid:ALG:path.pem", ALG RS256/PS256/ES256/ES384
    jwks_file: str = ""                       # JWKS of public keys; each needs kid and alg
    keyset_reload_seconds: float = 2.0        # how often key files are checked for changes
    require_bound_tokens_for_roles: tuple[str, ...] = ()  # roles whose tokens need cnf x5t#S256
    require_jti: bool = False                 # refuse tokens that cannot be revoked singly
    deny_list_file: str = ""                  # revoked jtis; "" = <data_dir>/revoked-tokens.json
    max_token_bytes: int = 8192


@dataclass(frozen=True)
class RateLimitSettings:
    # Per actor: above what one node serves (bench/RESULTS.md: ~7,000-8,500 encrypts/s), so a
    # single service identity is never throttled below the node's capacity.
    requests_per_second: float = 10000.0
    burst: int = 20000
    # Per-role overrides of the two above; 0 keeps the default.
    administrator_requests_per_second: float = 0.0
    administrator_burst: int = 0
    operator_requests_per_second: float = 0.0
    operator_burst: int = 0
    auditor_requests_per_second: float = 0.0
    auditor_burst: int = 0
    service_requests_per_second: float = 0.0
    service_burst: int = 0
    ip_requests_per_second: float = 10.0      # per source IP: unauthenticated and failed requests
    ip_burst: int = 40
    max_tracked: int = 100000                 # buckets kept per table (LRU beyond that)
    trusted_proxies: tuple[str, ...] = ()     # CIDRs whose X-Forwarded-For is believed


@dataclass(frozen=True)
class AcmeSettings:
    """``[tls.acme]``: used when ``[tls].mode = "acme"`` (ferrohsm/tls/acme/)."""

    directory: str = "letsencrypt-staging"  # letsencrypt | letsencrypt-staging | a URL
    domains: tuple[str, ...] = ()
    email: str = ""
    challenge: str = "http-01"  # http-01 | tls-alpn-01
    http_listen: str = "0.0.0.0:80"  # the http-01 responder faces the CA
    ca_bundle: str = ""  # trust for the ACME server's HTTPS ("" = system store)
    cache_dir: str = ""  # "" = <data_dir>/acme
    renew_before_fraction: float = 0.33


@dataclass(frozen=True)
class TLSSettings:
    cert: str = ""
    key: str = ""
    client_ca: str = ""
    require_client_cert: bool = False
    client_crl: str = ""               # PEM CRLs of the client CAs (needs client_ca)
    reload_seconds: float = 30.0       # poll interval for changed cert/key files (and SIGHUP)
    ocsp_staple: bool = False          # staple an OCSP response (pyOpenSSL, the "ocsp" extra)
    ocsp_responder: str = ""           # "" = the certificate's AIA OCSP URL
    ocsp_refresh_seconds: float = 3600.0  # sooner at half the response's validity
    mode: str = "pem"  # pem | acme
    acme: AcmeSettings = field(default_factory=AcmeSettings)


@dataclass(frozen=True)
class AuditSettings:
    sink: str = "file"
    retention_days: float = 0.0  # 0 keeps everything
    segment_max_bytes: int = 64 << 20
    durable: bool = True
    checkpoint_interval_seconds: float = 5.0  # signed checkpoints while records flow; 0: off
    witness: str = ""  # "" | "file:/path" | "syslog" | "https://host/path"
    witness_ca_file: str = ""  # CA bundle for an https witness (default: the system roots)
    witness_timeout_seconds: float = 5.0
    # who fsyncs the event loop's groups (api/flusher.py): "auto" = the loop through io_uring
    # where the kernel allows it (file sink, Linux x86-64), else a thread; "thread" = always a thread
    flush: str = "auto"
    flush_spin_microseconds: int = 2000  # io_uring: poll for a busy group's fsync at most this long
    # io_uring, one process pinned to a core ([server] pin_cpu): its fsyncs run on the other cores
    fsync_elsewhere: bool = True


@dataclass(frozen=True)
class ApprovalSettings:
    retention_days: float = 30.0
    # Approvers who cannot be forged (control/voting.py; README): only RS/PS/ES-verified tokens
    # vote; every vote signed by the approver's key registered in approver_keys_file (TOML).
    require_asymmetric_tokens: bool = False
    require_vote_signature: bool = False
    approver_keys_file: str = ""
    # dual control of `POST /v1/sys/rekey` (a system action: approvals target "system");
    # 0 = an Administrator alone may rekey
    rekey_approvals_required: int = 0
    rekey_approval_ttl_seconds: int = 3600


@dataclass(frozen=True)
class SchedulerSettings:
    interval_seconds: float = 60.0


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"


@dataclass(frozen=True)
class Config:
    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    secrets: SecretSettings = field(default_factory=SecretSettings)
    crypto: CryptoSettings = field(default_factory=CryptoSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    approvals: ApprovalSettings = field(default_factory=ApprovalSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    policy_tags: Mapping[str, TagPolicy] = field(default_factory=dict)
    source: str = "<defaults>"
    # Where each setting given outside the file came from ("environment VAR", "flag --name"),
    # keyed by (section, field): a refused value is told where the operator set it.
    origins: Mapping[tuple[str, str], str] = field(default_factory=dict, compare=False)

    def origin_of(self, message: str) -> str:
        """Where the first setting a message names was set: its environment variable or flag,
        else the config file (an operator who set it elsewhere would look in the wrong place)."""
        found = _SETTING_RE.search(message)
        if found is None:
            return self.source
        return self.origins.get((found.group(1), found.group(2)), self.source)


# Flags whose names are not their setting's ("flag --retention-days" named no flag there is).
FLAGS = {("audit", "retention_days"): "audit-retention-days",
         ("approvals", "retention_days"): "approval-retention-days"}
_SETTING_RE = re.compile(r"\[([a-z_.]+)\]\.([a-z_]+)")


_SECTION_CLASSES = {name: cls for name, cls in [
    ("server", ServerSettings), ("storage", StorageSettings), ("secrets", SecretSettings),
    ("crypto", CryptoSettings), ("auth", AuthSettings), ("rate_limit", RateLimitSettings),
    ("tls", TLSSettings), ("audit", AuditSettings), ("approvals", ApprovalSettings),
    ("scheduler", SchedulerSettings), ("logging", LoggingSettings)]}

# Tables inside a section ([tls.acme]): built like a section, named "<section>.<table>" in
# messages, overridden by FERROHSM_<SECTION>_<TABLE>_<FIELD>.
_SUBSECTION_CLASSES: dict[str, tuple[str, str, type]] = {
    "tls.acme": ("tls", "acme", AcmeSettings)}

# Environment variables that override a setting: FERROHSM_<SECTION>_<FIELD> for every field, plus
# these short aliases the API documents.
ENV_ALIASES = {"FERROHSM_LISTEN": ("server", "listen"),
               "FERROHSM_DATA_DIR": ("storage", "data_dir"),
               "FERROHSM_KEY_STORE": ("storage", "key_store")}


_MISFIT = object()  # a converter's answer for a value of the wrong shape


def _to_bool(value: Any) -> object:
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    return value if isinstance(value, bool) else _MISFIT


def _to_int(value: Any) -> object:
    if isinstance(value, str):
        try:
            return int(value.strip(), 10)
        except ValueError:
            return _MISFIT
    return value if isinstance(value, int) and not isinstance(value, bool) else _MISFIT


def _to_float(value: Any) -> object:
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return _MISFIT
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return _MISFIT


def _to_str(value: Any) -> object:
    return value if isinstance(value, str) else _MISFIT


def _to_str_tuple(value: Any) -> object:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return _MISFIT


# A field's type (the class, or its name under postponed annotations) -> its converter.
_CONVERTERS: tuple[tuple[tuple[Any, ...], Callable[[Any], object]], ...] = (
    ((bool, "bool"), _to_bool), ((int, "int"), _to_int), ((float, "float", "float | None"), _to_float),
    ((str, "str"), _to_str), (("tuple[str, ...]",), _to_str_tuple))


# Origins whose values are text by nature ("environment VAR", "flag --name"): a string there
# may stand for a number or a boolean. A TOML file has types of its own, so there a quoted
# "yes" or "5" for a boolean or number setting is a type error, not a guess.
TEXT_ORIGINS = ("environment ", "flag ")


def _has_nul(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return any(isinstance(item, str) and "\0" in item for item in items)


def _coerce(value: Any, kind: Any, where: str, text: bool = True) -> Any:
    """Convert a TOML/env/flag value to the field's type, or say exactly which setting is wrong;
    a string is read as a number or boolean only when ``text`` (environment and flags). A list
    setting still takes "a, b" from a file, as it always did."""
    if _has_nul(value):  # else a ValueError from open() later: a vague exit, no setting named
        raise ConfigError(f"{where}: a NUL character (\\0) is in the value: no path, name or "
                          "address holds one")
    for kinds, convert in _CONVERTERS:
        if kind in kinds:
            textual = isinstance(value, str) and convert in (_to_bool, _to_int, _to_float)
            converted = _MISFIT if textual and not text else convert(value)
            if converted is not _MISFIT:
                return converted
            break
    got = (f"{value[:40]!r}" if isinstance(value, str) and text and where.startswith(TEXT_ORIGINS)
           else type(value).__name__)  # a variable's or flag's text: the typo is worth seeing
    raise ConfigError(f"{where}: expected {kind if isinstance(kind, str) else kind.__name__}, "
                      f"got {got}")


def _build(cls: type, values: Mapping[str, Any], origin: str, section: str) -> Any:
    known = {f.name: f.type for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        if name not in known:
            raise ConfigError(f"{origin}: unknown setting [{section}].{name}")
        kwargs[name] = _coerce(value, known[name], f"{origin}: [{section}].{name}", text=False)
    return cls(**kwargs)


def _tag_policies(raw: Any, origin: str) -> dict[str, TagPolicy]:
    if not isinstance(raw, dict) or set(raw) - {"tags"}:
        raise ConfigError(f"{origin}: [policy] may only contain [policy.tags.<name>] tables")
    tags = raw.get("tags", {})
    if not isinstance(tags, dict):
        raise ConfigError(f"{origin}: [policy.tags] must be a table of tables")
    return {name: _build(TagPolicy, body if isinstance(body, dict) else {"?": body}, origin,
                         f"policy.tags.{name}") for name, body in tags.items()}


def load_config(path: str | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[tuple[str, str], Any] | None = None) -> Config:
    """File, then environment, then flags (``overrides`` keyed by (section, field))."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    origin = "<defaults>"
    if path:
        origin = path
        raw = _read_toml(path)
    sections: dict[str, dict[str, Any]] = {}
    policy = raw.pop("policy", {})
    for name, body in raw.items():
        if name not in _SECTION_CLASSES:
            raise ConfigError(f"{origin}: unknown section [{name}]")
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: [{name}] must be a table")
        sections[name] = {k: (v, origin) for k, v in body.items()}
        _split_subsections(name, sections, origin)
    _apply_env(sections, env)
    for (section, name), value in (overrides or {}).items():
        if value is not None:
            flag = FLAGS.get((section, name), name.replace("_", "-"))
            sections.setdefault(section, {})[name] = (value, f"flag --{flag}")
    built = {name: _build_section(name, cls, sections.get(name, {}))
             for name, cls in _SECTION_CLASSES.items()}
    for sub, (parent, attr, sub_cls) in _SUBSECTION_CLASSES.items():
        built[parent] = dataclasses.replace(
            built[parent], **{attr: _build_section(sub, sub_cls, sections.get(sub, {}))})
    origins = {(section, name): where for section, values in sections.items()
               for name, (_value, where) in values.items() if where.startswith(TEXT_ORIGINS)}
    config = Config(**built, policy_tags=_tag_policies(policy, origin), source=origin,
                    origins=origins)
    from .checks import validate  # here: checks.py reads this package's names
    validate(config)
    return config


def _split_subsections(name: str, sections: dict[str, dict[str, tuple[Any, str]]],
                       origin: str) -> None:
    """Move ``[tls.acme]`` (``tls`` -> ``acme`` in TOML) out of its parent into its own entry."""
    for sub, (parent, attr, _cls) in _SUBSECTION_CLASSES.items():
        if parent != name or attr not in sections[name]:
            continue
        body, _ = sections[name].pop(attr)
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: [{sub}] must be a table")
        sections[sub] = {k: (v, origin) for k, v in body.items()}


# What a user who wrote an unknown setting most likely wants instead.
_HINTS = {"postgres_dsn": " (the DSN, which holds a password, is read only from the environment "
                          "variable [storage].postgres_dsn_env names: FERROHSM_POSTGRES_DSN by "
                          "default)",
          "dsn": " (the PostgreSQL DSN comes only from the environment: FERROHSM_POSTGRES_DSN)"}


def cores() -> int:
    """``processes = "auto"`` (file, environment or flag): one process per core."""
    return os.cpu_count() or 1


def fsync_cores(config: Config) -> frozenset[int]:
    """Where the kernel runs the audit fsyncs of a server pinned to one core
    ([audit] fsync_elsewhere; api/flusher.py): the machine's other cores. With processes = N
    each core runs a serving process, whose own work a sibling's fsyncs would interrupt
    (measured slower, bench/RESULTS.md), so they stay where they are; so do an unpinned one's."""
    s = config.server
    if not config.audit.fsync_elsewhere or s.processes != 1 or s.pin_cpu < 0:
        return frozenset()
    return frozenset(range(cores())) - {s.pin_cpu}


# Words a number setting also takes, wherever it is given: what each stands for.
NAMED_VALUES: dict[tuple[str, str], dict[str, Callable[[], object]]] = {
    ("server", "processes"): {"auto": cores}}


def _build_section(name: str, cls: type, values: dict[str, tuple[Any, str]]) -> Any:
    known = {f.name: f.type for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, (value, origin) in values.items():
        if key not in known:
            raise ConfigError(f"{origin}: unknown setting [{name}].{key}{_HINTS.get(key, '')}")
        named = NAMED_VALUES.get((name, key), {})
        if isinstance(value, str) and value.strip().lower() in named:
            value = named[value.strip().lower()]()
        elif isinstance(value, str) and named and not value.strip().isdigit():
            raise ConfigError(f"{origin}: [{name}].{key} must be a whole number or "
                              f"{' or '.join(named)}")
        kwargs[key] = _coerce(value, known[key], f"{origin}: [{name}].{key}",
                              text=origin.startswith(TEXT_ORIGINS))
    return cls(**kwargs)


def _apply_env(sections: dict[str, dict[str, tuple[Any, str]]], env: Mapping[str, str]) -> None:
    for var, (section, name) in ENV_ALIASES.items():
        if env.get(var):
            sections.setdefault(section, {})[name] = (env[var], f"environment {var}")
    for var, section, name in setting_variables():
        if var in env:
            sections.setdefault(section, {})[name] = (env[var], f"environment {var}")


def setting_variables() -> list[tuple[str, str, str]]:
    """(FERROHSM_<SECTION>_<FIELD>, section, field) for every setting but a table's own name."""
    tables = {(parent, attr) for parent, attr, _cls in _SUBSECTION_CLASSES.values()}
    every = [*_SECTION_CLASSES.items(), *((sub, c) for sub, (_p, _a, c) in
                                          _SUBSECTION_CLASSES.items())]
    return [(f"FERROHSM_{section.replace('.', '_')}_{f.name}".upper(), section, f.name)
            for section, cls in every for f in dataclasses.fields(cls)
            if (section, f.name) not in tables]


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"[server].listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


# ---- secrets ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Secrets:
    master_key: bytes = field(repr=False)
    jwt_hs256_secret: bytes = field(repr=False)
    audit_hmac_key: bytes = field(repr=False)


MAX_SECRET_FILE = 4096
CONFIG_LIMIT = 4 * MIB  # a config file, policy tables included, is a few KiB


def _read_toml(path: str) -> dict[str, Any]:
    """The config file's tables: a bounded read (``/dev/zero`` is no config file), UTF-8 with
    or without the byte-order mark some editors write."""
    try:
        text = read_at_most(path, CONFIG_LIMIT).decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def read_secret_file(path: str, setting: str) -> str:
    """A secret file's text, checked on the opened descriptor (nothing can swap it in between).

    It must be a regular file readable by its owner only (0600 or stricter), and not empty.
    Symlinks are followed, as Kubernetes mounts secrets through them; O_NONBLOCK keeps a FIFO
    from hanging.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot open {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{setting}: {path} is not a regular file")
        if info.st_mode & 0o177:
            raise ConfigError(f"{setting}: {path} has mode {stat.S_IMODE(info.st_mode):04o}; "
                              "it must be 0600 or stricter (chmod 600)")
        if info.st_uid != os.geteuid():  # (only root opens another user's 0600 file)
            raise ConfigError(f"{setting}: {path} belongs to {user_name(info.st_uid)}, not to "
                              f"{user_name(os.geteuid())} who runs this: whoever owns a secret "
                              "file chose the secret; run this as its owner (runuser -u "
                              f"{user_name(info.st_uid, bare=True)}), or chown it to "
                              f"{user_name(os.geteuid(), bare=True)} if the secret is theirs")
        data = os.read(fd, MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_FILE:
        raise ConfigError(f"{setting}: {path} is too large to be a secret file")
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{setting}: {path} must hold base64 text") from None
    if not text:  # said as such: "missing secret" would send the operator to the environment
        raise ConfigError(f"{setting}: {path} is empty{' (only white space)' if data else ''}: "
                          "it must hold the secret")
    return text


def decode_key32(text: str, setting: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{setting} must be base64 of 32 bytes (it is not base64)") from None
    if len(raw) != 32:
        raise ConfigError(f"{setting} must be base64 of 32 bytes (it decodes to {len(raw)})")
    return raw


def secret_value(env: Mapping[str, str], var: str, file_path: str, file_setting: str,
                 credential: str = "") -> str | None:
    """The environment variable, else the configured file, else the systemd credential
    ``credential`` ($CREDENTIALS_DIRECTORY/<credential>, from LoadCredential=) when present."""
    return secret_and_source(env, var, file_path, file_setting, credential)[0]


def secret_and_source(env: Mapping[str, str], var: str, file_path: str, file_setting: str,
                      credential: str = "") -> tuple[str | None, str]:
    """``secret_value``'s value (None: none given) and where it came from, for a message about
    the value: the operator fixes the variable, the file or the credential it came from."""
    if env.get(var):
        return env[var], var
    if file_path:
        return read_secret_file(file_path, file_setting), f"{file_setting} ({file_path})"
    directory = env.get("CREDENTIALS_DIRECTORY", "")
    if credential and directory and os.path.lexists(os.path.join(directory, credential)):
        where = f"credential {credential}"
        return read_secret_file(os.path.join(directory, credential), where), where
    return None, var


# The three secrets: (variable, [secrets] file setting, systemd credential).
SECRETS = (("FERROHSM_MASTER_KEY", "master_key_file", "master_key"),
           ("FERROHSM_JWT_HS256_SECRET", "jwt_hs256_secret_file", "jwt_hs256_secret"),
           ("FERROHSM_AUDIT_HMAC_KEY", "audit_hmac_key_file", "audit_hmac_key"))


def load_secrets(config: Config, env: Mapping[str, str] | None = None) -> Secrets:
    """The three secrets from the environment, else from the 0600 files the config names."""
    env = os.environ if env is None else env
    (master, master_at), (jwt, jwt_at), (hmac_key, hmac_at) = (
        secret_and_source(env, var, getattr(config.secrets, setting), f"[secrets].{setting}",
                          credential) for var, setting, credential in SECRETS)
    missing = [var for (var, _s, _c), value in zip(SECRETS, (master, jwt, hmac_key), strict=True)
               if not value]
    if missing:
        raise ConfigError(f"missing secret(s): {', '.join(missing)} (set the environment variable "
                          "or the matching [secrets] file, or a systemd credential; `ferrohsm "
                          "quickstart` generates them)")
    assert master and jwt and hmac_key  # noqa: S101  narrows a type for mypy, not a runtime check
    jwt_bytes = jwt.encode("utf-8")
    if len(jwt_bytes) < 32:
        raise ConfigError(f"{jwt_at} must be at least 32 bytes")
    return Secrets(decode_key32(master, master_at), jwt_bytes, decode_key32(hmac_key, hmac_at))
