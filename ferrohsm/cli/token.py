"""`ferrohsm token issue`: sign an HS256 token with the configured secret."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..config import load_config, read_secret_file
from ..domain.errors import ConfigError
from .quickstart import JWT_FILE


def add_parser(sub: Any) -> None:
    token = sub.add_parser("token", help="issue bearer tokens",
                           description="Issue short-lived bearer tokens (HS256).")
    tsub = token.add_subparsers(dest="token_command", metavar="SUBCOMMAND", required=True)
    issue = tsub.add_parser("issue", help="sign a token for a subject and role",
                            description="Sign a token with FERROHSM_JWT_HS256_SECRET, the "
                            "[secrets].jwt_hs256_secret_file of --config, or the secret a "
                            "quickstart kept in --data-dir.")
    issue.add_argument("--subject", required=True, help="the token's sub (the actor's name)")
    issue.add_argument("--role", required=True, choices=("administrator", "auditor", "operator", "service"), help="the role claim")
    issue.add_argument("--ttl", type=int, default=None,
                       help="lifetime in seconds (default and maximum: [auth].max_token_ttl_seconds)")
    issue.add_argument("--tag", action="append", dest="tags", default=None,
                       help="limit a service token to keys with this tag (repeatable)")
    issue.add_argument("--config", help="TOML configuration file")
    issue.add_argument("--data-dir", help="a quickstart data directory holding jwt.secret")
    issue.set_defaults(func=run)


def _secret(args: argparse.Namespace, config_file: str | None) -> bytes:
    if os.environ.get("FERROHSM_JWT_HS256_SECRET"):
        return os.environ["FERROHSM_JWT_HS256_SECRET"].encode()
    config = load_config(config_file, overrides={("storage", "data_dir"): args.data_dir})
    path = config.secrets.jwt_hs256_secret_file
    if not path:
        candidate = Path(config.storage.data_dir) / JWT_FILE
        path = str(candidate) if candidate.exists() else ""
    if not path:
        raise ConfigError("no HS256 secret: set FERROHSM_JWT_HS256_SECRET, or give --config or "
                          "--data-dir")
    return read_secret_file(path, "jwt secret file").encode()


def run(args: argparse.Namespace) -> int:
    from ..auth.authn import issue_token
    config = load_config(args.config, overrides={("storage", "data_dir"): args.data_dir})
    ttl = args.ttl or config.auth.max_token_ttl_seconds
    if not 1 <= ttl <= config.auth.max_token_ttl_seconds:
        raise ConfigError(f"--ttl must be 1..{config.auth.max_token_ttl_seconds} seconds")
    print(issue_token(_secret(args, args.config), subject=args.subject, role=args.role, ttl=ttl,
                      issuer=config.auth.issuer, audience=config.auth.audience, tags=args.tags))
    return 0
