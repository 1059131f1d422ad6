"""Configuration: precedence, validation messages that name the setting, secret loading."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from ferrohsm.config import load_config, load_secrets
from ferrohsm.domain.errors import ConfigError

KEY = base64.b64encode(b"k" * 32).decode()
ENV = {"FERROHSM_MASTER_KEY": KEY, "FERROHSM_JWT_HS256_SECRET": "s" * 32,
       "FERROHSM_AUDIT_HMAC_KEY": KEY}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


def test_defaults_and_example_file_load() -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    config = load_config(str(example), env={})
    assert config.storage.key_store == "filesystem"
    assert config.auth.max_token_ttl_seconds == 900


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nlisten = "127.0.0.1:1"\n[storage]\nkey_store = "sqlite"\n')
    assert load_config(path, env={}).server.listen == "127.0.0.1:1"
    env = {"FERROHSM_LISTEN": "127.0.0.1:2", "FERROHSM_STORAGE_KEY_STORE": "memory"}
    assert load_config(path, env=env).server.listen == "127.0.0.1:2"
    assert load_config(path, env=env).storage.key_store == "memory"
    flags = {("server", "listen"): "127.0.0.1:3"}
    assert load_config(path, env=env, overrides=flags).server.listen == "127.0.0.1:3"


@pytest.mark.parametrize("text,needle", [
    ('[storage]\nkey_store = "s3"\n', "[storage].key_store"),
    ('[server]\nmax_connections = "many"\n', "[server].max_connections"),
    ('[server]\nlisten = "nowhere"\n', "[server].listen"),
    ('[server]\nbogus = 1\n', "unknown setting [server].bogus"),
    ('[storage]\npostgres_dsn = "postgresql://u:pw@db/h"\n',
     "read only from the environment variable [storage].postgres_dsn_env names"),
    ('[bogus]\nx = 1\n', "unknown section [bogus]"),
    ('[tls]\nrequire_client_cert = true\n', "[tls].require_client_cert"),
    ('[auth]\nmax_token_ttl_seconds = 5\n', "[auth].max_token_ttl_seconds"),
    ('[policy.tags.pci]\napprovals_required = -1\n',
     "[policy.tags.pci].approvals_required must be a number from 0 to 100"),
    ('[policy.tags.pci]\ndestroy_grace_hours = -1\n',
     "[policy.tags.pci].destroy_grace_hours must be a number from 0"),
    ('[policy.tags."BAD TAG"]\nrotation_days = 1\n', "no key could carry this one"),
    # listed actions without a quorum would need no approval at all: refused, not fail-open
    ('[policy.tags.pci]\napproval_actions = ["unwrap", "encrypt"]\n',
     "[policy.tags.pci].approval_actions lists actions that need approval, but "
     "approvals_required is 0"),
    ('[policy.tags.t]\nrotation_days = nan\n', "[policy.tags.t].rotation_days must be a number"),
    ('[policy.tags.t]\nmax_key_age_days = inf\n', "[policy.tags.t].max_key_age_days"),
    ('[policy.tags.t]\nmax_key_age_days = 3000000\n', "[policy.tags.t].max_key_age_days"),
    ('[policy.tags.t]\ndestroy_grace_hours = nan\n', "[policy.tags.t].destroy_grace_hours"),
    ('[policy.tags.t]\napproval_ttl_seconds = 100000000000000\n', "approval_ttl_seconds"),
    ('[crypto]\ndestroy_grace_hours = inf\n', "[crypto].destroy_grace_hours"),
    ('[tls.acme]\nrenew_before_fraction = 2.0\n', "[tls.acme].renew_before_fraction"),
    ('[tls.acme]\nchallenge = "dns-01"\n', "[tls.acme].challenge"),
    ('[tls]\nmode = "acme"\nocsp_staple = true\n[tls.acme]\ndomains = ["hsm.example.com"]\n',
     "[tls].ocsp_staple works with [tls].mode = \"pem\" only"),
    ('[policy.tags.pci]\nnope = 1\n', "[policy.tags.pci].nope"),
    ('[audit]\nflush = "sometimes"\n', "[audit].flush"),
    ('[server]\npin_processes = "yes"\n', "[server].pin_processes: expected bool, got str"),
    ('[server]\nworkers = "5"\n', "[server].workers: expected int, got str"),
    ('[audit]\nretention_days = "7"\n', "[audit].retention_days: expected float, got str"),
    ('[audit]\nflush_spin_microseconds = -1\n', "[audit].flush_spin_microseconds"),
    ('[audit]\nflush_spin_microseconds = 1000000\n', "[audit].flush_spin_microseconds"),
    ("this is not toml", "not valid TOML"),
    ('[storage]\ndata_dir = ""\n', "[storage].data_dir must name a directory"),
    ('[storage]\ndata_dir = " \t"\n', "[storage].data_dir must name a directory"),
    ('[tls]\ncert = " "\nkey = " "\n', "[tls].cert is only spaces"),
    ('[secrets]\nmaster_key_file = "  "\n', "[secrets].master_key_file is only spaces"),
    ('[server]\nhandshake_timeout_seconds = -1\n',
     "[server].handshake_timeout_seconds must be a number from 0.1 to 3600"),
    ('[server]\nheader_timeout_seconds = 0\n', "[server].header_timeout_seconds must be a number"),
    ('[server]\nbody_timeout_seconds = nan\n', "[server].body_timeout_seconds must be a number"),
    ('[server]\nidle_timeout_seconds = inf\n', "[server].idle_timeout_seconds must be a number"),
    ('[server]\nshutdown_grace_seconds = -1\n',
     "[server].shutdown_grace_seconds must be a number from 0 to 3600"),
    ('[crypto]\ncache_ttl_seconds = -1\n', "[crypto].cache_ttl_seconds must be a number from 0"),
    ('[server]\npin_cpu = -5\n', "[server].pin_cpu must be a number from -1 to 8191"),
    ('[audit]\nsegment_max_bytes = 100\n', "[audit].segment_max_bytes must be a number from 4096"),
    ('[audit]\nretention_days = inf\nsink = "sqlite"\n', "[audit].retention_days must be a"),
    ('[audit]\nretention_days = 5\nsink = "postgres"\n', "the postgres sink keeps every record"),
    ('[scheduler]\ninterval_seconds = inf\n', "[scheduler].interval_seconds must be a number"),
    ('[rate_limit]\nrequests_per_second = inf\n',
     "[rate_limit].requests_per_second must be a finite number"),
    ('[tls.acme]\nrenew_before_fraction = nan\n', "[tls.acme].renew_before_fraction"),
    # a rate of 1e-300 a second answered Retry-After with 301 digits; a checkpoint interval
    # of 1e-300 s signed a checkpoint after every record (an outside tester)
    ('[rate_limit]\nrequests_per_second = 1e-300\n',
     "[rate_limit].requests_per_second must be >= 0.001"),
    ('[rate_limit]\nip_requests_per_second = 0.0001\n',
     "[rate_limit].ip_requests_per_second must be >= 0.001"),
    ('[rate_limit]\nservice_requests_per_second = 1e-9\n',
     "[rate_limit].service_requests_per_second must be 0 (the general rate) or >= 0.001"),
    ('[audit]\ncheckpoint_interval_seconds = 1e-300\n',
     "[audit].checkpoint_interval_seconds must be 0 (no time checkpoints) or 0.1-3600"),
])
def test_bad_values_name_the_setting_and_file(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert needle in info.value.message
    assert path in info.value.message
    assert "pw@" not in info.value.message  # a value is never repeated: it may be a secret


def test_every_float_setting_refuses_nan_and_infinity() -> None:
    """No number setting takes NaN or infinity, from any origin: each is named."""
    import dataclasses

    from ferrohsm.config import Config
    from ferrohsm.config.checks import _sections
    floats = [(section, f.name) for section, table in _sections(Config())
              for f in dataclasses.fields(table)  # type: ignore[arg-type]
              if isinstance(getattr(table, f.name), float)]
    assert len(floats) > 20
    for section, name in floats:
        var = f"FERROHSM_{section.replace('.', '_')}_{name}".upper()
        for bad in ("nan", "inf", "-inf"):
            with pytest.raises(ConfigError, match=rf"\[{section}\]\.{name} must be a"):
                load_config(None, env={var: bad})


def test_env_values_are_text_and_still_read_as_numbers_and_booleans() -> None:
    config = load_config(None, env={"FERROHSM_SERVER_PIN_PROCESSES": "no",
                                    "FERROHSM_SERVER_WORKERS": "5"})
    assert config.server.pin_processes is False and config.server.workers == 5


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="FERROHSM_SERVER_MAX_CONNECTIONS"):
        load_config(None, env={"FERROHSM_SERVER_MAX_CONNECTIONS": "x"})


def test_policy_tags_parse(tmp_path: Path) -> None:
    path = write(tmp_path, '[policy.tags.pci]\napprovals_required = 2\n'
                 'approval_actions = ["destroy", "unwrap"]\ndestroy_grace_hours = 0.5\n')
    tag = load_config(path, env={}).policy_tags["pci"]
    assert tag.approvals_required == 2 and tag.approval_actions == ("destroy", "unwrap")
    assert tag.destroy_grace_hours == 0.5


def test_secrets_from_env() -> None:
    secrets = load_secrets(load_config(None, env={}), env=ENV)
    assert secrets.master_key == b"k" * 32
    assert KEY not in repr(secrets) and "s" * 32 not in repr(secrets)


def test_missing_and_malformed_secrets(tmp_path: Path) -> None:
    config = load_config(None, env={})
    with pytest.raises(ConfigError, match="FERROHSM_MASTER_KEY"):
        load_secrets(config, env={k: v for k, v in ENV.items() if k != "FERROHSM_MASTER_KEY"})
    with pytest.raises(ConfigError, match="32 bytes") as info:
        load_secrets(config, env={**ENV, "FERROHSM_MASTER_KEY": base64.b64encode(b"x").decode()})
    assert "eA==" not in info.value.message  # the value itself is never echoed
    with pytest.raises(ConfigError, match="at least 32"):
        load_secrets(config, env={**ENV, "FERROHSM_JWT_HS256_SECRET": "short"})


def test_secret_files_must_be_0600(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(KEY)
    os.chmod(path, 0o644)
    config = load_config(None, env={}, overrides={("secrets", "master_key_file"): str(path)})
    env = {k: v for k, v in ENV.items() if k != "FERROHSM_MASTER_KEY"}
    with pytest.raises(ConfigError, match="chmod 600"):
        load_secrets(config, env=env)
    os.chmod(path, 0o600)
    assert load_secrets(config, env=env).master_key == b"k" * 32


def test_secret_file_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "mk"
    target.write_text(KEY + "\n")
    target.chmod(0o400)
    (tmp_path / "link").symlink_to(target)
    config = load_config(None, env={}, overrides={("secrets", "master_key_file"):
                                                  str(tmp_path / "link")})
    env = {k: v for k, v in ENV.items() if k != "FERROHSM_MASTER_KEY"}
    assert load_secrets(config, env=env).master_key == b"k" * 32


def test_secret_file_problems_name_the_path(tmp_path: Path) -> None:
    from ferrohsm.config import read_secret_file
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    big = tmp_path / "big"
    big.write_text("A" * 5000)
    big.chmod(0o600)
    cases = {str(tmp_path / "missing"): "cannot open", str(tmp_path): "not a regular file",
             str(fifo): "not a regular file", str(big): "too large"}
    for path, hint in cases.items():
        with pytest.raises(ConfigError, match=hint) as caught:
            read_secret_file(path, "[secrets].master_key_file")
        assert path in caught.value.message


def test_tls_provisioning_settings(tmp_path: Path) -> None:
    """[tls] reload_seconds and the OCSP settings: defaults, TOML and environment, ranges."""
    default = load_config(None, env={}).tls
    assert (default.reload_seconds, default.ocsp_staple, default.ocsp_responder,
            default.ocsp_refresh_seconds) == (30.0, False, "", 3600.0)
    path = tmp_path / "tls.toml"
    path.write_text('[tls]\nreload_seconds = 2\nocsp_staple = true\n'
                    'ocsp_responder = "http://ocsp.example/"\nocsp_refresh_seconds = 600\n')
    tls = load_config(str(path), env={"FERROHSM_TLS_RELOAD_SECONDS": "0.5"}).tls
    assert (tls.reload_seconds, tls.ocsp_staple, tls.ocsp_responder,
            tls.ocsp_refresh_seconds) == (0.5, True, "http://ocsp.example/", 600.0)
    for name, value, hint in (("reload_seconds", 0, "reload_seconds"),
                              ("ocsp_refresh_seconds", 0, "ocsp_refresh_seconds"),
                              ("ocsp_responder", "ldap://x", "ocsp_responder")):
        with pytest.raises(ConfigError, match=hint):
            load_config(None, env={}, overrides={("tls", name): value})


@pytest.mark.parametrize("content", ["", " \n\t\n"])
def test_an_empty_secret_file_is_said_to_be_empty(tmp_path: Path, content: str) -> None:
    """Not "missing secret(s): FERROHSM_MASTER_KEY (set the environment variable ...)": the file
    is named, and said to be empty; the same for every secret file and a systemd credential."""
    from ferrohsm.custody.keysource import backup_key
    empty = tmp_path / "empty.key"
    empty.write_text(content)
    empty.chmod(0o600)
    for setting, var in (("master_key_file", "FERROHSM_MASTER_KEY"),
                         ("jwt_hs256_secret_file", "FERROHSM_JWT_HS256_SECRET"),
                         ("audit_hmac_key_file", "FERROHSM_AUDIT_HMAC_KEY")):
        config = load_config(None, env={}, overrides={("secrets", setting): str(empty)})
        with pytest.raises(ConfigError) as info:
            load_secrets(config, env={k: v for k, v in ENV.items() if k != var})
        assert info.value.message.startswith(f"[secrets].{setting}: {empty} is empty")
        assert "missing secret" not in info.value.message
    with pytest.raises(ConfigError, match=rf"\[secrets\]\.backup_key_file: {empty} is empty"):
        backup_key(b"k" * 32, {}, str(empty))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "master_key").write_text(content)
    (creds / "master_key").chmod(0o400)
    env = {k: v for k, v in ENV.items() if k != "FERROHSM_MASTER_KEY"}
    with pytest.raises(ConfigError, match=r"credential master_key: .* is empty"):
        load_secrets(load_config(None, env={}), env={**env, "CREDENTIALS_DIRECTORY": str(creds)})


def test_settings_changed_on_reload_are_named_not_shown(tmp_path: Path) -> None:
    from ferrohsm.cli.confreload import changed_settings
    before = load_config(write(tmp_path, '[server]\nworkers = 4\n'), env={})
    after = load_config(write(tmp_path, '[server]\nworkers = 4\n[tls.acme]\nemail = "a@b.c"\n'
                              '[secrets]\nmaster_key_file = "/run/mk"\n'
                              '[policy.tags.pci]\napprovals_required = 2\n'), env={})
    assert changed_settings(before, before) == []
    assert changed_settings(before, after) == ["[secrets].master_key_file",
                                               "[tls.acme].email", "[policy.tags.pci]"]


def test_a_variable_that_is_no_number_is_quoted() -> None:
    """Environment values are always text: "expected int, got str" told nothing (tester)."""
    with pytest.raises(ConfigError, match=r"FERROHSM_SERVER_WORKERS: \[server\]\.workers: "
                                          r"expected int, got 'abc'"):
        load_config(None, env={"FERROHSM_SERVER_WORKERS": "abc"})


def test_a_refused_value_names_where_it_was_set(tmp_path: Path) -> None:
    """A range check names the variable or flag that set the value, not the config file the
    operator would then search in vain; a value from the file still names the file."""
    path = write(tmp_path, "[server]\nworkers = 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"FERROHSM_SERVER_WORKERS": "0"})
    assert info.value.message.startswith("environment FERROHSM_SERVER_WORKERS: [server].workers")
    path = write(tmp_path, "[server]\nworkers = 4\nmax_connections = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={}, overrides={("server", "workers"): 2})
    assert info.value.message.startswith(f"{path}: [server].max_connections")
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={("crypto", "max_batch_items"): 0})
    assert info.value.message.startswith("flag --max-batch-items: [crypto].max_batch_items")
    with pytest.raises(ConfigError) as info:  # a flag named otherwise than its setting
        load_config(None, env={}, overrides={("audit", "retention_days"): 30.0})
    assert info.value.message.startswith("flag --audit-retention-days: [audit].retention_days")


def test_variables_nothing_reads_are_named_with_the_closest_known_one() -> None:
    from ferrohsm.config.envnames import unknown_variables
    lines = unknown_variables({"FERROHSM_SERVER_WORKRS": "3", "FERROHSM_MASTERKEY": "s3cr3t-value",
                               "FERROHSM_NOTHING_LIKE_IT": "1", "FERROHSM_TOKEN": "t",
                               "FERROHSM_SERVER_WORKERS": "2", "FERROHSM_LISTEN": "x",
                               "MY_DSN": "pw", "HOME": "/root"}, ["MY_DSN"])
    assert lines == [
        "environment variable 'FERROHSM_MASTERKEY' is not read by ferrohsm and has no effect "
        "(did you mean FERROHSM_MASTER_KEY?)",
        "environment variable 'FERROHSM_NOTHING_LIKE_IT' is not read by ferrohsm and has no "
        "effect",
        "environment variable 'FERROHSM_SERVER_WORKRS' is not read by ferrohsm and has no effect "
        "(did you mean FERROHSM_SERVER_WORKERS?)"]
    assert not any("s3cr3t" in line for line in lines)  # names only: a value may be a secret


def test_variables_the_configuration_names_are_known(tmp_path: Path) -> None:
    """[auth].hs256_secret_envs names variables (config.example.toml's own example was called
    unused, and an operator who believed it would have broken that kid's tokens)."""
    from ferrohsm.config.envnames import configured_variables, unknown_variables
    config = load_config(write(tmp_path, '[auth]\nhs256_secret_envs = '
                                         '["ci:FERROHSM_JWT_CI_SECRET"]\n'), env={})
    names = configured_variables(config)
    assert names == {"FERROHSM_JWT_CI_SECRET", "FERROHSM_POSTGRES_DSN"}
    assert unknown_variables({"FERROHSM_JWT_CI_SECRET": "s"}, names) == []


def test_every_variable_the_package_reads_is_known() -> None:
    """The list of variables read outside the settings cannot fall behind the code: every
    FERROHSM_* name written in the package is either a setting's or on that list."""
    import re

    import ferrohsm
    from ferrohsm.config.envnames import unknown_variables
    root = Path(ferrohsm.__file__).parent
    names = {name for path in root.rglob("*.py") if path.name != "envnames.py"
             for name in re.findall(r"\bFERROHSM_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())}
    assert len(names) > 15
    assert unknown_variables(dict.fromkeys(names, "")) == []


@pytest.mark.parametrize("dsn", ["postgresql://u@127.0.0.1:abc/db", "host=h port=99999",
                                 "host=a,b port=5432,x", "host=h port=0"])
def test_a_dsn_with_a_bad_port_is_a_configuration_error(dsn: str) -> None:
    """Said at start-up as the operator's mistake (exit 2), not as an unreachable database."""
    pytest.importorskip("psycopg")
    from ferrohsm.store.pgdb import dsn_from_env
    with pytest.raises(ConfigError, match="port must be a number from 1 to 65535") as info:
        dsn_from_env("DSN", {"DSN": dsn})
    assert "abc" not in info.value.message and "99999" not in info.value.message


@pytest.mark.parametrize("dsn", ["postgresql://u:pw@127.0.0.1:5433/db", "host=h dbname=d",
                                 "host=a,b port=5432,5433", "host=a,b port=5432,"])
def test_well_formed_dsns_pass(dsn: str) -> None:
    pytest.importorskip("psycopg")
    from ferrohsm.store.pgdb import dsn_from_env
    assert dsn_from_env("DSN", {"DSN": dsn}) == dsn


def test_sighup_warns_when_a_secret_file_would_be_refused_at_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A secret file made readable by others after start-up: SIGHUP says a restart would fail
    and names the file, never its content; the running server keeps what it holds."""
    from ferrohsm.cli import confreload
    for name in ("FERROHSM_MASTER_KEY", "FERROHSM_JWT_HS256_SECRET", "FERROHSM_AUDIT_HMAC_KEY"):
        monkeypatch.delenv(name, raising=False)
    values = {"master": base64.b64encode(os.urandom(32)).decode(), "jwt": "j" * 48,
              "hmac": base64.b64encode(os.urandom(32)).decode()}
    for name, value in values.items():
        (tmp_path / name).write_text(value)
        (tmp_path / name).chmod(0o600)
    settings = {("secrets", "master_key_file"): str(tmp_path / "master"),
                ("secrets", "jwt_hs256_secret_file"): str(tmp_path / "jwt"),
                ("secrets", "audit_hmac_key_file"): str(tmp_path / "hmac")}
    config = load_config(None, env={}, overrides=settings)
    monkeypatch.setattr(confreload, "_started", confreload._Started())
    confreload.remember(config, lambda: load_config(None, env={}, overrides=settings))
    with caplog.at_level("WARNING", logger="ferrohsm"):
        confreload.check_config_file()
        assert caplog.records == []
        (tmp_path / "master").chmod(0o644)
        confreload.check_config_file()
    [record] = caplog.records
    text = record.getMessage()
    assert "the secrets no longer load" in text and str(tmp_path / "master") in text
    assert not any(value in text for value in values.values())


def test_sighup_checks_a_split_knowledge_servers_secrets_without_a_master_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Split knowledge has no master key on disk or in the environment by design: SIGHUP said
    a restart would fail for the want of one, nudging operators to put it on disk."""
    from ferrohsm.cli import confreload
    monkeypatch.delenv("FERROHSM_MASTER_KEY", raising=False)
    monkeypatch.setenv("FERROHSM_JWT_HS256_SECRET", "j" * 48)
    monkeypatch.setenv("FERROHSM_AUDIT_HMAC_KEY", base64.b64encode(os.urandom(32)).decode())
    config = load_config(write(tmp_path, '[secrets]\nunseal = "shamir"\n'), env={})
    monkeypatch.setattr(confreload, "_started", confreload._Started())
    confreload.remember(config, lambda: config)
    with caplog.at_level("WARNING", logger="ferrohsm"):
        confreload.check_config_file()
        assert caplog.records == []
        monkeypatch.setenv("FERROHSM_AUDIT_HMAC_KEY", "not base64")
        confreload.check_config_file()
    [record] = caplog.records
    assert "FERROHSM_AUDIT_HMAC_KEY must be base64" in record.getMessage()


def test_a_bad_secret_file_is_named_as_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "master.key"
    bad.write_text("c2hvcnQ=\n")
    bad.chmod(0o600)
    config = load_config(None, env={}, overrides={("secrets", "master_key_file"): str(bad)})
    env = {k: v for k, v in ENV.items() if k != "FERROHSM_MASTER_KEY"}
    with pytest.raises(ConfigError) as info:
        load_secrets(config, env=env)
    assert info.value.message == (f"[secrets].master_key_file ({bad}) must be base64 of 32 "
                                  "bytes (it decodes to 5)")


def test_the_least_rates_and_checkpoint_interval_are_taken(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[rate_limit]\nrequests_per_second = 0.001\n"
                               "service_requests_per_second = 0.001\n[audit]\n"
                               "checkpoint_interval_seconds = 0.1\n"), env={})
    assert config.rate_limit.service_requests_per_second == 0.001
    assert load_config(write(tmp_path, "[audit]\ncheckpoint_interval_seconds = 0\n"),
                       env={}).audit.checkpoint_interval_seconds == 0
