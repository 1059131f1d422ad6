"""What ACME keeps on disk, in ``cache_dir`` (0700): one account key, the account URL per
directory, and the newest certificate per directory and set of domains.

Files: ``account-key.pem`` (0600, generated once and never replaced: it IS the account; a
corrupt one stops start-up rather than silently registering a second account),
``accounts.json`` (``{directory URL: account URL}``), ``cert-<id>.pem`` (the chain) and
``cert-<id>-key.pem`` (0600), where ``<id>`` hashes the directory URL and the sorted domains so
a staging certificate is never served once the directory points at production. Every write goes
through a fresh 0600/0644 temporary file, fsync and rename: a crash leaves the old file or the
new one, never half of one. A ``.lock`` file (flock) keeps two processes sharing the directory
from registering two accounts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ...domain.errors import ConfigError
from ...smallfile import atomic_write
from ..status import CLOCK_LEEWAY
from .jws import AccountKey

ACCOUNT_KEY = "account-key.pem"
ACCOUNTS = "accounts.json"


@dataclass(frozen=True)
class CachedCert:
    """A certificate chain and its key, checked: parsable, matching, covering the domains."""

    chain_pem: bytes
    key_pem: bytes
    leaf: x509.Certificate


def leaf_of(chain_pem: bytes) -> x509.Certificate:
    """The first certificate of a PEM chain (the end-entity one, as ACME delivers it)."""
    return x509.load_pem_x509_certificates(chain_pem)[0]


def covers(cert: x509.Certificate, domains: Sequence[str]) -> bool:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    names = {n.lower() for n in sans.get_values_for_type(x509.DNSName)}
    return {d.lower() for d in domains} <= names


def _key_matches(cert: x509.Certificate, key_pem: bytes) -> bool:
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki))


class AcmeCache:
    """The cache directory of one ACME configuration."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.root = Path(directory)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
        except OSError as exc:
            raise ConfigError(f"[tls.acme].cache_dir: cannot create {self.root}: "
                              f"{exc.strerror}") from None
        self._thread_lock = threading.RLock()
        self._depth = 0

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held while the account is looked up or registered (one account per directory) and
        while a certificate is obtained (one order at a time per cache, whatever the number of
        processes sharing it). Re-entrant within this object: flock on a second descriptor of
        the same file would wait for ourselves."""
        with self._thread_lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._depth = 1
                yield
            finally:
                self._depth = 0
                os.close(fd)

    # ------------------------------------------------------------------ account

    def account_key(self) -> AccountKey:
        """The account key: read it, or generate it once (0600). A present but unreadable key
        is an error: replacing it would make a second account."""
        path = self.root / ACCOUNT_KEY
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            key = AccountKey.generate()
            atomic_write(path, key.to_pem(), 0o600)
            return key
        except OSError as exc:
            raise ConfigError(f"cannot read the ACME account key {path}: {exc.strerror}") from None
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
        try:
            return AccountKey.from_pem(pem)
        except (ValueError, TypeError):
            raise ConfigError(f"the ACME account key {path} is not a P-256 PEM key; restore it "
                              "(deleting it registers a new account)") from None

    def _accounts(self) -> dict[str, str]:
        try:
            data = json.loads((self.root / ACCOUNTS).read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def account_url(self, directory_url: str, key: AccountKey) -> str | None:
        """The account this key has at this CA. Stored by CA and key (its thumbprint): a new
        key (the old one deleted as advised, or replaced) used to sign for the old key's
        account, which the CA refuses for ever (an outside tester); now it registers anew.
        Entries of older builds (by CA only) are not used: newAccount with the same key
        answers the same account."""
        return self._accounts().get(f"{directory_url}#{key.thumbprint()}")

    def save_account_url(self, directory_url: str, account_url: str, key: AccountKey) -> None:
        accounts = self._accounts()
        accounts[f"{directory_url}#{key.thumbprint()}"] = account_url
        atomic_write(self.root / ACCOUNTS,
                     json.dumps(accounts, indent=1, sort_keys=True).encode(), 0o600)

    # ------------------------------------------------------------------ certificates

    def _cert_paths(self, directory_url: str, domains: Sequence[str]) -> tuple[Path, Path]:
        ident = hashlib.sha256(json.dumps([directory_url, sorted(d.lower() for d in domains)])
                               .encode()).hexdigest()[:16]
        return self.root / f"cert-{ident}.pem", self.root / f"cert-{ident}-key.pem"

    def save_cert(self, directory_url: str, domains: Sequence[str], chain_pem: bytes,
                  key_pem: bytes) -> None:
        """Key first, then chain: a crash in between leaves a pair that does not match, which
        ``load_cert`` refuses, never the old chain with a new key served."""
        cert_path, key_path = self._cert_paths(directory_url, domains)
        atomic_write(key_path, key_pem, 0o600)
        atomic_write(cert_path, chain_pem, 0o644)

    def cert_stamp(self, directory_url: str, domains: Sequence[str]) -> tuple[int, ...] | None:
        """Identity, time and size of the saved chain (None: none saved): a follower reads and
        checks the certificate only when this changes."""
        try:
            st = os.stat(self._cert_paths(directory_url, domains)[0])
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def load_cert(self, directory_url: str, domains: Sequence[str],
                  now: dt.datetime) -> CachedCert | None:
        """The cached certificate when usable now (parsable, matching, covering, in validity)."""
        cert_path, key_path = self._cert_paths(directory_url, domains)
        try:
            chain, key_pem = cert_path.read_bytes(), key_path.read_bytes()
            leaf = leaf_of(chain)
            if not _key_matches(leaf, key_pem) or not covers(leaf, domains):
                return None
        except (OSError, ValueError, TypeError, IndexError):
            return None
        if not leaf.not_valid_before_utc - CLOCK_LEEWAY <= now < leaf.not_valid_after_utc:
            return None
        return CachedCert(chain, key_pem, leaf)

    def write_temp_pair(self, chain_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
        """A 0600 pair of files for ``SSLContext.load_cert_chain`` (which reads only files);
        the caller deletes them at once."""
        tag = secrets.token_hex(8)
        cert_path, key_path = self.root / f".ctx-{tag}.pem", self.root / f".ctx-{tag}-key.pem"
        atomic_write(key_path, key_pem, 0o600)
        atomic_write(cert_path, chain_pem, 0o600)
        return cert_path, key_path
