"""Every kind of refused request leaves EXACTLY ONE audit record, over a real server and TLS.

Each request below carries its own ``X-Request-ID``; the audit log records the request id of
every record, so the records of one request are found by that id. For each refused request the
test asserts the status it got, and that exactly one record carries its id, with the action and
outcome (denied or error) of the layer that refused it and, for a request that named a key, the
key it targeted: its id when the reference resolves, else the reference itself (``key_ref``).

Who records is decided by the layer that refuses (ferrohsm/api/application.py): the service's
guarded call for the operations it runs, the HTTP layer for what never reached the service
(authentication, routing, parsing, framing, rate limits). The cases cover each kind: 401, 403
for every role on every route it may not call (stated here from the README's role table, not
derived from the code), 404, 405, 408, 409, 413, 414, 415, 417, 429, 431, 505, malformed
request lines, headers, bodies and query strings (framing errors sent with a valid token, so
from an authenticated caller), bad page tokens, and approvals that are missing or still pending.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from live import LiveServer

from ferrohsm.api.transit import is_vault
from ferrohsm.telemetry.access import ACCESS, LOGGER, stream_in_use

ROLES = ("administrator", "operator", "auditor", "service")
A, AO, AOU, ALL, S = ({"administrator"}, {"administrator", "operator"},
                      {"administrator", "operator", "auditor"}, set(ROLES), {"service"})
AU = {"administrator", "auditor"}  # the audit log's readers
Record = dict[str, Any]
CONFIG = """
[policy.tags.dual]
approvals_required = 1
approval_actions = ["destroy"]
"""
OPEN = {("rate_limit", "requests_per_second"): 100000.0, ("rate_limit", "burst"): 100000,
        ("rate_limit", "ip_requests_per_second"): 100000.0, ("rate_limit", "ip_burst"): 100000,
        ("server", "body_timeout_seconds"): 0.5}
MISSING_ID = "01890a5d-ac96-774b-bcce-b302099a0000"
IMPORT = {"import_job_id": MISSING_ID, "wrapping_algorithm": "RSA_OAEP_SHA256",
          "wrapped_material": base64.b64encode(b"w" * 384).decode()}


def B(data: bytes) -> str:  # noqa: N802  one letter, like b"": a base64 literal in bodies
    return base64.b64encode(data).decode()


@dataclass
class World:
    """The live server and what the cases refer to by placeholder: the keys {enc}, {sig},
    {dual} (under dual control) and {revoked}, a pending {approval} on {dual}, and a {scoped}
    service token whose tags match none of them."""

    srv: LiveServer
    names: dict[str, str] = field(default_factory=dict)

    def fill(self, text: str) -> str:
        for placeholder, value in self.names.items():
            text = text.replace("{" + placeholder + "}", value)
        return text


def create(srv: LiveServer, name: str, algorithm: str = "aes-256-gcm", usage: str = "encrypt",
           tags: tuple[str, ...] = ()) -> str:
    status, _, key = srv.call("POST", "/v1/keys", {"algorithm": algorithm, "usage": usage,
                                                   "name": name, "tags": list(tags)})
    assert status == 201, key
    return str(key["id"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    srv = LiveServer(tmp_path_factory.mktemp("refusals"), config_text=CONFIG, overrides=OPEN)
    w = World(srv)
    w.names["enc"] = create(srv, "refusal-enc")
    w.names["sig"] = create(srv, "refusal-sig", "ec-p256", "sign")
    w.names["dual"] = create(srv, "refusal-dual", tags=("dual",))
    w.names["revoked"] = create(srv, "refusal-revoked")
    assert srv.call("POST", f"/v1/keys/{w.names['revoked']}/revoke", {})[0] == 200
    status, _, parked = srv.call("POST", f"/v1/keys/{w.names['dual']}/destroy", {})
    assert status == 202, parked
    w.names["approval"] = parked["approval"]["id"]
    w.names["scoped"] = srv.token("service", "scoped-svc", tags=["elsewhere"])
    w.names["missing"] = MISSING_ID  # an import job that does not exist: a new key's id
    yield w
    srv.close()


def records_of(srv: LiveServer, request_id: str) -> list[Record]:
    found: list[Record] = []
    after = 0
    while True:
        page = srv.rt.audit.read(after, 1000)
        found += [r for r in page if r.get("request_id") == request_id]
        if len(page) < 1000:
            return found
        after = page[-1]["seq"]


def raw_status(srv: LiveServer, data: bytes) -> int:
    """Send exact bytes on a fresh TLS connection; the status of the one response."""
    return int(raw_head(srv, data).split(b" ", 2)[1])


def raw_head(srv: LiveServer, data: bytes) -> bytes:
    """Send exact bytes on a fresh TLS connection; the head of the one response."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock, \
            srv.ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        tls.sendall(data)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = tls.recv(4096)
            if not chunk:
                break
            head += chunk
    return head.partition(b"\r\n\r\n")[0]


