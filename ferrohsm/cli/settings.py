"""Client settings for the CLI: flags, then a named profile, then FERROHSM_* environment.

Precedence, highest first (an explicitly named profile beats the environment because naming it
is the more deliberate act; the quickstart's ``export`` lines otherwise win over a default)::

    1. flags              --server --token --token-file --ca-cert --client-cert --client-key --timeout
    2. --profile NAME     a table of the profile file
    3. environment        FERROHSM_URL FERROHSM_TOKEN FERROHSM_TOKEN_FILE FERROHSM_CA_CERT
                          FERROHSM_CLIENT_CERT FERROHSM_CLIENT_KEY FERROHSM_TIMEOUT
    4. FERROHSM_PROFILE   (or the table named ``default``) of the profile file

The profile file is TOML, ``$FERROHSM_PROFILE_FILE`` or ``~/.config/ferrohsm/profiles.toml``;
relative paths in it are relative to the file. It names a ``token_file``, never a token: tokens
are secrets and configuration files get copied, shared and committed.

This module only imports argparse-level things, so building the command tree stays fast.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..client_errors import read_piped
from ..smallfile import MIB, read_at_most
from .errors import USAGE, CliExit

SMALL_LIMIT = MIB  # a token file or a profile file: a few KiB at most

PROFILE_KEYS = {"server", "ca_cert", "client_cert", "client_key", "token_file", "timeout"}
ENV = {"server": "FERROHSM_URL", "token": "FERROHSM_TOKEN", "token_file": "FERROHSM_TOKEN_FILE",
       "ca_cert": "FERROHSM_CA_CERT", "client_cert": "FERROHSM_CLIENT_CERT",
       "client_key": "FERROHSM_CLIENT_KEY", "timeout": "FERROHSM_TIMEOUT"}
FIELDS = ("server", "token", "token_file", "ca_cert", "client_cert", "client_key", "timeout")
DEFAULT_TIMEOUT = 30.0
OUTPUTS = ("table", "json", "text")
# Three base64url parts, the first a JSON object's ("eyJ"): a JWT, not a file name
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class UsageError(Exception):
    """A missing or contradictory setting: the CLI exits 2 with this one-line message."""


class NoServer(UsageError):
    """No server URL anywhere: what `version` accepts (it then shows the client alone)."""


class OutputFormat(argparse.Action):
    """``--output`` and ``--json`` name one format. The same one twice is fine; two different
    ones are refused at once (exit 2, one line) rather than the last silently winning: a wrapper
    script's ``--json`` and a user's ``--output table`` cannot both be honoured."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        value = self.const if self.nargs == 0 else values
        spelled = option_string if self.nargs == 0 else f"{option_string} {value}"
        previous = getattr(namespace, self.dest, None)
        if previous not in (None, value):
            earlier = getattr(namespace, "output_flag", None) or f"--output {previous}"
            raise CliExit(f"{earlier} and {spelled} ask for two output formats: give one",
                          USAGE)
        setattr(namespace, self.dest, value)
        namespace.output_flag = spelled


@dataclass(frozen=True)
class Settings:
    server: str
    token: str | None
    ca_cert: str | None
    client_cert: str | None
    client_key: str | None
    timeout: float
    json: bool
    correlation_id: str | None
    approval_id: str | None
    output: str = "table"  # table | json | text (--output; --json is "json")
    field: str | None = None  # --field NAME: print only this value of the JSON answer

    def __repr__(self) -> str:  # never the token
        return f"Settings(server={self.server!r}, ca_cert={self.ca_cert!r})"


