"""The FERROHSM_* environment variables the program reads, so that one it does not read (a typo,
a setting renamed) is said at start-up instead of ignored: a mistyped FERROHSM_SERVER_WORKRS
would otherwise leave the operator believing a setting is in force that is not."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from . import ENV_ALIASES, Config, setting_variables

PREFIX = "FERROHSM_"

# Read elsewhere than the settings: the secrets, the client's (CLI and SDK) connection, the
# custody commands' passwords, and the process's own markers (a restarted child, crash tests).
OTHER_VARIABLES = frozenset(PREFIX + name for name in (
    "MASTER_KEY", "JWT_HS256_SECRET", "AUDIT_HMAC_KEY", "POSTGRES_DSN",
    "URL", "TOKEN", "TOKEN_FILE", "CA_CERT", "CLIENT_CERT", "CLIENT_KEY", "TIMEOUT",
    "PROFILE", "PROFILE_FILE", "DEBUG",
    "BACKUP_KEY", "SIGNING_KEY_PASSWORD", "CUSTODIAN_KEY_PASSWORD",
    "RESTARTED_AFTER", "REKEY_KILL_AT", "LAUNCHER_SIGHUP"))


def configured_variables(config: Config) -> set[str]:
    """The variables the configuration itself names: the DSN's, and each HS256 secret's by kid
    (``[auth].hs256_secret_envs``, "kid:VAR")."""
    named = {config.storage.postgres_dsn_env}
    named |= {entry.partition(":")[2].strip() for entry in config.auth.hs256_secret_envs}
    return {name for name in named if name}


def unknown_variables(env: Mapping[str, str], configured: Iterable[str] = ()) -> list[str]:
    """One line per FERROHSM_* variable nothing reads, with the closest known name when there
    is one (``configured``: the names the configuration gives variables). Names only: a value
    may be a secret."""
    known = ({var for var, _s, _f in setting_variables()} | set(ENV_ALIASES) | OTHER_VARIABLES
             | set(configured))
    lines = []
    for name in sorted(n for n in env if n.upper().startswith(PREFIX) and n not in known):
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"environment variable {name[:80]!a} is not read by ferrohsm and has no "
                     f"effect{hint}")
    return lines
