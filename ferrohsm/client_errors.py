"""The SDK's errors, and the TLS context and failure descriptions it shares with them.

A part of the SDK (client.py re-exports every name): stdlib only and no other ferrohsm imports,
so a pipeline may copy the two files, client.py and this one.
"""

from __future__ import annotations

import email.utils
import errno
import http.client
import math
import os
import select
import socket
import ssl
import stat
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit


class ClientError(Exception):
    """Base of everything this client raises on purpose."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class TransportError(ClientError):
    """No HTTP answer: connection refused or reset, TLS failure, timeout, garbled response.
    ``retryable`` is False when trying again cannot help (the server's certificate is wrong);
    ``sent`` is False when the connection failed before any byte of the request left;
    ``reason`` is the short cause (``RemoteDisconnected``, ``timed out``) when known."""

    retryable = True
    sent = True
    reason = ""
    expired_at: str | None = None  # the server's certificate expired then (ISO 8601, UTC)
    elsewhere = False  # not retryable here, but another server of the list may be tried


class ApiError(ClientError):
    """The server answered with an API error body: ``code``, ``message``, ``request_id``."""

    code = "error"

    def __init__(self, message: str, *, status: int, code: str | None = None,
                 request_id: str | None = None, body: Mapping[str, Any] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, request_id=request_id)
        self.status = status
        self.code = code or type(self).code
        self.body: Mapping[str, Any] = body or {}
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.message} ({self.code}, request id {self.request_id or 'unknown'})"


class BadRequest(ApiError):
    code = "bad_request"


class Unauthenticated(ApiError):
    code = "unauthenticated"


class Forbidden(ApiError):
    code = "forbidden"


class NotFound(ApiError):
    code = "not_found"


class Conflict(ApiError):
    code = "conflict"  # wrong key state, usage or algorithm; or a name already taken


class Gone(ApiError):
    code = "gone"  # the key or version was destroyed


class PayloadTooLarge(ApiError):
    code = "payload_too_large"


class RateLimited(ApiError):
    code = "rate_limited"


class ApprovalRequired(ApiError):
    """Dual control: the request was parked; ``approval`` is the approval object. Repeat the
    same call with ``approval_id=approval["id"]`` once a quorum has approved it."""

    code = "approval_required"

    @property
    def approval(self) -> dict[str, Any]:
        value = self.body.get("approval")
        return dict(value) if isinstance(value, Mapping) else {}


class ServerError(ApiError):
    code = "internal"


_BY_CODE: dict[str, type[ApiError]] = {cls.code: cls for cls in (
    BadRequest, Unauthenticated, Forbidden, NotFound, Conflict, Gone, PayloadTooLarge,
    RateLimited, ApprovalRequired)}


def error_class(code: str, status: int) -> type[ApiError]:
    return _BY_CODE.get(code) or (ServerError if status >= 500 else ApiError)


def tls_context(ca_cert: str | None = None, client_cert: str | None = None,
                client_key: str | None = None) -> ssl.SSLContext:
    """TLS 1.3 only, server verified (hostname included) against ``ca_cert`` or the system store."""
    if client_key and not client_cert:  # it was ignored: the call went out without mutual TLS
        raise ClientError(f"a client key ({client_key}) without its certificate: give the "
                          "client certificate too (--client-cert, FERROHSM_CLIENT_CERT), or "
                          "neither")
    try:
        pem = read_piped(ca_cert) if ca_cert else None  # --ca-cert <(…): read here, with a deadline
        context = ssl.create_default_context(cafile=ca_cert if pem is None else None,
                                             cadata=pem)
    except (OSError, ssl.SSLError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot load the CA certificate {ca_cert}: "
                          f"{_pem_problem(exc, 'a PEM CA certificate')}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = True
    if client_cert:
        _load_pair(context, client_cert, client_key or None)
    return context


PIPE_WAIT = 10.0  # seconds a CA certificate or a token given as a FIFO may take to arrive
MAX_PIPED = 1 << 20


def read_piped(path: str) -> str | None:
    """The text of ``path`` when it is a FIFO (process substitution, /dev/stdin), read here
    with a deadline: OpenSSL's own open of one that no writer opens waits for ever, and so
    would the CLI's of a ``--token-file`` FIFO. None for anything else (the caller reads it).
    OSError(ENODATA) when nothing comes in time."""
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return None
    except OSError:
        return None  # OpenSSL names the problem
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    chunks: list[bytes] = []
    deadline = time.monotonic() + PIPE_WAIT
    try:
        while sum(map(len, chunks)) <= MAX_PIPED:
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise OSError(errno.ENODATA, f"a FIFO nothing was written to within "
                                              f"{PIPE_WAIT:.0f} s")
            chunk = os.read(fd, 65536)
            if not chunk:  # every writer closed: all of it
                return b"".join(chunks).decode("ascii")
            chunks.append(chunk)
    finally:
        os.close(fd)
    raise OSError(errno.EFBIG, "larger than 1 MiB")


def _load_pair(context: ssl.SSLContext, client_cert: str, client_key: str | None) -> None:
    """The client certificate and key: regular files (a FIFO would hang OpenSSL's open), the
    key unencrypted (OpenSSL would prompt for a pass phrase, twice, and fail on no terminal)."""
    pair = f" and key {client_key}" if client_key else ""
    asked: list[bool] = []

    def no_pass_phrase() -> bytes:
        asked.append(True)
        return b""

    for path in (client_cert, client_key):
        try:
            regular = path is None or stat.S_ISREG(os.stat(path).st_mode)
        except OSError:
            continue  # OpenSSL names the problem
        if not regular:
            raise ClientError(f"cannot load the client certificate {client_cert}{pair}: "
                              f"{path} is not a regular file")
    try:
        context.load_cert_chain(client_cert, client_key, password=no_pass_phrase)
    except (OSError, ssl.SSLError) as exc:
        why = ("the private key is encrypted: give an unencrypted one (openssl pkey -in KEY "
               "-out KEY.plain)" if asked else
               _pem_problem(exc, 'a PEM certificate with its private key'))
        raise ClientError(f"cannot load the client certificate {client_cert}{pair}: "
                          f"{why}") from None


def _pem_problem(exc: BaseException, wanted: str) -> str:
    """Why a certificate file did not load: the OS's reason (missing, unreadable), or for what
    OpenSSL refused, what the file should have been (its bare ``SSLError`` says nothing)."""
    if isinstance(exc, ssl.SSLError):
        reason = f" ({exc.reason})" if exc.reason else ""
        return (f"not {wanted} (or the key does not match the certificate){reason}"
                if "key" in wanted else f"not {wanted}{reason}")
    return describe(exc)


def describe(exc: BaseException) -> str:
    """A short reason for a transport failure (never request content)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or type(exc).__name__}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


# TLS alerts by which a server refuses the client's certificate (or its absence), in the
# handshake: the request was never read, and no other attempt or node will think otherwise
# (UNSUPPORTED_CERTIFICATE: a certificate without clientAuth in its extended key usage; REVOKED:
# one the server's [tls] client_crl lists).
CLIENT_CERT_ALERTS = frozenset({"TLSV13_ALERT_CERTIFICATE_REQUIRED", "TLSV1_ALERT_UNKNOWN_CA",
                                "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_EXPIRED",
                                "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "TLSV1_ALERT_ACCESS_DENIED",
                                "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
                                "SSLV3_ALERT_CERTIFICATE_REVOKED"})


def client_cert_refused(exc: BaseException, url: str,
                        request_id: str | None) -> TransportError | None:
    """The clear error for a server that refused this client's certificate, else None."""
    reason = getattr(exc, "reason", None) if isinstance(exc, ssl.SSLError) else None
    if reason not in CLIENT_CERT_ALERTS:
        return None
    error = TransportError(f"{url} refused this client's TLS certificate, or needs one "
                           f"({reason}): check --client-cert and --client-key "
                           "(FERROHSM_CLIENT_CERT, FERROHSM_CLIENT_KEY); the request was not "
                           "carried out", request_id=request_id)
    error.retryable, error.sent, error.reason = False, False, str(reason)
    return error


def not_repeated(exc: TransportError, url: str, others: bool,
                 approval_id: str | None = None) -> TransportError:
    """A state change whose connection broke after it was sent: the server may have carried it
    out, so "cannot reach" would mislead (it was reached) and a repeat could run it twice. Say
    so, and why it was not sent again; an approval it redeemed may be spent, and how to tell."""
    where = " nor sent to the next server" if others else ""
    spent = (f"; approval {approval_id} may be spent: `ferrohsm approvals show {approval_id}` "
             "says executed if the request ran" if approval_id else "")
    error = TransportError(
        f"request sent to {url}, but the connection ended before an answer "
        f"({exc.reason or 'no reason given'}): it may or may not have been carried out; not "
        f"repeated{where}, because it changes state (check, then retry if needed){spent}",
        request_id=exc.request_id)
    error.reason = exc.reason
    return error


def check_url(url: str) -> None:
    """https://HOST[:PORT][/PREFIX] (a prefix for a server behind a proxy). Credentials in the
    URL are refused, never echoed: the token goes in FERROHSM_TOKEN, and a user:password
    there would end up in every "cannot reach" message."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": an unclosed [
        raise ValueError(f"server URL {url[:80]!r} is not a valid URL ({exc})") from None
    try:
        ok = parts.scheme == "https" and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        ok = False
    shown = url[:80] if "@" not in parts.netloc else "https://…@" + parts.netloc.rpartition("@")[2]
    if ok and "@" in parts.netloc:
        raise ValueError(f"server URL must not hold a user or password, got {shown!r}: give the "
                         "token in FERROHSM_TOKEN")
    if ok and (parts.query or parts.fragment):
        raise ValueError(f"server URL must not have a query or fragment, got {shown!r}")
    if ok and parts.path.rstrip("/").endswith("/v1"):  # every call then went to /v1/v1/…: 404
        raise ValueError(f"server URL names the server, not its API: drop the /v1 of {shown!r} "
                         "(a prefix is for a server behind a proxy)")
    if not ok:
        raise ValueError(f"server URL must be https://HOST[:PORT], got {shown!r}")


def retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for: delay-seconds or an HTTP-date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # neither: fall back to our own backoff
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo else None


def dropped(sock: socket.socket) -> bool:
    """True when an idle kept-alive socket is readable: the server closed it (or sent junk)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def early_answer(conn: http.client.HTTPConnection) -> tuple[int, dict[str, str], bytes] | None:
    """The answer a server sent before it closed on a request whose body it would not read
    (413), if it can still be read; None when there is none."""
    try:
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException):
        return None
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def checked_timeout(timeout: float) -> float:
    """Seconds a call may wait for each answer: refused here when it is no such number (0,
    negative, NaN, infinite), not by the socket at the first call as an unrelated error."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds above 0 (FERROHSM_TIMEOUT), "
                         f"got {str(timeout)[:20]!r}")
    return float(timeout)


def checked_token(token: str | None) -> str | None:
    """The bearer token as it can be sent: surrounding whitespace (a newline from a secret
    file, ``$(cat file)``) dropped; a token with a character no header may carry is refused
    here, without its value, rather than by http.client with the whole header in its message
    (which a script then prints to its CI log)."""
    if token is None:
        return None
    token = token.strip()
    if token and not all("!" <= ch <= "~" for ch in token):
        raise ClientError("the bearer token holds a character a header cannot carry (a line "
                          "break, a space or a non-ASCII character): check FERROHSM_TOKEN or "
                          "the token file")
    return token or None


def env_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The client settings the environment gives, as the CLI reads them: the token from
    FERROHSM_TOKEN or else the file FERROHSM_TOKEN_FILE names, FERROHSM_CA_CERT,
    FERROHSM_CLIENT_CERT, FERROHSM_CLIENT_KEY and FERROHSM_TIMEOUT."""
    settings: dict[str, Any] = {
        "token": env.get("FERROHSM_TOKEN") or None, "ca_cert": env.get("FERROHSM_CA_CERT") or None,
        "client_cert": env.get("FERROHSM_CLIENT_CERT") or None,
        "client_key": env.get("FERROHSM_CLIENT_KEY") or None}
    if settings["token"] is None and env.get("FERROHSM_TOKEN_FILE"):
        try:
            with open(env["FERROHSM_TOKEN_FILE"], encoding="utf-8") as handle:
                settings["token"] = handle.read(65536)
        except (OSError, UnicodeDecodeError) as exc:
            raise ClientError(f"cannot read FERROHSM_TOKEN_FILE {env['FERROHSM_TOKEN_FILE']}: "
                              f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    if env.get("FERROHSM_TIMEOUT"):
        try:
            settings["timeout"] = float(env["FERROHSM_TIMEOUT"])
        except ValueError:
            raise ClientError("FERROHSM_TIMEOUT must be a number of seconds") from None
    return settings


def none_answered(urls: list[str], unreachable: Mapping[str, str],
                  last: TransportError) -> TransportError:
    """Every server of the list failed: name each with its reason, not only the last."""
    reasons = [f"{url}: {unreachable[url].removeprefix(f'cannot reach {url}: ')}"
               for url in urls if url in unreachable]
    error = TransportError(f"cannot reach any of the {len(urls)} servers ({'; '.join(reasons)})",
                           request_id=last.request_id)
    error.sent, error.retryable, error.reason = last.sent, last.retryable, last.reason
    return error


X509_V_ERR_CERT_HAS_EXPIRED = 10  # OpenSSL's verify code for a certificate past notAfter
X509_V_FLAG_NO_CHECK_TIME = 0x200000  # OpenSSL: verify the chain, not the dates


def expired_at(host: str, port: int, timeout: float, trusted: ssl.SSLContext) -> str | None:
    """When the server's own certificate expired (None when it is in date, and an intermediate
    or a CA of the chain is what expired), read over a handshake that verifies it against
    the same CAs except for its dates and sends nothing else (no request, no token): the date
    of a certificate the client trusts, to say what to fix. None if it cannot be told (CAs
    from a directory, which ``get_ca_certs`` does not list)."""
    cas = trusted.get_ca_certs(binary_form=True)
    if not cas:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    for der in cas:
        context.load_verify_locations(cadata=der)
    context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            not_after = (tls.getpeercert() or {}).get("notAfter")
        seconds = ssl.cert_time_to_seconds(str(not_after))
    except (OSError, ValueError):
        return None
    if seconds > time.time():  # the server's own is in date: another of the chain expired
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def unverified(exc: ssl.SSLCertVerificationError, url: str, address: tuple[str, int],
               timeout: float, trusted: ssl.SSLContext,
               request_id: str | None) -> TransportError:
    """The error for a server certificate that does not verify: not retried here, another
    server of a list may be (it is verified on its own). An expired one is said as the server's
    to renew, with its date; anything else sends the operator to the CA file."""
    expired = (expired_at(*address, timeout, trusted)
               if exc.verify_code == X509_V_ERR_CERT_HAS_EXPIRED else None)
    if expired is not None:
        error = TransportError(f"TLS: the server certificate of {url} expired at {expired}: it "
                               "must be renewed on the server", request_id=request_id)
        error.expired_at = expired
    else:
        error = TransportError(f"TLS: cannot verify the server certificate of {url} "
                               f"({exc.verify_message}); check the CA certificate (--ca-cert, "
                               "FERROHSM_CA_CERT)", request_id=request_id)
    error.retryable, error.elsewhere = False, True
    return error
