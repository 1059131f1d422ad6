"""FerroHSM Python SDK: a small HTTPS client on the standard library only.

The CLI uses it, and it is meant to be used directly by scripts and pipelines::

    from ferrohsm.client import Client
    with Client.from_env() as hsm:                  # FERROHSM_URL, FERROHSM_TOKEN, FERROHSM_CA_CERT
        sig = hsm.sign("release-signing", message=data, correlation_id="build-1234")
        der = sig["signature"]                      # bytes; DER, verifiable with openssl

Theory of operation
-------------------
* Transport: ``http.client`` over TLS 1.3 only, the server verified (hostname included) against
  ``ca_cert`` or the system store, optionally with a client certificate (mutual TLS). One
  keep-alive connection is reused; one the server closed while idle is replaced before use, so
  no request is ever sent into a dead socket.
* Retries: only idempotent calls, on connection failures and 429/502/503/504: GET/HEAD/OPTIONS,
  and the cryptographic operations (encrypt, decrypt, sign, verify, wrap, unwrap: they change no
  state, so running one twice costs only a second audit record), unless they carry an approval
  id (an approved request runs exactly once). Key creation, rotation, every other state change
  and approvals are never repeated: such a POST may have run when its connection broke, and
  repeating it is the caller's decision, not ours (``idempotent=True`` on ``request``). At most
  ``retries`` (3) retries, each after ``Retry-After`` when the server sent one (else an
  exponential backoff from 0.2 s), plus up to 20% jitter so clients throttled together do not
  return together; when the next wait would take the total over ``max_retry_wait`` (30 s) the
  error is raised instead of sleeping.
* Failover: ``url`` (and ``FERROHSM_URL``) may name several servers of one cluster, separated by
  commas. A call goes to the current one; when it cannot be reached, the same attempt moves on to
  the next (no sleep) until each was tried once, and the one that answers becomes current. Any
  call moves on when the connection could not even be opened (nothing was sent); once a request
  was sent, only a call that may be retried (above) is sent again elsewhere. An HTTP answer,
  whatever its status, never moves a call to another server.
* Errors: an ``ApiError`` subclass chosen by the API ``code`` (never by message text), carrying
  ``code``, ``message``, ``status`` and ``request_id``; ``approval_required`` (202) raises
  ``ApprovalRequired`` with the parked approval; ``TransportError`` carries the request id sent.
* Binary values are ``bytes`` in and out (base64 only on the wire). No token, plaintext or key
  material is ever logged or put into an exception message.

Stdlib only; its one ferrohsm import is client_errors.py (errors, the TLS context): a pipeline
may copy the two files.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Self
from urllib.parse import quote, urlencode, urlsplit

from .client_errors import (
    ApiError,
    ApprovalRequired,
    BadRequest,
    ClientError,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    TransportError,
    Unauthenticated,
    check_url,
    checked_timeout,
    checked_token,
    client_cert_refused,
    describe,
    dropped,
    early_answer,
    env_settings,
    error_class,
    none_answered,
    not_repeated,
    retry_after,
    tls_context,
    unverified,
)

__all__ = ["ApiError", "ApprovalRequired", "BadRequest", "Client", "ClientError", "Conflict",
           "Forbidden", "Gone", "NotFound", "PayloadTooLarge", "RateLimited", "ServerError",
           "TransportError", "Unauthenticated"]

USER_AGENT = "ferrohsm-client/1"
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_WAIT = 30.0  # default cap on the total time one call sleeps between its attempts
CONNECT_TIMEOUT = 5.0  # connect + handshake, while another server is left to try
REPEATABLE = frozenset({"encrypt", "decrypt", "sign", "verify", "wrap", "unwrap", "data-key"})
_JITTER = random.SystemRandom()


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _key_path(key: str, suffix: str = "") -> str:
    """``/v1/keys/{key}``: names are percent-encoded so '/' or '?' in a name cannot re-route."""
    return f"/v1/keys/{quote(key, safe='')}{suffix}"


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class Client:
    """One FerroHSM server. Thread-compatible, not thread-safe: use one Client per thread."""

    def __init__(self, url: str, token: str | None = None, *, ca_cert: str | None = None,
                 client_cert: str | None = None, client_key: str | None = None,
                 timeout: float = 30.0, retries: int = 3, correlation_id: str | None = None,
                 context: ssl.SSLContext | None = None,
                 max_retry_wait: float = MAX_RETRY_WAIT) -> None:
        self.urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        if not self.urls:
            raise ValueError("server URL must be https://HOST[:PORT], got an empty list")
        for one in self.urls:
            check_url(one)
        self._use(0)
        self._token, self.correlation_id = checked_token(token), correlation_id
        self.timeout, self.retries = checked_timeout(timeout), max(0, retries)
        self.max_retry_wait = max(0.0, max_retry_wait)
        self._context = context or tls_context(ca_cert, client_cert, client_key)
        self._conn: http.client.HTTPSConnection | None = None
        # URL -> why its last attempt got no answer (a status check names the nodes skipped)
        self.unreachable: dict[str, str] = {}
        self._failed_now: set[str] = set()  # this attempt's failures (_any_server, _open)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> Client:
        """A client from FERROHSM_URL, FERROHSM_TOKEN (or FERROHSM_TOKEN_FILE),
        FERROHSM_CA_CERT, FERROHSM_CLIENT_CERT, FERROHSM_CLIENT_KEY and FERROHSM_TIMEOUT
        (keyword arguments win)."""
        env = os.environ if env is None else env
        url = kwargs.pop("url", None) or env.get("FERROHSM_URL")
        if not url:
            raise ValueError("FERROHSM_URL is not set")
        for name, value in env_settings(env).items():
            kwargs.setdefault(name, value)
        return cls(url, **kwargs)

    def _use(self, index: int) -> None:
        """Make ``self.urls[index]`` the server calls go to."""
        self._current = index % len(self.urls)
        self.url = self.urls[self._current]
        parts = urlsplit(self.url)
        self._host, self._port = parts.hostname or "", parts.port or 443
        self._prefix = parts.path.rstrip("/")

    def __repr__(self) -> str:  # never the token
        return f"Client({self.url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- transport --------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *,
                query: Mapping[str, Any] | None = None, correlation_id: str | None = None,
                approval_id: str | None = None, idempotent: bool | None = None) -> Any:
        """JSON in, JSON out, ``ApiError`` on an error answer; only ``idempotent`` calls
        (default: by HTTP method, and never with an approval id) are retried."""
        target = path
        if query:
            target += "?" + urlencode(_drop_none(query))
        payload = None if body is None else json.dumps(body).encode("utf-8")
        headers = self._headers(payload is not None, correlation_id, approval_id)
        # An approved request runs exactly once, a GET too (keys public-key --approval-id).
        retry = (method in IDEMPOTENT and not approval_id) if idempotent is None else idempotent
        attempts = 1 + (self.retries if retry else 0)
        waited = 0.0
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                status, resp_headers, data = self._any_server(method, target, payload, headers,
                                                              retry)
            except TransportError as exc:
                wait = None if last or not exc.retryable else self._backoff(attempt, None, waited)
                if wait is None:
                    raise
                waited += self._sleep(wait)
                continue
            if status in RETRY_STATUSES and not last:
                hint = retry_after(resp_headers.get("retry-after"))
                wait = self._backoff(attempt, hint, waited)
                if wait is not None:
                    waited += self._sleep(wait)
                    continue
            return self._result(status, resp_headers, data, headers["X-Request-ID"])
        raise AssertionError("unreachable")  # pragma: no cover

    def _any_server(self, method: str, path: str, payload: bytes | None,
                    headers: dict[str, str], retry: bool) -> tuple[int, dict[str, str], bytes]:
        """One attempt: the current server, then each other one while it cannot be reached
        (for a request already sent, only when ``retry``)."""
        self._failed_now = set()
        for tried in range(len(self.urls)):
            url = self.url
            try:
                answer = self._exchange(method, self._prefix + path, payload, headers)
            except TransportError as exc:
                self.unreachable[self.url] = exc.message
                self._failed_now.add(self.url)
                if exc.retryable and exc.sent and not retry:
                    exc = not_repeated(exc, url, len(self.urls) > 1,
                                       headers.get("X-Approval-ID"))
                if len(self.urls) == 1 or not (exc.retryable or exc.elsewhere):
                    raise exc from None
                self._use(self._current + 1)  # the next call starts on a server that may answer
                if exc.sent and not retry:
                    raise exc from None
                if tried == len(self.urls) - 1:
                    raise none_answered(self.urls, self.unreachable, exc) from None
            else:
                self.unreachable.pop(self.url, None)
                return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int, retry_after: float | None, waited: float) -> float | None:
        """Seconds to sleep before the next attempt (``Retry-After`` or an exponential backoff,
        plus jitter), or None when that would take the call's total over ``max_retry_wait``."""
        base = retry_after if retry_after is not None else 0.2 * 2 ** attempt
        wait = base + _JITTER.uniform(0.0, 0.2 * base + 0.01)
        return None if waited + wait > self.max_retry_wait else wait

    @staticmethod
    def _sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def _headers(self, has_body: bool, correlation_id: str | None,
                 approval_id: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT,
                   "X-Request-ID": str(uuid.uuid4())}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if has_body:
            headers["Content-Type"] = "application/json"
        if correlation_id or self.correlation_id:
            headers["X-Correlation-ID"] = correlation_id or self.correlation_id or ""
        if approval_id:
            headers["X-Approval-ID"] = approval_id
        return headers

    def _connection(self) -> http.client.HTTPSConnection:
        """The kept-alive connection, unless the server closed it while it sat idle."""
        conn = self._conn
        if conn is not None and conn.sock is not None and dropped(conn.sock):
            conn.close()
            conn = None
        if conn is None:
            conn = http.client.HTTPSConnection(self._host, self._port, context=self._context,
                                               timeout=self.timeout)
            self._conn = conn
        return conn

    def _exchange(self, method: str, target: str, payload: bytes | None,
                  headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        request_id = headers["X-Request-ID"]
        conn = self._connection()
        if conn.sock is None:
            self._open(conn, request_id)
        try:
            try:
                conn.request(method, target, body=payload, headers=headers)
            except OSError:
                # the server may have answered (a 413 for a body over its limit) and closed
                # while the body was still going out: that answer, not "cannot reach"
                early = early_answer(conn)
                if early is None:
                    raise
                self.close()
                return early
            resp = conn.getresponse()
            data = resp.read()
        except ssl.SSLCertVerificationError as exc:
            raise self._unverified(exc, request_id) from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            error = client_cert_refused(exc, self.url, request_id) or TransportError(
                f"cannot reach {self.url}: {describe(exc)}", request_id=request_id)
            error.reason = error.reason or describe(exc)
            raise error from None
        if resp.will_close:
            self.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def _open(self, conn: http.client.HTTPSConnection, request_id: str) -> None:
        """Connect (TCP and TLS) before sending anything: a failure here means the request
        never left, so any call may go to another server (``TransportError.sent`` False)."""
        try:
            left = set(self.urls) - self._failed_now - {self.url}  # a hung node costs seconds
            conn.timeout = min(self.timeout, CONNECT_TIMEOUT) if left else self.timeout
            conn.connect()
            conn.sock.settimeout(self.timeout)
            conn.timeout = self.timeout
        except ssl.SSLCertVerificationError as exc:
            error = self._unverified(exc, request_id)
            error.sent = False
            raise error from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            error = TransportError(f"cannot reach {self.url}: {describe(exc)}",
                                   request_id=request_id)
            error.sent = False
            raise error from None

    def _unverified(self, exc: ssl.SSLCertVerificationError, request_id: str | None = None
                    ) -> TransportError:
        """A certificate we cannot verify is not a server we cannot reach: say so, and do not
        try the next server (a wrong CA file, or someone in between)."""
        self.close()
        return unverified(exc, self.url, (self._host, self._port), self.timeout, self._context,
                          request_id)

    def _result(self, status: int, headers: dict[str, str], data: bytes, sent_id: str) -> Any:
        request_id = headers.get("x-request-id") or sent_id
        parsed: Any = None
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            pass  # an error status says what it can without a body; a 2xx is refused below
        if data and status < 300 and not isinstance(parsed, dict):  # every answer is an object
            raise TransportError(f"server sent an answer that is not a JSON object (HTTP {status}):"
                                 " a proxy in the way, or not a FerroHSM server", request_id=request_id)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if 200 <= status < 300 and not isinstance(error, dict):
            return parsed
        if status == 304:
            return None
        if not isinstance(error, dict):
            raise error_class("", status)(f"HTTP {status} without an error body",
                                           status=status, request_id=request_id,
                                           body=parsed if isinstance(parsed, dict) else None)
        code = str(error.get("code") or "error")
        raise error_class(code, status)(
            str(error.get("message") or code), status=status, code=code,
            request_id=str(error.get("request_id") or request_id), body=parsed,
            retry_after=retry_after(headers.get("retry-after")))

    # ---- keys -------------------------------------------------------------------------------

    def create_key(self, algorithm: str, usage: str, *, name: str | None = None,
                   description: str | None = None, tags: list[str] | tuple[str, ...] = (),
                   correlation_id: str | None = None) -> dict[str, Any]:
        body = _drop_none({"algorithm": algorithm, "usage": usage, "name": name,
                           "description": description, "tags": list(tags) or None})
        return self.request("POST", "/v1/keys", body, correlation_id=correlation_id)  # type: ignore[no-any-return]

    def list_keys(self, *, state: str | None = None, algorithm: str | None = None,
                  usage: str | None = None, tag: str | None = None,
                  name_prefix: str | None = None, limit: int | None = None,
                  page_token: str | None = None) -> dict[str, Any]:
        """One page: ``{"keys": [...], "next_page_token": ...}``."""
        query = {"state": state, "algorithm": algorithm, "usage": usage, "tag": tag,
                 "name_prefix": name_prefix, "limit": limit, "page_token": page_token}
        return self.request("GET", "/v1/keys", query=query)  # type: ignore[no-any-return]

    def iter_keys(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every key matching ``filters``, following page tokens."""
        page_token = filters.pop("page_token", None)
        while True:
            page = self.list_keys(**filters, page_token=page_token)
            yield from page.get("keys", [])
            page_token = page.get("next_page_token")
            if not page_token:
                return

    def get_key(self, key: str) -> dict[str, Any]:
        return self.request("GET", _key_path(key))  # type: ignore[no-any-return]

    def update_key(self, key: str, description: str, **opts: Any) -> dict[str, Any]:
        return self.request("PATCH", _key_path(key), {"description": description}, **opts)  # type: ignore[no-any-return]

    def rotate_key(self, key: str, **opts: Any) -> dict[str, Any]:
        return self._post(key, "rotate", {}, opts)

    def rollback_key(self, key: str, version: int, **opts: Any) -> dict[str, Any]:
        return self._post(key, "rollback", {"version": version}, opts)

    def revoke_key(self, key: str, reason: str | None = None, **opts: Any) -> dict[str, Any]:
        return self._post(key, "revoke", _drop_none({"reason": reason}), opts)

    def destroy_key(self, key: str, **opts: Any) -> dict[str, Any]:
        return self._post(key, "destroy", {}, opts)

    def destroy_version(self, key: str, version: int, **opts: Any) -> dict[str, Any]:
        return self._post(key, f"versions/{int(version)}/destroy", {}, opts)

    def cancel_destroy(self, key: str, **opts: Any) -> dict[str, Any]:
        return self._post(key, "cancel-destroy", {}, opts)

    def public_key(self, key: str, version: int | None = None,
                   approval_id: str | None = None) -> dict[str, Any]:
        """``{"version": N, "pem": "-----BEGIN PUBLIC KEY-----..."}`` (``approval_id``: a tag
        policy may put reading it under dual control)."""
        return self.request("GET", _key_path(key, "/public-key"),  # type: ignore[no-any-return]
                            query={"version": version}, approval_id=approval_id)

    # ---- key import (BYOK): material wrapped by the caller, never sent in clear -------------

    def create_import_job(self) -> dict[str, Any]:
        """``{"import_job_id", "public_key" (RSA-3072 PEM), "wrapping_algorithms",
        "expires_at", ...}``: wrap the material with ``public_key`` (docs/api.md, Key import)."""
        return self.request("POST", "/v1/import-jobs", {})  # type: ignore[no-any-return]

    def import_key(self, import_job_id: str, wrapping_algorithm: str, wrapped_material: bytes,
                   *, algorithm: str, usage: str, name: str | None = None,
                   description: str | None = None, tags: list[str] | tuple[str, ...] = (),
                   **opts: Any) -> dict[str, Any]:
        """A new key (origin imported) made from ``wrapped_material``; its id is the job's."""
        body = _drop_none({"algorithm": algorithm, "usage": usage, "name": name,
                           "description": description, "tags": list(tags) or None,
                           "import": {"import_job_id": import_job_id,
                                      "wrapping_algorithm": wrapping_algorithm,
                                      "wrapped_material": b64e(wrapped_material)}})
        return self.request("POST", "/v1/keys", body, **opts)  # type: ignore[no-any-return]

    def import_key_version(self, key: str, import_job_id: str, wrapping_algorithm: str,
                           wrapped_material: bytes, **opts: Any) -> dict[str, Any]:
        """A new primary version of ``key`` (origin imported) made from ``wrapped_material``."""
        return self._post(key, "import", {"import_job_id": import_job_id,
                                          "wrapping_algorithm": wrapping_algorithm,
                                          "wrapped_material": b64e(wrapped_material)}, opts)

    # ---- cryptographic operations (bytes in, bytes out) ---------------------------------

    def encrypt(self, key: str, plaintext: bytes, aad: bytes | None = None,
                **opts: Any) -> dict[str, Any]:
        """``{"ciphertext": "fhsm:v1:...", "key_id", "key_version"}``."""
        body = _drop_none({"plaintext": b64e(plaintext), "aad": b64e(aad) if aad else None})
        return self._post(key, "encrypt", body, opts)

    def decrypt(self, key: str, ciphertext: str, aad: bytes | None = None,
                **opts: Any) -> dict[str, Any]:
        """``{"plaintext": bytes, "key_version"}``."""
        body = _drop_none({"ciphertext": ciphertext, "aad": b64e(aad) if aad else None})
        out = self._post(key, "decrypt", body, opts)
        return {**out, "plaintext": b64d(out["plaintext"])}

    def sign(self, key: str, message: bytes | None = None, *, digest: bytes | None = None,
             algorithm: str | None = None, **opts: Any) -> dict[str, Any]:
        """``{"signature": DER bytes, "key_version", "algorithm"}``; give message or digest."""
        body = _drop_none({"message": None if message is None else b64e(message),
                           "digest": None if digest is None else b64e(digest),
                           "algorithm": algorithm})
        out = self._post(key, "sign", body, opts)
        return {**out, "signature": b64d(out["signature"])}

    def verify(self, key: str, signature: bytes, message: bytes | None = None, *,
               digest: bytes | None = None, algorithm: str | None = None,
               key_version: int | None = None, **opts: Any) -> bool:
        return bool(self.verify_result(key, signature, message, digest=digest,
                                       algorithm=algorithm, key_version=key_version,
                                       **opts).get("valid"))

    def verify_result(self, key: str, signature: bytes, message: bytes | None = None, *,
                      digest: bytes | None = None, algorithm: str | None = None,
                      key_version: int | None = None, **opts: Any) -> dict[str, Any]:
        """The whole answer: ``{"valid": bool, "key_version": N}``."""
        body = _drop_none({"message": None if message is None else b64e(message),
                           "digest": None if digest is None else b64e(digest),
                           "signature": b64e(signature), "algorithm": algorithm,
                           "key_version": key_version})
        return self._post(key, "verify", body, opts)

    def wrap(self, key: str, key_material: bytes, **opts: Any) -> dict[str, Any]:
        """``{"wrapped": "fhsm:v1:...", "key_id", "key_version"}``."""
        return self._post(key, "wrap", {"key_material": b64e(key_material)}, opts)

    def unwrap(self, key: str, wrapped: str, **opts: Any) -> dict[str, Any]:
        """``{"key_material": bytes, "key_version"}``."""
        out = self._post(key, "unwrap", {"wrapped": wrapped}, opts)
        return {**out, "key_material": b64d(out["key_material"])}

    def data_key(self, key: str, bits: int = 256, *, include_plaintext: bool = True,
                 aad: bytes | None = None, **opts: Any) -> dict[str, Any]:
        """A fresh data key for envelope encryption: ``{"plaintext": bytes, "ciphertext":
        "fhsm:v1:...", "key_id", "key_version"}`` (no ``plaintext`` when ``include_plaintext``
        is False). ``decrypt(key, ciphertext)`` gives the data key back later."""
        body = _drop_none({"bits": bits, "include_plaintext": include_plaintext,
                           "aad": b64e(aad) if aad else None})
        out = self._post(key, "data-key", body, opts)
        return {**out, "plaintext": b64d(out["plaintext"])} if "plaintext" in out else out

    def batch(self, key: str, operation: str, items: list[dict[str, Any]],
              **opts: Any) -> list[dict[str, Any]]:
        """Many ``operation`` (encrypt, decrypt, sign, verify) items in one request: each item
        the API body of a single call (base64 strings), each result the API's (the item's
        result, or ``{"error": {"code", "message"}}``: a failed item does not raise)."""
        out = self._post(key, operation, {"batch": items}, opts)
        return out["results"]  # type: ignore[no-any-return]

    def encrypt_batch(self, key: str, plaintexts: list[bytes], aad: bytes | None = None,
                      **opts: Any) -> list[dict[str, Any]]:
        """``encrypt`` of each plaintext in one request; results in order (see ``batch``)."""
        item = {"aad": b64e(aad)} if aad else {}
        return self.batch(key, "encrypt", [{"plaintext": b64e(p), **item} for p in plaintexts],
                          **opts)

    def decrypt_batch(self, key: str, ciphertexts: list[str], aad: bytes | None = None,
                      **opts: Any) -> list[dict[str, Any]]:
        """``decrypt`` of each ciphertext in one request; each good result's ``plaintext`` as
        bytes, each failed item its ``{"error": ...}`` (see ``batch``)."""
        item = {"aad": b64e(aad)} if aad else {}
        results = self.batch(key, "decrypt", [{"ciphertext": c, **item} for c in ciphertexts],
                             **opts)
        return [{**r, "plaintext": b64d(r["plaintext"])} if "plaintext" in r else r
                for r in results]

    def _post(self, key: str, verb: str, body: dict[str, Any],
              opts: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/keys/{key}/{verb}; ``opts``: correlation_id, approval_id. Repeatable
        (module docstring) unless it carries an approval id."""
        opts.setdefault("idempotent", verb in REPEATABLE and not opts.get("approval_id"))
        return self.request("POST", _key_path(key, "/" + verb), body, **opts)  # type: ignore[no-any-return]

    # ---- approvals, audit, health -------------------------------------------------------

    def list_approvals(self, state: str | None = None, *, limit: int | None = None,
                       page_token: str | None = None) -> dict[str, Any]:
        """One page: ``{"approvals": [...], "next_page_token": ...}``."""
        return self.request("GET", "/v1/approvals",  # type: ignore[no-any-return]
                            query={"state": state, "limit": limit, "page_token": page_token})

    def get_approval(self, approval_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/approvals/{quote(approval_id, safe='')}")  # type: ignore[no-any-return]

    def approve(self, approval_id: str, comment: str | None = None, **opts: Any) -> dict[str, Any]:
        return self._decide(approval_id, "approve", comment, opts)

    def deny(self, approval_id: str, comment: str | None = None, **opts: Any) -> dict[str, Any]:
        return self._decide(approval_id, "deny", comment, opts)

    def _decide(self, approval_id: str, verb: str, comment: str | None,
                opts: dict[str, Any]) -> dict[str, Any]:
        path = f"/v1/approvals/{quote(approval_id, safe='')}/{verb}"  # signature=: a signed vote
        body = _drop_none({"comment": comment, "signature": opts.pop("signature", None)})
        return self.request("POST", path, body, **opts)  # type: ignore[no-any-return]

    def audit_page(self, after_seq: int = 0, limit: int = 1000) -> dict[str, Any]:
        """``{"records": [...], "next_after_seq": N or None}``."""
        return self.request("GET", "/v1/audit",  # type: ignore[no-any-return]
                            query={"after_seq": after_seq, "limit": limit})

    def iter_audit(self, after_seq: int = 0, limit: int = 1000) -> Iterator[dict[str, Any]]:
        """Every audit record after ``after_seq``, in order."""
        while True:
            page = self.audit_page(after_seq, limit)
            yield from page.get("records", [])
            if page.get("next_after_seq") is None:
                return
            after_seq = int(page["next_after_seq"])

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/healthz")  # type: ignore[no-any-return]

    def whoami(self) -> dict[str, Any]:
        """The caller as the server sees its token: subject, role, tags, expires_at, …."""
        return self.request("GET", "/v1/whoami")  # type: ignore[no-any-return]

    def revoke_token(self, jti: str, exp: int | None = None, **opts: Any) -> dict[str, Any]:
        """Deny-list the token whose ``jti`` claim this is (Administrators)."""
        return self.request("POST", "/v1/tokens/revoke",  # type: ignore[no-any-return]
                            _drop_none({"jti": jti, "exp": exp}), **opts)

    def server_certificate(self) -> dict[str, Any]:
        """The verified peer certificate of the connection (``ssl.getpeercert()``: subject,
        notAfter, subjectAltName…), connecting first when no connection is open."""
        conn = self._connection()
        try:
            if conn.sock is None:
                conn.connect()
            sock = conn.sock
            return dict(sock.getpeercert() or {}) if isinstance(sock, ssl.SSLSocket) else {}
        except ssl.SSLCertVerificationError as exc:
            raise self._unverified(exc) from None
        except OSError as exc:
            self.close()
            raise TransportError(f"cannot reach {self.url}: {describe(exc)}") from None