def client_flags(suppress: bool = True) -> argparse.ArgumentParser:
    """The flags every client command takes, as an argparse parent.

    Defaults are SUPPRESS so the same flags work before the command (``ferrohsm --json keys
    list``) and after it (``ferrohsm keys list --json``) without one overwriting the other.
    """
    s = argparse.SUPPRESS if suppress else None
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("client settings (flags beat --profile, which beats FERROHSM_*)")
    g.add_argument("--server", metavar="URL", default=s,
                   help="server URL, https://HOST:PORT (env FERROHSM_URL); several servers of "
                   "one cluster separated by commas: idempotent calls fail over to the next")
    g.add_argument("--token", metavar="JWT", default=s,
                   help="bearer token (env FERROHSM_TOKEN; prefer the env or --token-file, "
                   "a flag shows in the process list)")
    g.add_argument("--token-file", metavar="FILE", default=s,
                   help="read the bearer token from FILE (env FERROHSM_TOKEN_FILE)")
    g.add_argument("--ca-cert", metavar="FILE", default=s,
                   help="CA certificate(s) that sign the server's certificate "
                   "(env FERROHSM_CA_CERT; default: the system trust store)")
    g.add_argument("--client-cert", metavar="FILE", default=s,
                   help="client certificate (PEM) for mutual TLS (env FERROHSM_CLIENT_CERT)")
    g.add_argument("--client-key", metavar="FILE", default=s,
                   help="private key of --client-cert (env FERROHSM_CLIENT_KEY)")
    g.add_argument("--profile", metavar="NAME", default=s,
                   help="use the [NAME] table of the profile file (env FERROHSM_PROFILE, "
                   "default [default]; file: FERROHSM_PROFILE_FILE or "
                   "~/.config/ferrohsm/profiles.toml)")
    g.add_argument("--timeout", metavar="SECONDS", type=float, default=s,
                   help=f"per-request timeout (env FERROHSM_TIMEOUT, default {DEFAULT_TIMEOUT:g})")
    g.add_argument("--output", choices=OUTPUTS, default=s, dest="output", action=OutputFormat,
                   help="table (default, for people), json (the API's JSON exactly) or text "
                   "(tab-separated raw values, a listing's items one a line, no colour: for "
                   "awk and cut)")
    g.add_argument("--json", action=OutputFormat, nargs=0, const="json", default=s, dest="output",
                   help="the API's JSON exactly (same as --output json)")
    g.add_argument("--field", metavar="NAME", default=s,
                   help="print only this member of the JSON answer (dotted for nested: "
                   "versions.0.state; on a list, the member of each item, one a line; a "
                   "string raw, null as an empty line, anything else as JSON)")
    g.add_argument("--correlation-id", metavar="ID", default=s,
                   help="sent as X-Correlation-ID and recorded in the audit log")
    return p


def profile_path(env: Mapping[str, str]) -> Path | None:
    """Where the profiles are; None for a user with no home at all (no HOME, no passwd
    entry: ``docker run --user 12345``), who then has no profile file."""
    if env.get("FERROHSM_PROFILE_FILE"):
        return Path(env["FERROHSM_PROFILE_FILE"])
    base = env.get("XDG_CONFIG_HOME")
    if not base:
        try:
            base = str(Path(env.get("HOME") or "~").expanduser() / ".config")
        except RuntimeError:  # "Could not determine home directory"
            return None
    return Path(base) / "ferrohsm" / "profiles.toml"


def load_profile(name: str | None, env: Mapping[str, str], required: bool) -> dict[str, Any]:
    """The named profile's settings; {} when the file or the (implicit) profile is absent."""
    path = profile_path(env)
    label = name or "default"
    if path is None:
        if required:
            raise UsageError(f"--profile {label}: this user has no home directory to find the "
                             "profile file in: set HOME, XDG_CONFIG_HOME or FERROHSM_PROFILE_FILE")
        return {}
    if env.get("FERROHSM_PROFILE_FILE") and _missing(path):
        # named on purpose, so meant to be read: silence sent every setting elsewhere
        raise UsageError(f"FERROHSM_PROFILE_FILE names {path}, which does not exist")
    data = _profile_file(path, name, required)
    if data is None:
        return {}
    table = data.get(label)
    if table is None:
        if required:
            raise UsageError(f"profile file {path} has no [{label}] table")
        return {}
    if not isinstance(table, dict):
        raise UsageError(f"profile file {path}: [{label}] must be a table")
    if "token" in table:
        raise UsageError(f"profile file {path}: [{label}] holds a token; put it in a 0600 file "
                         "and name that file with token_file")
    unknown = sorted(set(table) - PROFILE_KEYS)
    if unknown:
        raise UsageError(f"profile file {path}: [{label}] has unknown setting(s) "
                         f"{', '.join(unknown)}; known: {', '.join(sorted(PROFILE_KEYS))}")
    return {k: _relative(path, k, v) for k, v in table.items()}


def _missing(path: Path) -> bool:
    try:
        return not path.exists()
    except OSError:  # a folder this user may not enter: _profile_file says so
        return False


def _profile_file(path: Path, name: str | None, required: bool) -> dict[str, Any] | None:
    """The profile file's tables; None when there is none (or none this user may read: a home
    it may not enter, under runuser or sudo -E), which only a named profile refuses."""
    import tomllib
    try:
        present = path.exists()
    except PermissionError:
        if required:
            raise UsageError(f"--profile {name}: the profile file {path} cannot be read "
                             "(permission denied)") from None
        return None
    if not present:
        if required:
            raise UsageError(f"--profile {name}: no profile file at {path}")
        return None
    try:
        return tomllib.loads(read_at_most(path, SMALL_LIMIT).decode("utf-8-sig"))
    except OSError as exc:
        raise UsageError(f"profile file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"profile file {path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"profile file {path}: {exc}") from None


def _relative(path: Path, key: str, value: Any) -> Any:
    if key in {"ca_cert", "client_cert", "client_key", "token_file"} and isinstance(value, str):
        return str(path.parent / Path(value).expanduser())
    return value


def _layers(args: argparse.Namespace, env: Mapping[str, str]) -> list[dict[str, Any]]:
    """Settings sources, highest precedence first."""
    flags = {f: getattr(args, f) for f in FIELDS if getattr(args, f, None) is not None}
    for name, value in flags.items():  # `--token "$UNSET"` ran as whoever FERROHSM_TOKEN is
        if isinstance(value, str) and not value.strip():
            raise UsageError(f"--{name.replace('_', '-')} is empty: give it a value, or leave "
                             "it out to use the environment or a profile; nothing was sent")
    named = getattr(args, "profile", None)
    environment = {f: env[var] for f, var in ENV.items() if env.get(var)}
    implicit = None if named else load_profile(env.get("FERROHSM_PROFILE"), env,
                                               required=bool(env.get("FERROHSM_PROFILE")))
    layers = [flags]
    if named:
        layers.append(load_profile(named, env, required=True))
    layers.append(environment)
    if implicit:
        layers.append(implicit)
    return layers


def _pick(layers: list[dict[str, Any]], *names: str) -> tuple[str, Any]:
    """The first layer that sets any of ``names`` decides (a token and a token file in one
    layer: the token wins, but for the flags, where both is a mistake: ``_token``)."""
    for layer in layers:
        for name in names:
            if layer.get(name) not in (None, ""):
                return name, layer[name]
    return names[0], None


def resolve(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """The effective settings for one client command, or UsageError naming what is missing."""
    env = os.environ if env is None else env
    layers = _layers(args, env)
    _, server = _pick(layers, "server")
    if not server:
        raise NoServer("no server: give --server URL or set FERROHSM_URL (the https URL "
                       "the server listens on; `ferrohsm quickstart` prints it for its own)")
    check_field(args)
    return Settings(server=str(server), token=_token(layers),
                    ca_cert=_pick(layers, "ca_cert")[1], client_cert=_pick(layers, "client_cert")[1],
                    client_key=_pick(layers, "client_key")[1], timeout=_timeout(layers),
                    json=output_format(args) == "json",
                    correlation_id=getattr(args, "correlation_id", None),
                    approval_id=getattr(args, "approval_id", None),
                    output=output_format(args), field=getattr(args, "field", None))


def check_field(args: argparse.Namespace) -> None:
    """``--field ''`` names nothing (it used to be ignored silently), and ``--field`` with an
    explicit ``--output table`` or ``text`` asks for two different outputs: both refused."""
    field = getattr(args, "field", None)
    if field is None:
        return
    if not field.strip():
        raise CliExit("--field needs a member name (e.g. --field id); run without it for "
                      "the whole answer", USAGE)
    if getattr(args, "output", None) in ("table", "text"):
        raise CliExit(f"--field prints one value of the JSON answer, not --output "
                      f"{args.output}: give one of them", USAGE)


def output_format(args: argparse.Namespace) -> str:
    value = getattr(args, "output", None)
    return value if value in OUTPUTS else "table"


def output_only(args: argparse.Namespace) -> argparse.Namespace:
    """The output flags of a command that reads no other client setting (``version`` without
    a server, an offline backup): what ``output.emit`` needs of Settings."""
    return argparse.Namespace(output=output_format(args), field=getattr(args, "field", None))


def _token(layers: list[dict[str, Any]]) -> str | None:
    if layers[0].get("token") and layers[0].get("token_file"):  # both on the command line
        raise UsageError("give --token or --token-file, not both")
    kind, value = _pick(layers, "token", "token_file")
    if kind == "token" or value is None:
        return check_token(str(value).strip(), "the token (--token or FERROHSM_TOKEN)") \
            if value else None
    if JWT_SHAPE.fullmatch(str(value)):  # --token-file "$TOKEN": never echoed as a path
        raise UsageError("the token file setting (--token-file, FERROHSM_TOKEN_FILE or a "
                         "profile's token_file) holds what looks like a token, not a path: "
                         "give the token with --token or FERROHSM_TOKEN (not shown here)")
    try:
        piped = read_piped(value)  # a FIFO nobody writes to: refused after a while
        token = (read_at_most(value, SMALL_LIMIT).decode("utf-8") if piped is None
                 else piped).strip()
    except OSError as exc:
        raise UsageError(f"cannot read the token file {value}: "
                         f"{exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"the token file {value} is not UTF-8 text (byte {exc.start}): "
                         "not a token") from None
    if not token:
        raise UsageError(f"the token file {value} is empty")
    warn_if_readable(Path(value))
    return check_token(token, f"the token in {value}")


def warn_if_readable(path: Path, what: str = "the token file") -> None:
    """A secret file others may read (a token, a share, a custodian's private key) is said on
    stderr, not refused: CI runners and Kubernetes secret volumes hand files out 0644, a USB
    stick's FAT shows every file 0755; every secret file should be 0600."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o044:
        print(f"ferrohsm: warning: {what} {path} can be read by "
              f"{'other users' if mode & 0o004 else 'its group'} (mode {mode & 0o777:04o}): "
              f"chmod 600 {path}", file=sys.stderr)


def check_token(token: str, where: str) -> str:
    """A bearer token goes into one header line: surrounding whitespace (the newline of
    ``echo >``, ``$(cat …)`` or a copied line) is dropped by the caller; anything that still
    cannot be sent is named here, without showing the token."""
    if not token:
        raise UsageError(f"{where} is empty")
    if token.lower().startswith("bearer "):  # the header's scheme, copied with the token
        raise UsageError(f"{where} starts with \"Bearer \": give the token alone (the CLI "
                         "sends the Authorization header itself)")
    bad = next((c for c in token if not c.isprintable() or c.isspace() or not c.isascii()),
               None)
    if bad is not None:
        kind = ("a line break" if bad in "\r\n"  # a byte not UTF-8 (from the environment)
                else f"the byte 0x{ord(bad) - 0xDC00:02X}" if 0xDC80 <= ord(bad) <= 0xDCFF
                else f"the character U+{ord(bad):04X}")
        raise UsageError(f"{where} contains {kind} inside it: a token is one line without "
                         "spaces; check how it was copied")
    return token


def _timeout(layers: list[dict[str, Any]]) -> float:
    _, value = _pick(layers, "timeout")
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        timeout = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"timeout must be a number of seconds, got {str(value)[:20]!r}") from None
    if not 0 < timeout <= 3600:
        raise UsageError("timeout must be more than 0 and at most 3600 seconds")
    return timeout


def make_client(settings: Settings) -> Any:
    """A ``ferrohsm.client.Client`` for these settings (imported here: keeps --version fast)."""
    from ..client import ClientError
    from .answered import NotingClient
    try:
        return NotingClient(settings.server, settings.token, ca_cert=settings.ca_cert,
                      client_cert=settings.client_cert, client_key=settings.client_key,
                      timeout=settings.timeout, correlation_id=settings.correlation_id)
    except ValueError as exc:  # the --server / FERROHSM_URL / profile value
        raise UsageError(f"--server/FERROHSM_URL: {exc}") from None
    except ClientError as exc:  # an unreadable CA or client certificate: a bad setting
        raise UsageError(exc.message) from None


def command(sub: Any, name: str, func: Any, *, help: str, description: str,
            epilog: str | None = None, **extra: Any) -> argparse.ArgumentParser:
    """Add a client subcommand: the client flags, a description with examples, and the
    handler ``func(args, client, settings) -> exit code`` that main() runs."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, parents=[client_flags()], help=help, description=textwrap.fill(description, 79),
        epilog=epilog, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter, **extra)
    parser.set_defaults(client_func=func)
    return parser


def approval_flag(parser: argparse.ArgumentParser) -> None:
    """``--approval-id``: repeat a request parked for dual control once its quorum approved."""
    parser.add_argument("--approval-id", metavar="ID",
                        help="run a request that a quorum has approved (sent as X-Approval-ID)")


def unverified_claims(token: str | None) -> dict[str, Any]:
    """The claims of our own token, read (not verified: the server does that) for a hint only;
    {} when it is not a readable JWT."""
    try:
        payload = (token or "").split(".")[1]
        value = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
