"""`ferrohsm token issue`: sign an HS256 token with the configured secret; `ferrohsm token
revoke JTI`: deny-list a token on the server (Administrators)."""

from __future__ import annotations

import argparse
import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..audit.toolout import OutputChoiceError, add_output_flags, output_format, render
from ..config import Config, load_config, read_secret_file, secret_value
from ..domain.errors import ConfigError
from . import output
from .errors import USAGE, CliExit
from .quickstart import JWT_FILE
from .settings import JWT_SHAPE, Settings, UsageError, command


def add_parser(sub: Any) -> None:
    token = sub.add_parser("token", help="issue and revoke bearer tokens",
                           description="Issue short-lived bearer tokens (HS256) and revoke "
                           "them by their jti.",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="examples:\n  ferrohsm token issue --data-dir ferrohsm-data "
                           "--subject ci --role service\n  ferrohsm token revoke JTI")
    tsub = token.add_subparsers(dest="token_command", metavar="SUBCOMMAND", required=True)
    issue = tsub.add_parser("issue", help="sign a token for a subject and role",
                            description="Sign a token with FERROHSM_JWT_HS256_SECRET, the "
                            "[secrets].jwt_hs256_secret_file of --config, or the secret a "
                            "quickstart kept in --data-dir.",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="examples:\n"
                            "  ferrohsm token issue --data-dir ferrohsm-data --subject ci "
                            "--role service --tag release --ttl 600\n"
                            "  export FERROHSM_TOKEN=$(ferrohsm token issue --config "
                            "ferrohsm.toml --subject alice --role operator)")
    issue.add_argument("--subject", required=True, help="the token's sub (the actor's name)")
    issue.add_argument("--role", required=True, choices=("administrator", "auditor", "operator", "service"), help="the role claim")
    issue.add_argument("--ttl", type=int, default=None, metavar="SECONDS",
                       help="lifetime in seconds (default and maximum: [auth].max_token_ttl_seconds)")
    issue.add_argument("--tag", action="append", dest="tags", default=None, metavar="TAG",
                       help="limit a service token to keys with this tag (repeatable)")
    issue.add_argument("--config", metavar="FILE", help="TOML configuration file")
    issue.add_argument("--data-dir", metavar="DIR", help="a quickstart data directory holding jwt.secret")
    add_output_flags(issue)
    issue.epilog = (issue.epilog or "") + ("\n  ferrohsm token issue --data-dir ferrohsm-data "
                                           "--subject ci --role service --field jti\n"
                                           "(default output: the token alone; --json: token, "
                                           "jti, subject, role, tags, issued_at, expires_at)")
    issue.set_defaults(func=run)
    p = command(tsub, "revoke", revoke, help="deny-list a token by its jti (Administrators)",
                description="Revoke the token whose jti claim is JTI: the server refuses it "
                "from now on, until it would have expired (`ferrohsm whoami` shows a token's "
                "jti).",
                epilog="example:\n  ferrohsm token revoke 6f1c2d4e-leaked-ci-token")
    p.add_argument("jti", metavar="JTI", help="the jti claim of the token to revoke")
    p.add_argument("--exp", type=int, metavar="UNIX_TIME",
                   help="the token's exp claim, when known (the entry is kept at least that "
                   "long)")


def revoke(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    if JWT_SHAPE.fullmatch(args.jti):  # the whole token pasted: it is not shown back
        raise UsageError("JTI is a whole token, not its jti: `FERROHSM_TOKEN=<that token> "
                         "ferrohsm whoami --field jti` shows the jti to give (nothing was sent)")
    result = client.revoke_token(args.jti, args.exp)
    output.emit(settings, result, lambda: f"Revoked token {result.get('jti')}: refused until "
                f"{output.when(result.get('until'))}.")
    return 0


def _secret(config: Config) -> bytes:
    """Where the server reads it (the environment, the config's file, the systemd credential
    of the unit), else the file a quickstart left in the data directory."""
    value = secret_value(os.environ, "FERROHSM_JWT_HS256_SECRET",
                         config.secrets.jwt_hs256_secret_file, "[secrets].jwt_hs256_secret_file",
                         "jwt_hs256_secret")
    if value:
        return value.encode()
    candidate = Path(config.storage.data_dir) / JWT_FILE
    if candidate.exists():
        return read_secret_file(str(candidate), "jwt secret file").encode()
    raise ConfigError("no HS256 secret: set FERROHSM_JWT_HS256_SECRET, or name "
                      "[secrets].jwt_hs256_secret_file in --config, or run where the unit's "
                      "credential jwt_hs256_secret is ($CREDENTIALS_DIRECTORY), or give the "
                      "--data-dir of a quickstart")


def _check_claims(args: argparse.Namespace) -> None:
    """Refuse what the server would refuse in every request (auth/authn.py's own rules), so no
    token is minted that can never be used."""
    from ..auth.authn import MAX_SUBJECT_CHARS, MAX_TAGS, valid_subject, valid_tags
    if not valid_subject(args.subject):
        raise CliExit(f"--subject must be 1..{MAX_SUBJECT_CHARS} printable characters (no line "
                      "breaks or control characters), and not system or anonymous (the "
                      "server's own actors): the server refuses any other sub claim", USAGE)
    if args.tags is not None and args.role != "service":
        article = "an" if args.role[0] in "aeiou" else "a"
        raise CliExit(f"--tag scopes service tokens only: {article} {args.role} token with "
                      "tags would still reach every key; issue a --role service token to limit it to "
                      "tagged keys", USAGE)
    if args.tags is not None and not valid_tags(args.tags):
        raise CliExit(f"--tag must be at most {MAX_TAGS} tags, each 1..63 characters of a-z, "
                      "0-9, '_', '.', '-' starting with a letter or digit: the server refuses "
                      "any other tags claim", USAGE)


def run(args: argparse.Namespace) -> int:
    from ..auth.authn import issue_token
    try:
        output_format(args)
    except OutputChoiceError as exc:
        raise CliExit(str(exc), USAGE) from None
    _check_claims(args)
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise ConfigError(f"--data-dir {args.data_dir}: the data directory does not exist")
    config = load_config(args.config, overrides={("storage", "data_dir"): args.data_dir})
    ttl = config.auth.max_token_ttl_seconds if args.ttl is None else args.ttl
    if not 1 <= ttl <= config.auth.max_token_ttl_seconds:
        raise ConfigError(f"--ttl must be 1..{config.auth.max_token_ttl_seconds} seconds")
    token = issue_token(_secret(config), subject=args.subject, role=args.role, ttl=ttl,
                        issuer=config.auth.issuer, audience=config.auth.audience, tags=args.tags)
    document = describe(token)
    try:
        print(render(args, document, lambda: token))
    except OutputChoiceError as exc:  # a --field the answer lacks: names only, no value
        raise CliExit(str(exc), USAGE) from None
    return 0


def describe(token: str) -> dict[str, Any]:
    """The token and what `token revoke` and a reader need of it: its jti and expiry."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return {"token": token, "jti": claims.get("jti"), "subject": claims.get("sub"),
            "role": claims.get("role"), "tags": claims.get("tags"),
            "issued_at": _iso(claims.get("iat")), "expires_at": _iso(claims.get("exp")),
            "exp": claims.get("exp")}


def _iso(seconds: Any) -> str | None:
    if not isinstance(seconds, int):
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
