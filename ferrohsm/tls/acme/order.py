"""One ACME issuance (RFC 8555 section 7.4): account, order, authorizations, challenges,
finalize with a fresh key's CSR for ``domains``, download the chain.

Synchronous and bounded: every poll honours the server's ``Retry-After`` (capped at 5 s) and the
whole issuance gives up after ``ISSUE_TIMEOUT`` seconds, raising AcmeError. Challenge answers
are published through a ``Responder`` and always withdrawn afterwards, whatever happened.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .cache import AcmeCache, covers, leaf_of
from .client import AcmeClient, AcmeError, Response, retry_after_seconds
from .jws import AccountKey, b64url

ACCOUNT_GONE = "urn:ietf:params:acme:error:accountDoesNotExist"
ISSUE_TIMEOUT = 180.0
POLL_FIRST, POLL_MAX = 0.2, 5.0


class Responder(Protocol):
    """Publishes challenge answers where the CA will look for them."""

    challenge_type: str

    def add(self, domain: str, token: str, key_authorization: str) -> None: ...

    def remove(self, domain: str, token: str) -> None: ...


@dataclass(frozen=True)
class Account:
    key: AccountKey
    url: str


@dataclass(frozen=True)
class Issued:
    chain_pem: bytes
    key_pem: bytes
    order_url: str


def ensure_account(client: AcmeClient, cache: AcmeCache, email: str, *,
                   forget: bool = False) -> Account:
    """The account of this cache directory at this CA: the stored URL, else ``newAccount``
    with the one account key (the CA answers an existing key with its existing account, so
    even a lost ``accounts.json`` never makes a second one). ``forget`` re-registers after the
    CA said the account does not exist (a test CA that was restarted)."""
    with cache.locked():
        key = cache.account_key()
        url = None if forget else cache.account_url(client.directory_url, key)
        if url:
            return Account(key, url)
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if email:
            payload["contact"] = [f"mailto:{email}"]
        resp = client.post(client.directory()["newAccount"], payload, key, None)
        if urllib.parse.urlsplit(resp.location).scheme != "https":  # or none at all
            raise AcmeError("malformedResponse", "newAccount answered without an https "
                            "account URL (Location)")
        cache.save_account_url(client.directory_url, resp.location, key)
        return Account(key, resp.location)


def make_csr(domains: Sequence[str]) -> tuple[bytes, bytes]:
    """A fresh P-256 key (PKCS#8 PEM) and the DER CSR naming every domain as a SAN."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.DER)


class Issuance:
    """The steps of one order, sharing the client, the account and a deadline."""

    def __init__(self, client: AcmeClient, account: Account, responder: Responder,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client, self.account, self.responder = client, account, responder
        self._clock, self._sleep = clock, sleep
        self._deadline = clock() + ISSUE_TIMEOUT

    def post(self, url: str, payload: Any) -> Response:
        return self.client.post(url, payload, self.account.key, self.account.url)

    def run(self, domains: Sequence[str], replaces: str = "") -> Issued:
        payload: dict[str, Any] = {"identifiers": [{"type": "dns", "value": d} for d in domains]}
        if replaces:
            payload["replaces"] = replaces  # RFC 9773 section 5
        resp = self.post(self.client.directory()["newOrder"], payload)
        order_url, order = resp.location, resp.json()
        published: list[tuple[str, str]] = []
        try:
            pending = [u for u in order.get("authorizations", []) if self._start(u, published)]
            for url in pending:
                self._await_authorization(url)
        finally:
            for domain, token in published:
                self.responder.remove(domain, token)
        key_pem, csr = make_csr(domains)
        order = self.post(order["finalize"], {"csr": b64url(csr)}).json()
        order = self._await(order_url, order, ("processing", "pending", "ready"), "order")
        chain = self.post(order["certificate"], None).body
        leaf = leaf_of(chain)
        if not covers(leaf, domains):
            raise AcmeError("badCertificate", "the CA issued a certificate that does not "
                            "cover every configured domain")
        return Issued(chain, key_pem, order_url)

    def _start(self, authz_url: str, published: list[tuple[str, str]]) -> bool:
        """Publish the answer and tell the CA to look; False when already valid."""
        authz = self.post(authz_url, None).json()
        if authz.get("status") == "valid":
            return False
        domain = authz["identifier"]["value"]
        wanted = self.responder.challenge_type
        challenge = next((c for c in authz.get("challenges", []) if c.get("type") == wanted),
                         None)
        if challenge is None:
            raise AcmeError("unsupportedChallenge", f"the CA offers no {wanted} challenge "
                            f"for {domain}")
        token = str(challenge["token"])
        self.responder.add(domain, token, self.account.key.key_authorization(token))
        published.append((domain, token))
        self.post(challenge["url"], {})
        return True

    def _await_authorization(self, url: str) -> None:
        self._await(url, None, ("pending", "processing"), "authorization")

    def _await(self, url: str, doc: dict[str, Any] | None, waiting: tuple[str, ...],
               what: str) -> dict[str, Any]:
        """Poll ``url`` (POST-as-GET) while its status is one of ``waiting``."""
        delay = POLL_FIRST
        while True:
            if doc is None or doc.get("status") in waiting:
                if self._clock() > self._deadline:
                    raise AcmeError("timeout", f"the {what} at {url} did not complete in "
                                    f"{ISSUE_TIMEOUT:.0f} s")
                if doc is not None:
                    self._sleep(delay)
                resp = self.post(url, None)
                doc = resp.json()
                hint = retry_after_seconds(resp.headers.get("retry-after")) or 0.0
                delay = min(max(delay * 2, hint), POLL_MAX)
                continue
            if doc.get("status") != "valid":
                raise AcmeError(_problem(doc), f"the {what} is {doc.get('status')}: "
                                f"{_detail(doc)}")
            return doc


def _failed_challenge(doc: dict[str, Any]) -> dict[str, Any]:
    for challenge in doc.get("challenges", []):
        if isinstance(challenge, dict) and challenge.get("error"):
            return dict(challenge["error"])
    return dict(doc.get("error") or {})


def _problem(doc: dict[str, Any]) -> str:
    return str(_failed_challenge(doc).get("type", "urn:ietf:params:acme:error:unauthorized"))


def _detail(doc: dict[str, Any]) -> str:
    return str(_failed_challenge(doc).get("detail", "no detail given"))[:300]
