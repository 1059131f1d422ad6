"""Secrets from systemd credentials ($CREDENTIALS_DIRECTORY, LoadCredential=): used when neither
the environment variable nor the [secrets] file is set, checked like any secret file."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest

from ferrohsm.config import load_config, load_secrets
from ferrohsm.domain.errors import ConfigError

MASTER = secrets.token_bytes(32)
HMAC = secrets.token_bytes(32)
JWT = "j" * 40


def credentials(tmp_path: Path, mode: int = 0o400) -> Path:
    folder = tmp_path / "creds"
    folder.mkdir()
    for name, text in (("master_key", base64.b64encode(MASTER).decode()),
                       ("jwt_hs256_secret", JWT),
                       ("audit_hmac_key", base64.b64encode(HMAC).decode() + "\n")):
        (folder / name).write_text(text)
        (folder / name).chmod(mode)
    return folder


def test_all_three_secrets_from_credentials(tmp_path: Path) -> None:
    folder = credentials(tmp_path)
    got = load_secrets(load_config(None, env={}), env={"CREDENTIALS_DIRECTORY": str(folder)})
    assert (got.master_key, got.jwt_hs256_secret, got.audit_hmac_key) == (
        MASTER, JWT.encode(), HMAC)


def test_the_environment_variable_wins(tmp_path: Path) -> None:
    folder = credentials(tmp_path)
    other = secrets.token_bytes(32)
    got = load_secrets(load_config(None, env={}), env={
        "CREDENTIALS_DIRECTORY": str(folder),
        "FERROHSM_MASTER_KEY": base64.b64encode(other).decode()})
    assert got.master_key == other and got.audit_hmac_key == HMAC


def test_a_readable_credential_is_refused_by_name(tmp_path: Path) -> None:
    folder = credentials(tmp_path, mode=0o644)
    with pytest.raises(ConfigError, match=r"credential master_key.*0600"):
        load_secrets(load_config(None, env={}), env={"CREDENTIALS_DIRECTORY": str(folder)})


def test_a_missing_credential_says_which(tmp_path: Path) -> None:
    folder = credentials(tmp_path)
    (folder / "jwt_hs256_secret").unlink()
    with pytest.raises(ConfigError, match=r"FERROHSM_JWT_HS256_SECRET.*systemd credential"):
        load_secrets(load_config(None, env={}), env={"CREDENTIALS_DIRECTORY": str(folder)})
