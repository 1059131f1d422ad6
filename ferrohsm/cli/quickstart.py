"""`ferrohsm quickstart`: a working local server from nothing.

Development secrets are generated once and kept in 0600 files in the data directory (unless the
FERROHSM_* environment variables are set), so a restart on the same directory finds the same keys.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from pathlib import Path

MASTER_FILE = "master.key"
JWT_FILE = "jwt.secret"
HMAC_FILE = "audit-hmac.key"
# The environment variable that, when set, is the secret instead of the file (config/secrets.py)
ENVIRONMENT = {MASTER_FILE: "FERROHSM_MASTER_KEY", JWT_FILE: "FERROHSM_JWT_HS256_SECRET",
               HMAC_FILE: "FERROHSM_AUDIT_HMAC_KEY"}
SETTING = {MASTER_FILE: "master_key_file", JWT_FILE: "jwt_hs256_secret_file",
           HMAC_FILE: "audit_hmac_key_file"}


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def ensure_dev_secrets(data_dir: Path, environ: dict[str, str] | None = None
                       ) -> dict[str, str]:
    """Paths of the secret files, generating any that do not exist yet, for the secrets the
    environment does not give: a file made beside a secret from the environment would hold
    another secret, which a restart without the variable would silently switch to."""
    env = os.environ if environ is None else environ
    wanted: dict[str, Callable[[], str]] = {
        MASTER_FILE: lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
        JWT_FILE: lambda: secrets.token_urlsafe(48),
        HMAC_FILE: lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    paths = {}
    for name, make in wanted.items():
        if env.get(ENVIRONMENT[name]):
            continue
        path = data_dir / name
        if not path.exists():
            _write_secret(path, make())
        paths[name] = str(path)
    return paths