# ---- the cases ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One refused request: either an HTTP call (method, path, JSON ``body`` or ``raw`` body,
    ``role``/``token``, ``headers``) or exact bytes (``wire``, with {rid} and {token} filled in),
    and the one record it must leave: ``action``, ``outcome``, the key (a placeholder such as
    "enc", or None) and, for an unresolvable key reference, ``key_ref``."""

    status: int
    action: str
    outcome: str
    method: str = "GET"
    path: str = "/"
    body: Any = None
    raw: bytes | None = None
    role: str | None = "administrator"
    token: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    wire: bytes | None = None
    key: str | None = None
    key_ref: str | None = None

    def send(self, w: World, rid: str) -> int:
        if self.wire is not None:
            data = self.wire.replace(b"{rid}", rid.encode())
            return raw_status(w.srv, data.replace(b"{token}", w.srv.token().encode()))
        token = w.fill(self.token) if self.token else None
        headers = {name: w.fill(value) for name, value in self.headers.items()}
        headers["X-Request-ID"] = rid
        body = self.body
        if isinstance(body, dict):
            body = {k: w.fill(v) if isinstance(v, str) else v for k, v in body.items()}
        return w.srv.call(self.method, w.fill(self.path), body, role=self.role, token=token,
                          headers=headers, raw=self.raw)[0]


def refused(status: int, **kw: Any) -> Case:
    """A refusal the HTTP layer records: it never reached the service."""
    return Case(status, "request.refused", "denied" if status in (401, 403, 429) else "error",
                **kw)


# (method, path, valid body, roles that may call it, the audit action of its refusal)
ROUTES: list[tuple[str, str, Any, set[str], str]] = [
    ("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt"}, AO, "key.create"),
    ("GET", "/v1/keys", None, ALL, "key.list"),
    ("GET", "/v1/keys/{enc}", None, ALL, "key.read"),
    ("PATCH", "/v1/keys/{enc}", {"description": "x"}, AO, "key.update"),
    ("POST", "/v1/keys/{enc}/rotate", {}, AO, "key.rotate"),
    ("POST", "/v1/keys/{enc}/rollback", {"version": 1}, AO, "key.rollback"),
    ("POST", "/v1/keys/{enc}/revoke", {"reason": "x"}, AO, "key.revoke"),
    ("POST", "/v1/keys/{enc}/destroy", {}, A, "key.destroy"),
    ("POST", "/v1/keys/{enc}/cancel-destroy", {}, A, "key.cancel_destroy"),
    ("POST", "/v1/keys/{enc}/versions/1/destroy", {}, A, "key.destroy_version"),
    ("GET", "/v1/keys/{sig}/public-key", None, ALL, "key.public_key"),
    ("POST", "/v1/keys/{enc}/encrypt", {"plaintext": B(b"x")}, S, "crypto.encrypt"),
    ("POST", "/v1/keys/{enc}/decrypt", {"ciphertext": "fhsm:v1:AAAA"}, S, "crypto.decrypt"),
    ("POST", "/v1/keys/{sig}/sign", {"message": B(b"m")}, S, "crypto.sign"),
    ("POST", "/v1/keys/{sig}/verify", {"message": B(b"m"), "signature": B(b"s")}, S,
     "crypto.verify"),
    ("POST", "/v1/keys/{enc}/wrap", {"key_material": B(b"k" * 32)}, S, "crypto.wrap"),
    ("POST", "/v1/keys/{enc}/unwrap", {"wrapped": "fhsm:v1:AAAA"}, S, "crypto.unwrap"),
    ("POST", "/v1/keys/{enc}/data-key", {"bits": 256}, S, "crypto.encrypt"),
    ("POST", "/v1/tokens/revoke", {"jti": "refused-jti"}, A, "token.revoke"),
    ("GET", "/v1/whoami", None, ALL, "token.whoami"),
    ("GET", "/v1/audit", None, AU, "audit.read"),
    ("GET", "/v1/approvals", None, AOU, "approval.list"),
    ("GET", "/v1/approvals/{approval}", None, AOU, "approval.list"),
    ("POST", "/v1/approvals/{approval}/approve", {}, AO, "approval.decide"),
    ("POST", "/v1/approvals/{approval}/deny", {}, AO, "approval.decide"),
    ("POST", "/v1/import-jobs", {}, AO, "import_job.create"),
    ("POST", "/v1/keys/{enc}/import", IMPORT, AO, "key.import"),
    ("POST", "/v1/sys/seal", None, A, "system.seal"),
    ("POST", "/v1/sys/backup", None, A, "system.backup"),
    ("POST", "/v1/sys/unseal", {"share": "fhsm1-00000000-1-AAAA"}, ALL, "system.unseal"),
    ("POST", "/v1/sys/rekey", {}, A, "system.rekey"),
]


def _key_of(path: str) -> str | None:
    for placeholder in ("enc", "sig"):
        if "{" + placeholder + "}" in path:
            return placeholder
    return "dual" if "{approval}" in path else None  # an approval names the key it is bound to


FORBIDDEN = {f"403 {role} {method} {path}": Case(403, action, "denied", method, path, body,
                                                 role=role, key=_key_of(path))
             for method, path, body, allowed, action in ROUTES
             for role in ROLES if role not in allowed}

WIRE_HEAD = (b"Host: 127.0.0.1\r\nX-Request-ID: {rid}\r\nAuthorization: Bearer {token}\r\n")


def wire(request_line: bytes, extra: bytes = b"", body: bytes = b"") -> bytes:
    """A request with a valid token (an authenticated caller) and one framing defect."""
    return request_line + b"\r\n" + WIRE_HEAD + extra + b"\r\n" + body


JSON = b"Content-Type: application/json\r\n"
CASES: dict[str, Case] = {
    # 401: no token, bad tokens (the HTTP layer: auth.authenticate)
    "401 no token": Case(401, "auth.authenticate", "denied", path="/v1/keys", role=None),
    "401 bad token": Case(401, "auth.authenticate", "denied", path="/v1/keys", role=None,
                          token="not-a-token"),  # noqa: S106  a deliberately bogus token
    "401 basic auth": Case(401, "auth.authenticate", "denied", path="/v1/keys", role=None,
                           headers={"Authorization": "Basic YWRtaW46YWRtaW4="}),
    "400 token in the query string": Case(400, "auth.authenticate", "denied",
                                          path="/v1/keys?access_token=abc"),
    **FORBIDDEN,
    "403 by name": Case(403, "key.destroy", "denied", "POST", "/v1/keys/refusal-enc/destroy", {},
                        role="operator", key="enc"),
    "403 unknown name": Case(403, "key.rotate", "denied", "POST", "/v1/keys/no-such-key/rotate",
                             {}, role="service", key_ref="no-such-key"),
    "404 tag-scoped token": Case(404, "crypto.encrypt", "denied", "POST", "/v1/keys/{enc}/encrypt",
                                 {"plaintext": B(b"x")}, role=None, token="{scoped}", key="enc"),  # noqa: S106  a placeholder
    "403 own approval": Case(403, "approval.decide", "denied", "POST",
                             "/v1/approvals/{approval}/approve", {}, key="dual"),
    "403 unknown approval id": Case(403, "key.destroy", "denied", "POST",
                                    "/v1/keys/{dual}/destroy", {},
                                    headers={"X-Approval-ID": MISSING_ID}, key="dual"),
    # 202 with a pending approval: the request is refused until the quorum is reached
    "202 pending approval": Case(202, "key.destroy", "denied", "POST", "/v1/keys/{dual}/destroy",
                                 {}, headers={"X-Approval-ID": "{approval}"}, key="dual"),
    # 404
    "404 unknown route": refused(404, path="/v1/nowhere"),
    "404 unknown route, no token": refused(404, path="/v1/nowhere", role=None),
    "404 unknown dashboard file": refused(404, path="/ui/nope.js", role=None),
    "404 unknown key name": Case(404, "key.read", "error", path="/v1/keys/no-such-key",
                                 key_ref="no-such-key"),
    "404 unknown key id": Case(404, "crypto.encrypt", "error", "POST",
                               f"/v1/keys/{MISSING_ID}/encrypt", {"plaintext": B(b"x")},
                               role="service", key_ref=MISSING_ID),
    "404 unknown key, unprintable and long": Case(404, "key.read", "error",
                                                  path="/v1/keys/bad%E2%80%8B" + "x" * 200,
                                                  key_ref="bad?" + "x" * 124),
    "400 control character in a key reference": refused(400, path="/v1/keys/bad%01"),
    "404 unknown approval": Case(404, "approval.decide", "error", "POST",
                                 f"/v1/approvals/{MISSING_ID}/approve", {}, role="operator"),
    "404 unknown approval, read": Case(404, "approval.list", "error",
                                       path=f"/v1/approvals/{MISSING_ID}", role="auditor"),
    # 405
    "405 method on a collection": refused(405, method="DELETE", path="/v1/keys"),
    "405 method on a key": refused(405, method="PUT", path="/v1/keys/{enc}", body={}),
    # 409 and other refusals by the operation itself (the service)
    "409 wrong usage": Case(409, "crypto.encrypt", "error", "POST", "/v1/keys/{sig}/encrypt",
                            {"plaintext": B(b"x")}, role="service", key="sig"),
    # a batch refused whole (items refused one by one are tests/integration/test_batch.py's)
    "400 empty batch": Case(400, "crypto.encrypt", "error", "POST", "/v1/keys/{enc}/encrypt",
                            {"batch": []}, role="service"),
    "400 batch over the maximum": Case(400, "crypto.encrypt", "error", "POST",
                                       "/v1/keys/{enc}/encrypt",
                                       {"batch": [{"plaintext": B(b"x")}] * 1001},
                                       role="service"),
    "403 batch from a role that never encrypts": Case(403, "crypto.encrypt", "denied", "POST",
                                                      "/v1/keys/{enc}/encrypt",
                                                      {"batch": [{"plaintext": B(b"x")}]},
                                                      key="enc"),  # named, as a single call
    "400 batch beside another member": refused(400, method="POST", path="/v1/keys/{enc}/encrypt",
                                               body={"batch": [], "plaintext": B(b"x")},
                                               role="service", key_ref="{enc}"),
    "409 revoked key": Case(409, "key.rotate", "error", "POST", "/v1/keys/{revoked}/rotate", {},
                            key="revoked"),
    "409 name taken": Case(409, "key.create", "error", "POST", "/v1/keys",
                           {"algorithm": "aes-256-gcm", "usage": "encrypt",
                            "name": "refusal-enc"}),
    "400 unknown algorithm": Case(400, "key.create", "error", "POST", "/v1/keys",
                                  {"algorithm": "des", "usage": "encrypt"}),
    "404 unknown import job": Case(404, "key.import", "error", "POST", "/v1/keys",
                                   {"algorithm": "aes-256-gcm", "usage": "encrypt",
                                    "import": IMPORT}, key="missing"),
    "404 unknown import job for a version": Case(404, "key.import", "error", "POST",
                                                 "/v1/keys/{enc}/import", IMPORT, key="enc"),
    "400 bad ciphertext": Case(400, "crypto.decrypt", "error", "POST", "/v1/keys/{enc}/decrypt",
                               {"ciphertext": "fhsm:v1:AAAA"}, role="service", key="enc"),
    "400 bad jti": Case(400, "token.revoke", "error", "POST", "/v1/tokens/revoke",
                        {"jti": "\u0007"}),
    "413 input over the crypto limit": Case(413, "crypto.encrypt", "error", "POST",
                                            "/v1/keys/{enc}/encrypt",
                                            {"plaintext": B(b"x" * (64 * 1024 + 1))},
                                            role="service", key="enc"),
    # bad page tokens: refused by the listing itself
    "400 bad page_token": Case(400, "key.list", "error", path="/v1/keys?page_token=garbage"),
    "400 bad approvals page_token": Case(400, "approval.list", "error",
                                         path="/v1/approvals?page_token=garbage"),
    "400 bad approvals state": Case(400, "approval.list", "error",
                                    path="/v1/approvals?state=bogus"),
    # query strings the handler refuses before calling the service
    "400 unknown query parameter": refused(400, path="/v1/keys?bogus=1"),
    "400 repeated query parameter": refused(400, path="/v1/keys?limit=1&limit=2"),
    "400 limit not a number": refused(400, path="/v1/keys?limit=abc"),
    "400 unknown state filter": refused(400, path="/v1/keys?state=bogus"),
    "400 audit after_seq": refused(400, path="/v1/audit?after_seq=-1"),
    "400 public-key version": refused(400, path="/v1/keys/{sig}/public-key?version=x",
                                      key_ref="{sig}"),
    "400 health query": refused(400, path="/healthz?x=1", role=None),
    # bodies the handler refuses before calling the service
    "400 invalid JSON": refused(400, method="POST", path="/v1/keys", raw=b"{nope"),
    "400 not an object": refused(400, method="POST", path="/v1/keys", raw=b"[]"),
    "400 duplicate member": refused(400, method="POST", path="/v1/keys",
                                    raw=b'{"usage":"encrypt","usage":"sign"}'),
    "400 unknown field": refused(400, method="POST", path="/v1/keys",
                                 body={"algorithm": "aes-256-gcm", "usage": "encrypt", "x": 1}),
    "400 missing field": refused(400, method="POST", path="/v1/keys", body={}),
    "400 wrong type": refused(400, method="PATCH", path="/v1/keys/{enc}",
                              body={"description": 7}, key_ref="{enc}"),
    "400 bad base64": refused(400, method="POST", path="/v1/keys/{enc}/encrypt",
                              body={"plaintext": "not base64!"}, role="service",
                              key_ref="{enc}"),  # named, as a batch item is
    "400 malformed token revoke": refused(400, method="POST", path="/v1/tokens/revoke",
                                          body={"jti": 5}),
    # framing, sent with a valid token: refused by the server while reading the request
    "413 body over max_body": refused(413, wire=wire(b"POST /v1/keys HTTP/1.1",
                                                     JSON + b"Content-Length: 99999999\r\n")),
    "415 not JSON": refused(415, wire=wire(b"POST /v1/keys HTTP/1.1",
                                           b"Content-Type: text/plain\r\nContent-Length: 2\r\n",
                                           b"{}")),
    "400 two Content-Lengths": refused(400, wire=wire(
        b"POST /v1/keys HTTP/1.1", JSON + b"Content-Length: 2\r\nContent-Length: 2\r\n", b"{}")),
    "400 Transfer-Encoding": refused(400, wire=wire(
        b"POST /v1/keys HTTP/1.1", JSON + b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n")),
    "400 Content-Length not a number": refused(400, wire=wire(
        b"POST /v1/keys HTTP/1.1", JSON + b"Content-Length: two\r\n")),
    "400 obs-fold": refused(400, wire=wire(b"GET /v1/keys HTTP/1.1", b"X-A: 1\r\n folded\r\n")),
    "400 control character in a header": refused(400, wire=wire(b"GET /v1/keys HTTP/1.1",
                                                                b"X-A: a\x01b\r\n")),
    "400 space before the colon": refused(400, wire=wire(b"GET /v1/keys HTTP/1.1",
                                                         b"X-A : 1\r\n")),
    "400 two Hosts": refused(400, wire=wire(b"GET /v1/keys HTTP/1.1", b"Host: other\r\n")),
    "400 no Host": refused(400, wire=b"GET /v1/keys HTTP/1.1\r\nX-Request-ID: {rid}\r\n"
                                     b"Authorization: Bearer {token}\r\n\r\n"),
    "400 bare LF": refused(400, wire=b"GET /v1/keys HTTP/1.1\nHost: 127.0.0.1\nX-Request-ID: "
                                     b"{rid}\n\n"),
    "400 malformed request line": refused(400, wire=wire(b"GET  /v1/keys HTTP/1.1")),
    "400 absolute-form target of another scheme": refused(400, wire=wire(
        b"GET ftp://x/v1/keys HTTP/1.1")),
    "400 absolute-form target with userinfo": refused(400, wire=wire(
        b"GET https://u:p@x/v1/keys HTTP/1.1")),
    "400 invalid query string": refused(400, wire=wire(b"GET /v1/keys?a=%ff HTTP/1.1")),
    "417 Expect": refused(417, wire=wire(b"GET /v1/keys HTTP/1.1", b"Expect: bogus\r\n")),
    "505 HTTP/2.0": refused(505, wire=wire(b"GET /v1/keys HTTP/2.0")),
    "414 URI too long": refused(414, wire=wire(b"GET /v1/keys?" + b"a" * 9000 + b" HTTP/1.1")),
    "431 header section too large": refused(431, wire=wire(b"GET /v1/keys HTTP/1.1",
                                                           b"X-A: " + b"a" * 40000 + b"\r\n")),
    "431 too many headers": refused(431, wire=wire(b"GET /v1/keys HTTP/1.1",
                                                   b"".join(b"X-%d: 1\r\n" % n
                                                            for n in range(120)))),
    "408 body never arrives": refused(408, wire=wire(b"POST /v1/keys HTTP/1.1",
                                                     JSON + b"Content-Length: 10\r\n", b"{}")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_refused_request_leaves_exactly_one_record(world: World, name: str) -> None:
    case = CASES[name]
    rid = f"refusal-{uuid.uuid4().hex}"
    assert case.send(world, rid) == case.status, name
    records = records_of(world.srv, rid)
    assert len(records) == 1, [(r["action"], r["outcome"], r["message"]) for r in records]
    [record] = records
    assert (record["action"], record["outcome"]) == (case.action, case.outcome), record
    assert record["key_id"] == (world.names[case.key] if case.key else None), record
    assert record["details"].get("key_ref") == (world.fill(case.key_ref) if case.key_ref
                                                else None), record


def test_a_refused_decrypt_names_the_version_its_ciphertext_names(world: World) -> None:
    """The record of a decrypt that failed says which version the ciphertext claimed (it was
    null, so an auditor could not tell a tampered new ciphertext from an old one)."""
    srv, enc = world.srv, world.names["enc"]
    status, _, out = srv.call("POST", f"/v1/keys/{enc}/encrypt", {"plaintext": B(b"x")},
                              role="service")
    assert status == 200
    prefix, _, blob = out["ciphertext"].rpartition(":")
    tampered = f"{prefix}:{'A' if blob[0] != 'A' else 'B'}{blob[1:]}"
    for ciphertext, version in ((tampered, out["key_version"]), ("fhsm:v9:AAAA", 9)):
        rid = f"refusal-{uuid.uuid4().hex}"
        status, _, _ = srv.call("POST", f"/v1/keys/{enc}/decrypt", {"ciphertext": ciphertext},
                                role="service", headers={"X-Request-ID": rid})
        assert 400 <= status < 500
        [record] = records_of(srv, rid)
        assert (record["action"], record["key_id"], record["key_version"]) == \
            ("crypto.decrypt", enc, version), record


def access_lines() -> dict[str, dict[str, Any]]:
    """This test's access lines (conftest points the access log at a buffer of its own), by
    request id."""
    ACCESS.flush()
    stream = stream_in_use()
    assert isinstance(stream, io.StringIO)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return {line["request_id"]: line for line in lines}


@pytest.fixture
def info_lines() -> Iterator[None]:
    """Access lines at INFO too (the 200s): the level in force, lowered for one test."""
    logger = logging.getLogger(LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)


@pytest.mark.usefixtures("info_lines")
def test_absolute_form_and_505_are_logged_and_audited_by_their_path(world: World) -> None:
    """An absolute-form target (RFC 9112 3.2.2) is served, logged and audited by its path, never
    by the URI; a 505 (HTTP/1.2, the HTTP/2 preface) keeps the method and path it named, and
    its access line is a warning: the client's mistake, not the server's error."""
    srv, enc = world.srv, world.names["enc"]
    uri = f"https://127.0.0.1:{srv.port}/v1/keys/{enc}".encode()
    ok, bad, old, preface = (f"{n}-{uuid.uuid4().hex}" for n in ("abs", "abs401", "v12", "pri"))
    token = srv.token().encode()
    head = WIRE_HEAD.replace(b"{token}", token)
    assert raw_status(srv, b"GET " + uri + b" HTTP/1.1\r\n"
                      + head.replace(b"{rid}", ok.encode()) + b"\r\n") == 200
    assert raw_status(srv, b"GET " + uri + b" HTTP/1.1\r\n"
                      + WIRE_HEAD.replace(b"{token}", b"x").replace(b"{rid}", bad.encode())
                      + b"\r\n") == 401
    assert raw_status(srv, f"GET /v1/keys/{enc} HTTP/1.2\r\n".encode()
                      + head.replace(b"{rid}", old.encode()) + b"\r\n") == 505
    assert raw_status(srv, b"PRI * HTTP/2.0\r\nX-Request-ID: " + preface.encode()
                      + b"\r\n\r\nSM\r\n\r\n") == 505
    [read] = records_of(srv, ok)
    [denied] = records_of(srv, bad)
    [refusal] = records_of(srv, old)
    assert (read["action"], read["outcome"], read["key_id"]) == ("key.read", "success", enc)
    assert denied["action"] == "auth.authenticate"
    assert denied["message"].startswith(f"GET /v1/keys/{enc}: "), denied
    assert refusal["message"].startswith("GET /v1/keys/{key}: 505 "), refusal  # its route
    assert not [r for r in (read, denied, refusal) if "https:" in json.dumps(r)]
    lines = access_lines()
    for rid, status in ((ok, 200), (bad, 401)):
        assert (lines[rid]["url.path"], lines[rid]["http.response.status_code"]) == (
            f"/v1/keys/{enc}", status)
    assert (lines[old]["level"], lines[old]["http.request.method"], lines[old]["url.path"],
            lines[old]["http.route"]) == ("warning", "GET", f"/v1/keys/{enc}", "/v1/keys/{key}")
    assert (lines[preface]["level"], lines[preface]["http.request.method_original"],
            lines[preface]["url.path"]) == ("warning", "PRI", "")


@pytest.mark.parametrize("extra,status", [
    (JSON + b"Content-Length: 99999999\r\n", 413),
    (b"Content-Type: text/plain\r\nContent-Length: 2\r\n", 415),
    (JSON + b"Content-Length: 2\r\nExpect: nope\r\n", 417),  # was charged to anonymous
])
def test_a_request_refused_while_read_names_its_caller_and_route(
        world: World, extra: bytes, status: int) -> None:
    """A valid token's holder sent it: the record is theirs (actor, role, correlation id),
    and names the route it was for, not an anonymous unmatched request."""
    rid = f"read-refusal-{uuid.uuid4().hex}"
    parent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    data = wire(b"POST /v1/keys HTTP/1.1", extra + b"X-Correlation-ID: corr-415\r\n"
                + b"traceparent: " + parent + b"\r\n", b"" if status == 413 else b"{}")
    data = data.replace(b"{rid}", rid.encode()).replace(b"{token}", world.srv.token().encode())
    head = raw_head(world.srv, data).lower()
    assert head.startswith(b"http/1.1 %d " % status)
    # the answer says the id was recorded (it was), as a routed answer does
    for line in (b"x-correlation-id: corr-415", b"traceparent: " + parent,
                 b"cache-control: no-store"):
        assert b"\r\n" + line + b"\r\n" in head + b"\r\n", head
    [record] = records_of(world.srv, rid)
    assert record["actor"] != "anonymous" and record["role"] == "administrator", record
    assert record["correlation_id"] == "corr-415"
    assert record["message"].startswith(f"POST /v1/keys: {status} "), record


def test_the_matrix_covers_every_v1_route(world: World) -> None:
    routed = {(r.method, r.template) for r in world.srv.rt.router.routes()
              if r.template.startswith("/v1/") and r.template != "/v1/openapi.json"
              and not is_vault(r.template)}  # test_transit_hvac.py
    stated = {(m, p.replace("{enc}", "{key}").replace("{sig}", "{key}")
               .replace("{approval}", "{id}").replace("/versions/1/", "/versions/{n}/"))
              for m, p, *_ in ROUTES}
    assert routed == stated


def test_an_operators_refused_token_revoke_leaves_one_record(world: World) -> None:
    """Regression: the handler recorded token.revoke denied and the HTTP layer request.refused."""
    rid = f"revoke-{uuid.uuid4().hex}"
    status, _, reply = world.srv.call("POST", "/v1/tokens/revoke", {"jti": "some-jti"},
                                      role="operator", headers={"X-Request-ID": rid})
    assert status == 403 and reply["error"]["code"] == "forbidden"
    [record] = records_of(world.srv, rid)
    assert (record["action"], record["outcome"], record["actor"]) == \
        ("token.revoke", "denied", "operator-user")


@pytest.mark.parametrize("method,path,raw", [
    ("POST", "/v1/keys/{enc}/rollback", b'{"version":"x"}'),
    ("POST", "/v1/keys", b"{}"),
    ("POST", "/v1/tokens/revoke", b"{}"),
    ("POST", "/v1/keys/{enc}/rotate?bogus=1", b"{}"),
])
def test_a_role_never_allowed_hears_403_before_its_body_is_read(
        world: World, method: str, path: str, raw: bytes) -> None:
    """A malformed body or query from a role that may never call the route is its 403 (the
    v1 interface: valid token, role not allowed), recorded as that action, denied, with the
    key as named: an auditor filtering denials sees the probe."""
    rid = f"role-first-{uuid.uuid4().hex}"
    target = path.replace("{enc}", world.names["enc"])
    status, _, reply = world.srv.call(method, target, raw=raw, role="service",
                                      headers={"X-Request-ID": rid})
    assert status == 403 and reply["error"]["code"] == "forbidden", reply
    [record] = records_of(world.srv, rid)
    action = {"rollback": "key.rollback", "rotate": "key.rotate", "revoke": "token.revoke"}
    expected = next((a for word, a in action.items() if word in path), "key.create")
    assert (record["action"], record["outcome"]) == (expected, "denied"), record
    if "{enc}" in path:
        assert record["key_id"] == world.names["enc"]  # named, as after a parsed body


def test_a_parked_request_leaves_its_approval_request_only(world: World) -> None:
    key = create(world.srv, f"parked-{uuid.uuid4().hex[:8]}", tags=("dual",))
    rid = f"parked-{uuid.uuid4().hex}"
    status, _, reply = world.srv.call("POST", f"/v1/keys/{key}/destroy", {},
                                      headers={"X-Request-ID": rid})
    assert status == 202, reply
    records = records_of(world.srv, rid)  # the approval's intent, then its confirmation
    assert [(r["action"], r["outcome"], r["key_id"]) for r in records] == \
        [("approval.requested", "intent", key), ("approval.requested", "success", key)]


# ---- rate limits: a server of their own -----------------------------------------------------

LIMITED = {("rate_limit", "requests_per_second"): 100000.0, ("rate_limit", "burst"): 100000,
           ("rate_limit", "auditor_requests_per_second"): 0.01, ("rate_limit", "auditor_burst"): 1,
           ("rate_limit", "ip_requests_per_second"): 0.01, ("rate_limit", "ip_burst"): 1}


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[LiveServer]:
    srv = LiveServer(tmp_path, overrides=LIMITED)
    yield srv
    srv.close()


def call_with_id(srv: LiveServer, path: str, role: str | None) -> tuple[int, str]:
    rid = f"limited-{uuid.uuid4().hex}"
    return srv.call("GET", path, role=role, headers={"X-Request-ID": rid})[0], rid


def test_429s_are_recorded_one_a_second_with_the_count_left_out(limited: LiveServer) -> None:
    """An actor's or an address's first 429 in a second is recorded, the next ones only
    counted, in the next record (``unrecorded_refusals``): an outside tester's one valid token
    at its limit made 1.5 MB of log a second, one record per 429, a flood the disk would
    carry until the audit failed every request closed."""
    assert call_with_id(limited, "/ui/nowhere", None)[0] == 404  # spends the address's token
    status, rid = call_with_id(limited, "/ui/nowhere", None)
    assert status == 429
    [record] = records_of(limited, rid)
    assert (record["action"], record["outcome"], record["actor"]) == \
        ("ratelimit.refused", "denied", "anonymous")
    status, rid = call_with_id(limited, "/v1/nowhere", None)  # a 404 that became a 429
    assert status == 429 and len(records_of(limited, rid)) <= 1
    assert call_with_id(limited, "/v1/keys", "auditor")[0] == 200
    first = [call_with_id(limited, "/v1/keys", "auditor") for _ in range(4)]
    assert [status for status, _ in first] == [429] * 4
    recorded = [records_of(limited, rid) for _, rid in first]
    assert [len(found) for found in recorded] == [1, 0, 0, 0]  # the same second
    assert (recorded[0][0]["action"], recorded[0][0]["actor"]) == \
        ("ratelimit.refused", "auditor-user")
    assert "unrecorded_refusals" not in recorded[0][0]["details"]
    time.sleep(1.05)
    status, rid = call_with_id(limited, "/v1/keys", "auditor")
    assert status == 429  # 0.01 tokens a second (LIMITED): still empty
    [record] = records_of(limited, rid)
    assert record["details"]["unrecorded_refusals"] == 3


def test_the_dashboard_files_and_probes_spend_nothing_and_misses_pay(
        limited: LiveServer) -> None:
    """An address with one token loads the page and its files again and again (an office
    behind one address saw a blank page after a few loads); its first miss spends the token."""
    from ferrohsm.api.handlers.dashboard import load_site
    site = load_site()
    paths = ["/", "/ui", "/ui/", "/healthz", "/readyz",
             *(f"/ui/v/{site.version}/{name}" for name in site.files if name != "index.html")]
    for _ in range(3):
        for path in paths:
            assert call_with_id(limited, path, None)[0] not in (404, 429), path
    assert call_with_id(limited, "/ui/nowhere", None)[0] == 404
    assert call_with_id(limited, "/ui/nowhere", None)[0] == 429
    assert call_with_id(limited, f"/ui/v/{site.version}/app.js", None)[0] == 200


def test_framing_refusals_spend_the_address_tokens(limited: LiveServer) -> None:
    """A flood of malformed requests is rate limited like any anonymous refusal: the first is
    recorded as itself, then the address answers 429 (sampled), never an unbounded log."""
    data = wire(b"GET /v1/keys HTTP/1.1", b"X-A : 1\r\n")
    first = f"flood-{uuid.uuid4().hex}"
    assert raw_status(limited, data.replace(b"{rid}", first.encode())
                      .replace(b"{token}", b"x")) == 400
    assert [r["action"] for r in records_of(limited, first)] == ["request.refused"]
    statuses = []
    for n in range(5):
        rid = f"flood-{n}-{uuid.uuid4().hex}".encode()
        statuses.append(raw_status(limited, data.replace(b"{rid}", rid)
                                   .replace(b"{token}", b"x")))
    assert set(statuses) == {429}


def test_a_malformed_path_parameter_spends_the_address_tokens(limited: LiveServer) -> None:
    """A path the router takes but whose parameter cannot be one (a NUL in a key reference)
    is refused like a 404: the address pays, so a flood turns into sampled 429s, not one
    durable record per request."""
    for path in ("/v1/keys/%00", "/v1/transit/keys/%00"):
        assert call_with_id(limited, path, None)[0] in (400, 429)
    statuses = [call_with_id(limited, "/v1/keys/%00", None)[0] for _ in range(5)]
    assert set(statuses) == {429}


def test_a_bad_approval_header_from_an_exhausted_actor_is_a_429(limited: LiveServer) -> None:
    """An actor over its limit gets 429 for every request, whatever else is wrong with it: a
    malformed X-Approval-ID is no way around the limit."""
    assert call_with_id(limited, "/v1/keys", "auditor")[0] == 200  # the auditor's one token
    rids = [f"limited-{uuid.uuid4().hex}" for _ in range(3)]
    for rid in rids:
        status = limited.call("GET", "/v1/keys", role="auditor",
                              headers={"X-Request-ID": rid, "X-Approval-ID": "not-a-uuid"})[0]
        assert status == 429
    [record] = records_of(limited, rids[0])  # the next ones in that second: counted, sampled
    assert record["action"] == "ratelimit.refused"
    assert not any(records_of(limited, rid) for rid in rids[1:])


def test_a_probe_refused_for_its_approval_header_pays_like_any_refusal(
        limited: LiveServer) -> None:
    """Probes spend no token when they answer; refused (a malformed X-Approval-ID) they do, so
    a flood of them ends in 429s instead of one record each."""
    statuses = []
    for _ in range(6):
        rid = f"probe-{uuid.uuid4().hex}"
        statuses.append(limited.call("GET", "/healthz", role=None,
                                     headers={"X-Request-ID": rid,
                                              "X-Approval-ID": "not-a-uuid"})[0])
    assert statuses[0] == 400 and set(statuses[1:]) == {429}, statuses
    assert limited.call("GET", "/healthz", role=None)[0] == 200  # a plain probe still answers
