"""The HTTP exchange with an ACME server (RFC 8555 sections 6 and 7.2) on stdlib ``http.client``.

One client per directory URL. It keeps a pool of one fresh nonce (every response carries the
next one in ``Replay-Nonce``), retries a request refused with ``badNonce`` with the nonce that
refusal carried (the RFC asks clients to), and turns everything else that is not a success into
an ``AcmeError`` with the problem type, detail, status and ``Retry-After`` (in seconds), so the
caller decides how long to wait. Never logs a request body (CSRs and JWS are not secret, but a
log line per request is noise; the provider logs outcomes).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from .jws import AccountKey

BAD_NONCE = "urn:ietf:params:acme:error:badNonce"
NONCE_RETRIES = 5
USER_AGENT = "ferrohsm-acme/1"


class AcmeError(Exception):
    """A refusal or failure of the ACME server, or no answer at all (``status`` 0)."""

    def __init__(self, problem: str, detail: str, status: int = 0,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{detail} ({problem}, HTTP {status})" if status else
                         f"{detail} ({problem})")
        self.problem, self.detail, self.status = problem, detail, status
        self.retry_after = retry_after

    @property
    def short_type(self) -> str:
        """``rateLimited`` for ``urn:ietf:params:acme:error:rateLimited``."""
        return self.problem.rsplit(":", 1)[-1]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    location: str = ""
    links: list[tuple[str, str]] = field(default_factory=list)  # (rel, url)

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise AcmeError("malformedResponse", "the ACME server sent invalid JSON",
                            self.status) from None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After``: delta seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def checked(resp: Response) -> Response:
    """``resp`` when it is a success, else its problem document (RFC 7807) as an AcmeError,
    with the ``Retry-After`` a rate limit or an overloaded CA sent."""
    if resp.status < 400:
        return resp
    problem, detail = "serverInternal", f"HTTP {resp.status}"
    try:
        doc = json.loads(resp.body)
        problem = str(doc.get("type", problem))
        detail = str(doc.get("detail", detail))[:500]
    except (ValueError, AttributeError):
        pass
    raise AcmeError(problem, detail, resp.status,
                    retry_after_seconds(resp.headers.get("retry-after")))


def _links(raw: list[str]) -> list[tuple[str, str]]:
    """``Link: <url>;rel="up"`` headers (RFC 8288, the simple form ACME servers send)."""
    out = []
    for header in raw:
        for part in header.split(","):
            url, _, params = part.partition(";")
            url = url.strip().strip("<>")
            for param in params.split(";"):
                name, _, value = param.strip().partition("=")
                if name.lower() == "rel":
                    out.append((value.strip('"'), url))
    return out


MAX_REPLY = 1 << 20  # bytes: a directory, an order, a certificate chain are a few KiB


def _capped(resp: http.client.HTTPResponse, deadline: float) -> bytes:
    """The answer's body, at most MAX_REPLY bytes, by ``deadline`` (give or take one read's
    timeout): an endless or trickling answer took 2.3 GB in 5 s (an outside tester)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := resp.read1(65536):
        size += len(chunk)
        problem = ("malformedResponse", f"the ACME server's answer is larger than "
                   f"{MAX_REPLY >> 20} MiB") if size > MAX_REPLY else (
            "connection", "the ACME server's answer did not end in time") \
            if time.monotonic() > deadline else None
        if problem is not None:
            resp.close()  # the rest unread: the connection goes with it
            raise AcmeError(*problem)
        chunks.append(chunk)
    return b"".join(chunks)


class AcmeClient:
    """Requests to one ACME server; thread-safe (the provider's thread is its only user)."""

    def __init__(self, directory_url: str, ca_bundle: str = "", timeout: float = 30.0) -> None:
        self.directory_url = directory_url
        self._ssl = ssl.create_default_context(cafile=ca_bundle or None)
        self._timeout = timeout
        self._directory: dict[str, Any] | None = None
        self._nonce: str | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ transport

    def request(self, method: str, url: str, body: bytes | None = None) -> Response:
        """One HTTPS exchange; a connection failure is an AcmeError with status 0."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise AcmeError("badURL", f"ACME URLs must be https: {url[:200]}")
        conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443,
                                           timeout=self._timeout, context=self._ssl)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/jose+json"
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = _capped(resp, time.monotonic() + 2 * self._timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise AcmeError("connection", f"cannot reach the ACME server at "
                            f"{parts.hostname}:{parts.port or 443}: {exc}") from None
        finally:
            conn.close()
        out = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data,
                       resp.getheader("Location") or "", _links(resp.headers.get_all("Link") or []))
        nonce = resp.getheader("Replay-Nonce")
        if nonce:
            self._nonce = nonce
        return out

    def get(self, url: str) -> Response:
        return checked(self.request("GET", url))

    # ------------------------------------------------------------------ ACME

    def directory(self) -> dict[str, Any]:
        """The directory object, fetched once (again after a failure)."""
        if self._directory is None:
            doc = self.get(self.directory_url).json()
            if not isinstance(doc, dict) or "newOrder" not in doc or "newNonce" not in doc:
                raise AcmeError("malformedDirectory",
                                f"{self.directory_url} is not an ACME directory")
            self._directory = doc
        return self._directory

    def _fresh_nonce(self) -> str:
        nonce, self._nonce = self._nonce, None
        if nonce:
            return nonce
        checked(self.request("HEAD", self.directory()["newNonce"]))
        if not self._nonce:
            raise AcmeError("badNonce", "the ACME server sent no Replay-Nonce")
        nonce, self._nonce = self._nonce, None
        return nonce

    def post(self, url: str, payload: Any, key: AccountKey, kid: str | None) -> Response:
        """A signed POST (``payload`` None = POST-as-GET), retried on ``badNonce``."""
        with self._lock:
            for attempt in range(NONCE_RETRIES + 1):
                body = key.sign(payload, url, self._fresh_nonce(), kid)
                try:
                    return checked(self.request("POST", url, body))
                except AcmeError as exc:
                    if exc.problem != BAD_NONCE or attempt == NONCE_RETRIES:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover
