"""Issue 18, observability, against live servers: the access log of a `ferrohsm quickstart`
process on the shipped defaults (every line out at SIGTERM, no secret in any), its spans sent
over OTLP/HTTP to a real receiver in this test (decoded with opentelemetry-proto), and
/metrics of a live server read by prometheus_client's parser."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live import LiveServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/otlpreceiver.py
from otlpreceiver import Receiver

from ferrohsm.tls.context import client_context

ROOT = Path(__file__).resolve().parents[2]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
PLAINTEXT = b"observability-plaintext-7d1e5c"


# ---- a served process ------------------------------------------------------------------------

class Served:
    """`ferrohsm quickstart` with the shipped [logging] level = "INFO", stderr kept in a file."""

    def __init__(self, tmp: Path, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.log = tmp / "server.log"
        self.data = tmp / "data"
        base = {k: v for k, v in os.environ.items()  # stderr buffered, as a service has it
                if not k.startswith(("FERROHSM_", "OTEL_")) and k != "PYTHONUNBUFFERED"}
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ferrohsm", "quickstart", "--data-dir", str(tmp / "data"),
                 "--listen", "127.0.0.1:0", *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                stderr=err, env=base | env)
        self.exports: dict[str, str] = {}
        assert self.proc.stdout is not None
        while len(self.exports) < 3:
            line = self.proc.stdout.readline()
            assert line, self.log.read_text()
            name, _, value = line.strip().removeprefix("export ").partition("=")
            self.exports[name] = value
        self.token = self.exports["FERROHSM_TOKEN"]
        host_port = self.exports["FERROHSM_URL"].removeprefix("https://")
        self.port = int(host_port.rpartition(":")[2])
        self.ctx = client_context(self.exports["FERROHSM_CA_CERT"])

    def call(self, method: str, path: str, body: object = None, token: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
        hdrs = {"Authorization": f"Bearer {token or self.token}", **(headers or {})}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        return (resp.status, {k.lower(): v for k, v in resp.getheaders()},
                json.loads(payload) if payload else None)

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM, wait, and the access lines it wrote."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0
        if self.proc.stdout:
            self.proc.stdout.close()
        lines = [json.loads(x) for x in self.log.read_text().splitlines() if x.startswith("{")]
        return [x for x in lines if x.get("logger") == "ferrohsm.access"]


def traffic(srv: Served) -> dict[str, Any]:
    """Requests of every kind; returns what the test needs to find them again."""
    status, _, key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                   "usage": "encrypt"},
                              headers={"X-Request-ID": "obs-create"})
    assert status == 201
    service = subprocess.run(
        [sys.executable, "-m", "ferrohsm", "token", "issue", "--data-dir",
         str(srv.data), "--subject", "obs-svc",
         "--role", "service"], cwd=ROOT, capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("FERROHSM_", "OTEL_"))}
    ).stdout.strip()
    status, headers, _ = srv.call(
        "POST", f"/v1/keys/{key['id']}/encrypt",
        {"plaintext": base64.b64encode(PLAINTEXT).decode()}, token=service,
        headers={"X-Request-ID": "obs-encrypt", "User-Agent": "obs-test/1.0",
                 "traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "vendor=opaque1"})
    assert status == 200 and headers["traceparent"] == f"00-{TRACE}-{PARENT}-01"
    status, headers, _ = srv.call("GET", "/v1/keys", headers={
        "X-Request-ID": "obs-badparent", "traceparent": f"00-{'0' * 32}-{PARENT}-01"})
    assert status == 200 and "traceparent" not in headers  # invalid: ignored, not echoed
    assert srv.call("GET", "/v1/keys", token="not.a.token",  # noqa: S106  bogus on purpose
                    headers={"X-Request-ID": "obs-401"})[0] == 401
    assert srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt"},
                    token=service, headers={"X-Request-ID": "obs-403"})[0] == 403
    # made-up methods: one label (_OTHER), not a metric series or span name each
    assert srv.call("BREWCOFFEE", "/v1/keys", headers={"X-Request-ID": "obs-brew"})[0] == 405
    assert srv.call("DELETE", "/v1/keys", headers={"X-Request-ID": "obs-405"})[0] == 405
    assert srv.call("GET", "/nowhere", headers={"X-Request-ID": "obs-404"})[0] == 404
    # refused while being read (the media type): still a line, a metric and a span
    conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=srv.ctx, timeout=10)
    conn.request("POST", "/v1/keys", body=b'{"algorithm":"aes-256-gcm","usage":"encrypt"}',
                 headers={"Authorization": f"Bearer {srv.token}", "Content-Type": "text/plain",
                          "X-Request-ID": "obs-415"})
    assert conn.getresponse().status == 415
    conn.close()
    assert srv.call("GET", "/healthz", headers={  # a UTF-8 user agent, as sent
        "X-Request-ID": "obs-agent", "User-Agent": "caf\u00e9/1".encode()})[0] == 200  # type: ignore[dict-item]
    return {"key": key["id"], "service": service}


# ---- logs --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_access_log_of_a_served_process(tmp_path: Path) -> None:
    srv = Served(tmp_path, {})
    try:
        seen = traffic(srv)
        for i in range(60):  # the last ones still queued in the writer's batch at SIGTERM
            assert srv.call("GET", "/v1/keys?limit=1",
                            headers={"X-Request-ID": f"obs-burst-{i}"})[0] == 200
        exposition = metrics_text(srv)
        assert "BREWCOFFEE" not in exposition
        assert metric(srv, 'ferrohsm_http_requests_total{route="/v1/keys",method="_OTHER",'
                           'status="405"}') == 1
        # the route it was for, though refused before any route ran
        assert metric(srv, 'ferrohsm_http_requests_total{route="/v1/keys",method="POST",'
                           'status="415"}') == 1
    finally:
        lines = srv.stop()
    by_id = {x["request_id"]: x for x in lines}
    assert all(f"obs-burst-{i}" in by_id for i in range(60))  # none lost at shutdown
    encrypt = by_id["obs-encrypt"]
    assert encrypt["level"] == "info" and encrypt["http.response.status_code"] == 200
    assert encrypt["http.route"] == "/v1/keys/{key}/encrypt"
    assert encrypt["url.path"] == f"/v1/keys/{seen['key']}/encrypt"
    assert (encrypt["user.id"], encrypt["user.roles"]) == ("obs-svc", ["service"])
    assert encrypt["user_agent.original"] == "obs-test/1.0"
    assert encrypt["server.port"] == srv.port
    assert encrypt["trace_id"] == TRACE and encrypt["trace_flags"] == "01"
    assert len(encrypt["span_id"]) == 16 and encrypt["span_id"] != PARENT  # a span of its own
    bad = by_id["obs-badparent"]
    assert bad["trace_id"] != "0" * 32 and len(bad["trace_id"]) == 32
    assert bad["trace_flags"] == "00"
    assert by_id["obs-401"]["level"] == "warning"
    assert by_id["obs-401"]["error.type"] == "unauthenticated"
    assert by_id["obs-403"]["level"] == "warning"
    brew = by_id["obs-brew"]
    assert (brew["http.request.method"], brew["http.request.method_original"],
            brew["http.route"]) == ("_OTHER", "BREWCOFFEE", "/v1/keys")
    assert (by_id["obs-405"]["http.route"], by_id["obs-404"]["http.route"]) == ("/v1/keys", None)
    assert by_id["obs-415"]["http.response.status_code"] == 415
    assert by_id["obs-415"]["error.type"] == "unsupported_media_type"
    assert by_id["obs-415"]["http.route"] == "/v1/keys"
    assert by_id["obs-404"]["http.route"] is None
    assert by_id["obs-agent"]["user_agent.original"] == "caf\u00e9/1"
    text = srv.log.read_text()
    for secret in (seen["service"], srv.token, base64.b64encode(PLAINTEXT).decode(),
                   PLAINTEXT.decode(), seen["service"].rsplit(".", 1)[1]):
        assert secret not in text


# ---- traces ------------------------------------------------------------------------------------

@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


@pytest.mark.slow
def test_a_served_requests_access_line_is_formatted_on_the_event_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The composition root gives the loop the application's end-of-turn work: an inline
    request's line is formatted by the loop at the end of the turn that answered it (cheaper
    than by the writer thread, whose interval here is an hour; an idle loop turns only every
    30 s here), and written whole by flush."""
    import io
    import logging
    import threading

    from ferrohsm.api import server as server_module
    from ferrohsm.telemetry.access import AccessLog, Values
    monkeypatch.setattr(server_module, "_MAX_WAIT", 30.0)

    class Watched(AccessLog):
        def _format(self, queued: list[Values | str]) -> list[str]:
            formatters.append(threading.current_thread().name)
            return super()._format(queued)

    formatters: list[str] = []
    logger = logging.getLogger("ferrohsm.test-loop-access")
    logger.setLevel(logging.INFO)
    out = io.StringIO()
    live = LiveServer(tmp_path)
    live.rt.app.access = Watched(out, interval=3600, logger=logger)
    try:
        status, _, _ = live.call("GET", "/v1/keys", role="auditor")
        assert status == 200
        deadline = time.monotonic() + 0.5
        while not formatters and time.monotonic() < deadline:
            time.sleep(0.01)
        assert formatters == ["ferrohsm-loop"]
        live.rt.app.access.flush()
        line = json.loads(out.getvalue())
        assert line["http.route"] == "/v1/keys" and line["http.response.status_code"] == 200
    finally:
        live.rt.app.access.close()
        live.close()


def test_spans_exported_over_otlp_http(tmp_path: Path, receiver: Receiver) -> None:
    srv = Served(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                            "OTEL_SERVICE_NAME": "hsm-under-test",
                            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=obs-test",
                            "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=obs"})
    try:
        traffic(srv)
        assert len(exporter_children(srv.proc.pid)) == 1  # one exporter process, started once
        sent = wait_for(lambda: metric(srv, 'ferrohsm_trace_spans_total{outcome="sent"}') >= 4)
        assert sent and metric(srv, 'ferrohsm_trace_spans_total{outcome="dropped"}') == 0
    finally:
        lines = srv.stop()  # the exporter child exports what is queued at shutdown
    spans = receiver.spans()
    assert receiver.headers and all(h.get("x-tenant") == "obs" for h in receiver.headers)
    assert {s["resource"]["service.name"] for s in spans} == {"hsm-under-test"}
    from ferrohsm import __version__
    assert {(s["resource"]["service.version"], s["resource"]["deployment.environment"])
            for s in spans} == {(__version__, "obs-test")}
    assert {s["scope"] for s in spans} == {"ferrohsm"}
    line = next(x for x in lines if x["request_id"] == "obs-encrypt")
    server = next(s for s in spans if s["attributes"].get("ferrohsm.request_id") == "obs-encrypt")
    assert server["name"] == "POST /v1/keys/{key}/encrypt" and server["kind"] == 2  # SERVER
    assert (server["trace_id"], server["parent"]) == (TRACE, PARENT)  # from traceparent
    assert server["state"] == "vendor=opaque1"  # tracestate kept
    assert (line["trace_id"], line["span_id"]) == (server["trace_id"], server["span_id"])
    attrs = server["attributes"]
    assert (attrs["http.request.method"], attrs["http.route"], attrs["http.response.status_code"],
            attrs["user.id"], attrs["user_agent.original"], attrs["server.port"]) == (
        "POST", "/v1/keys/{key}/encrypt", 200, "obs-svc", "obs-test/1.0", srv.port)
    assert "enduser.id" not in attrs
    children = {s["name"]: s for s in spans if s["parent"] == server["span_id"]}
    assert set(children) == {"authenticate", "ferrohsm encrypt", "audit.flush"}, children
    for child in children.values():
        assert child["trace_id"] == TRACE and child["kind"] == 1  # INTERNAL
        assert server["start"] <= child["start"] <= child["end"] <= server["end"]
    assert children["audit.flush"]["attributes"]["ferrohsm.audit.records"] >= 1
    create = next(s for s in spans if s["attributes"].get("ferrohsm.request_id") == "obs-create")
    worker = [s for s in spans if s["parent"] == create["span_id"]]  # a worker's request too
    assert {s["name"] for s in worker} == {"authenticate", "ferrohsm createKey", "audit.flush"}
    for flush in (s for s in worker if s["name"] == "audit.flush"):
        assert create["start"] <= flush["start"] <= flush["end"] <= create["end"]
    refused = next(s for s in spans if s["attributes"].get("ferrohsm.request_id") == "obs-401")
    assert refused["attributes"]["error.type"] == "unauthenticated"
    assert refused["attributes"]["http.response.status_code"] == 401
    assert {s["name"] for s in spans if s["parent"] == refused["span_id"]} == {
        "authenticate", "audit.flush"}  # its refusal's record is flushed too
    by_request = {s["attributes"].get("ferrohsm.request_id"): s for s in spans
                  if s["kind"] == 2}
    brew = by_request["obs-brew"]
    assert brew["name"] == "HTTP /v1/keys"
    assert (brew["attributes"]["http.request.method"],
            brew["attributes"]["http.request.method_original"]) == ("_OTHER", "BREWCOFFEE")
    assert by_request["obs-404"]["name"] == "GET"  # no route: the method alone
    assert "http.route" not in by_request["obs-404"]["attributes"]
    assert by_request["obs-415"]["attributes"]["http.response.status_code"] == 415
    for refused_early in ("obs-404", "obs-405", "obs-415"):  # a valid token: checked, and shown
        request = by_request[refused_early]
        assert request["attributes"]["user.id"] == "quickstart-admin", refused_early
        assert "authenticate" in {s["name"] for s in spans if s["parent"] == request["span_id"]}
    assert by_request["obs-agent"]["attributes"]["user_agent.original"] == "caf\u00e9/1"
    fresh = next(s for s in spans if s["attributes"].get("ferrohsm.request_id") == "obs-badparent")
    assert fresh["parent"] == "" and fresh["trace_id"] != "0" * 32  # invalid header: new trace
    text = json.dumps(spans)
    assert base64.b64encode(PLAINTEXT).decode() not in text and srv.token not in text


def exporter_children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the server's span exporter, when OTLP export is on)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def metrics_text(srv: Served) -> str:
    """The served process's /metrics exposition."""
    conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=srv.ctx, timeout=10)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {srv.token}"})
    text = conn.getresponse().read().decode()
    conn.close()
    return text


def metric(srv: Served, series: str) -> float:
    """One series of the served process's /metrics (-1 when absent)."""
    text = metrics_text(srv)
    values = [line.rsplit(" ", 1)[1] for line in text.splitlines()
              if line.startswith(series + " ")]
    return float(values[0]) if values else -1.0


def wait_for(check: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow
def test_sampler_decides_which_requests_leave_spans(tmp_path: Path, receiver: Receiver) -> None:
    """parentbased_always_off: only a caller's sampled traceparent is traced; the rest leave
    no span at all, while every access line still carries trace and span ids."""
    srv = Served(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                            "OTEL_TRACES_SAMPLER": "parentbased_always_off"})
    try:
        for request_id, flags in (("smp-sampled", "01"), ("smp-unsampled", "00"),
                                  ("smp-none", None)):
            headers = {"X-Request-ID": request_id}
            if flags is not None:
                headers["traceparent"] = f"00-{TRACE}-{PARENT}-{flags}"
            assert srv.call("GET", "/v1/keys", headers=headers)[0] == 200
    finally:
        lines = srv.stop()
    spans = receiver.spans()
    ids = {s["attributes"].get("ferrohsm.request_id") for s in spans} - {None}
    assert ids == {"smp-sampled"}
    server = next(s for s in spans if s["attributes"].get("ferrohsm.request_id"))
    assert (server["trace_id"], server["parent"]) == (TRACE, PARENT)
    assert sorted(s["name"] for s in spans) == [  # the list's audit record is flushed too
        "GET /v1/keys", "audit.flush", "authenticate", "ferrohsm listKeys"]
    by_id = {x["request_id"]: x for x in lines}
    assert by_id["smp-sampled"]["span_id"] == server["span_id"]
    assert (by_id["smp-unsampled"]["trace_id"], by_id["smp-unsampled"]["trace_flags"]) == (
        TRACE, "00")
    assert len(by_id["smp-none"]["span_id"]) == 16


@pytest.mark.slow
def test_a_sampled_caller_our_sampler_leaves_out_is_logged_unsampled(
        tmp_path: Path, receiver: Receiver) -> None:
    """always_off drops a caller's sampled trace: the access line's flags say what this server
    did (not sampled, no span), not what the caller asked for: 00, whatever other bits the
    caller set (the random bit, bits no version defines)."""
    srv = Served(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                            "OTEL_TRACES_SAMPLER": "always_off"})
    flags = ("01", "03", "fe", "ff")
    try:
        for flag in flags:
            headers = {"X-Request-ID": f"off-sampled-{flag}",
                       "traceparent": f"00-{TRACE}-{PARENT}-{flag}"}
            assert srv.call("GET", "/v1/keys", headers=headers)[0] == 200
    finally:
        lines = srv.stop()
    for flag in flags:
        line = next(x for x in lines if x["request_id"] == f"off-sampled-{flag}")
        assert (line["trace_id"], line["trace_flags"]) == (TRACE, "00"), flag
    assert not [s for s in receiver.spans()
                if str(s["attributes"].get("ferrohsm.request_id")).startswith("off-sampled")]


def test_a_request_parked_for_approval_is_no_error(tmp_path: Path, receiver: Receiver) -> None:
    """202 approval_required is an answer, not a failure: no error.type in its access line or
    span (the semantic conventions set it only on a failed request)."""
    config = tmp_path / "policy.toml"
    config.write_text('[policy.tags.pci]\napprovals_required = 1\napproval_actions = ["revoke"]\n')
    srv = Served(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}, ("--config", str(config)))
    try:
        status, _, key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                       "usage": "encrypt", "tags": ["pci"]})
        assert status == 201
        status, _, body = srv.call("POST", f"/v1/keys/{key['id']}/revoke", {},
                                   headers={"X-Request-ID": "obs-parked"})
        assert status == 202, body
    finally:
        lines = srv.stop()
    line = next(x for x in lines if x["request_id"] == "obs-parked")
    assert line["http.response.status_code"] == 202 and line["error.type"] is None
    assert wait_for(lambda: any(s["attributes"].get("ferrohsm.request_id") == "obs-parked"
                                for s in receiver.spans()))
    spans = receiver.spans()
    server = next(s for s in spans if s["attributes"].get("ferrohsm.request_id") == "obs-parked")
    assert "error.type" not in server["attributes"]
    children = [s for s in spans if s["parent"] == server["span_id"]]
    assert children and not [s for s in children if "error.type" in s["attributes"]]


@pytest.mark.slow
def test_a_killed_exporter_is_restarted(tmp_path: Path, receiver: Receiver) -> None:
    srv = Served(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                            "OBS_SECRET_DSN": "postgres://u:pw@db/hsm"})
    try:
        [first] = exporter_children(srv.proc.pid)
        environ = Path(f"/proc/{first}/environ").read_bytes().split(b"\0")
        assert f"OTEL_EXPORTER_OTLP_ENDPOINT={receiver.url}".encode() in environ
        assert not [v for v in environ if v.startswith((b"OBS_SECRET", b"FERROHSM_"))]
        os.kill(first, signal.SIGKILL)
        assert srv.call("GET", "/v1/keys", headers={"X-Request-ID": "during"})[0] == 200
        assert wait_for(lambda: exporter_children(srv.proc.pid) not in ([], [first]))
        assert metric(srv, "ferrohsm_trace_exporter_restarts_total") == 1
        assert srv.call("GET", "/v1/keys", headers={"X-Request-ID": "after"})[0] == 200
    finally:
        srv.stop()
    exported = {s["attributes"].get("ferrohsm.request_id") for s in receiver.spans()}
    assert "after" in exported
    warnings = [json.loads(x) for x in srv.log.read_text().splitlines()
                if "span exporter process exited" in x]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"


@pytest.mark.slow
def test_a_collector_that_is_down_is_said_once_and_counted(tmp_path: Path) -> None:
    """Spans the exporter cannot deliver: one warning with the cause (not the SDK's warning
    for every retry of every batch), counted as failed on /metrics, and one line when the
    collector is back; requests are answered throughout."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    srv = Served(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                            "OTEL_EXPORTER_OTLP_TIMEOUT": "1", "OTEL_BSP_SCHEDULE_DELAY": "50"})
    receiver = None
    try:
        for n in range(5):
            assert srv.call("GET", "/v1/keys", headers={"X-Request-ID": f"down-{n}"})[0] == 200
        failed = 'ferrohsm_trace_spans_total{outcome="failed"}'
        assert wait_for(lambda: metric(srv, failed) >= 1, 30), metric(srv, failed)
        for n in range(5):  # more batches fail meanwhile: still one warning
            assert srv.call("GET", "/v1/keys", headers={"X-Request-ID": f"down2-{n}"})[0] == 200
            time.sleep(0.3)
        receiver = Receiver(port)
        assert wait_for(lambda: bool(srv.call("GET", "/v1/keys", headers={
            "X-Request-ID": "back"})) and "back" in {
            s["attributes"].get("ferrohsm.request_id") for s in receiver.spans()}, 30)
    finally:
        srv.stop()
        if receiver is not None:
            receiver.close()
    text = srv.log.read_text()
    failing = [json.loads(x) for x in text.splitlines() if "span export failing" in x]
    assert len(failing) == 1 and failing[0]["level"] == "warning", failing
    assert "not delivered so far" in failing[0]["message"] and "latest: " in failing[0]["message"]
    assert text.count("span export works again") == 1
    assert not [x for x in text.splitlines() if '"logger":"opentelemetry' in x]  # the SDK's own

def test_no_opentelemetry_import_and_no_span_when_otlp_is_off(tmp_path: Path) -> None:
    """Zero cost when off: a served request imports nothing of the SDK and makes no span; no
    exporter thread or process is started."""
    script = f"""
import sys
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests" / "integration")!r}]
from pathlib import Path
from live import LiveServer
srv = LiveServer(Path({str(tmp_path)!r}))
try:
    assert srv.rt.app.tracer is None
    status, _, key = srv.call("POST", "/v1/keys", {{"algorithm": "aes-256-gcm", "usage": "encrypt"}})
    assert status == 201
    assert srv.call("POST", "/v1/keys/" + key["id"] + "/encrypt", {{"plaintext": "eHh4"}},
                    role="service", headers={{"traceparent": "00-{TRACE}-{PARENT}-01"}})[0] == 200
    loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
    assert not loaded, loaded
    import os, threading
    assert not [t.name for t in threading.enumerate() if t.name == "ferrohsm-span-export"]
    assert not any(open(f"/proc/self/task/{{t}}/children").read().split()
                   for t in os.listdir("/proc/self/task"))
finally:
    srv.close()
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


# ---- metrics -----------------------------------------------------------------------------------

def test_metrics_of_a_live_server(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families
    srv = LiveServer(tmp_path, key_store="filesystem")
    try:
        first = srv.call("GET", "/metrics", role=None)[2].decode()
        parsed = {f.name: f for f in text_string_to_metric_families(first)}
        # present from the start, at zero
        crypto = {(s.labels["algorithm"], s.labels["operation"], s.labels["outcome"]): s.value
                  for s in parsed["ferrohsm_crypto_operations"].samples}
        assert crypto[("aes-256-gcm", "encrypt", "success")] == 0
        assert crypto[("ec-p256", "sign", "error")] == 0
        assert crypto[("aes-256-gcm", "unwrap", "success")] == 0
        # only what an algorithm can do: no AES signatures, no EC encryption
        assert not [k for k in crypto if k[:2] in {("aes-256-gcm", "sign"),
                                                   ("ec-p256", "encrypt"), ("rsa-2048", "wrap")}]
        assert len(crypto) == 2 * (4 + 2 * 4)  # AES: 4 operations, RSA and EC: 2 each
        requests = {(s.labels["route"], s.labels["method"], s.labels["status"]): s.value
                    for s in parsed["ferrohsm_http_requests"].samples}
        assert requests[("/v1/keys/{key}/encrypt", "POST", "200")] == 0
        assert requests[("/v1/keys", "POST", "201")] == 0  # each route at its success status
        for error in ("401", "403", "429", "503"):  # and at the errors its document names
            assert requests[("/v1/keys/{key}/encrypt", "POST", error)] == 0, error
        assert {s.labels["reason"] for s in parsed["ferrohsm_auth_failures"].samples} >= {
            "expired", "signature", "revoked"}
        keys = {s.labels["state"]: s.value for s in parsed["ferrohsm_keys"].samples}
        assert keys == {"active": 0, "revoked": 0, "destroy_scheduled": 0, "destroyed": 0}
        assert parsed["ferrohsm_approvals_pending"].samples[0].value == 0
        status, _, key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                       "usage": "encrypt"})
        assert status == 201
        for _ in range(3):
            assert srv.call("POST", f"/v1/keys/{key['id']}/encrypt", {"plaintext": "eHh4"},
                            role="service")[0] == 200
        text = srv.call("GET", "/metrics", role=None)[2].decode()
    finally:
        srv.close()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    for family in parsed.values():
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
    crypto = {(s.labels["algorithm"], s.labels["operation"], s.labels["outcome"]): s.value
              for s in parsed["ferrohsm_crypto_operations"].samples}
    assert crypto[("aes-256-gcm", "encrypt", "success")] == 3
    assert {s.labels["state"]: s.value for s in parsed["ferrohsm_keys"].samples}["active"] == 1
    counts = {s.name: s.value for s in parsed["ferrohsm_audit_fsync_duration_seconds"].samples
              if not s.name.endswith("_bucket")}
    assert counts["ferrohsm_audit_fsync_duration_seconds_count"] >= 1
    batches = {s.name: s.value for s in parsed["ferrohsm_audit_fsync_batch_records"].samples
               if not s.name.endswith("_bucket")}
    assert batches["ferrohsm_audit_fsync_batch_records_sum"] >= 4  # create + 3 encrypts
    for name in ("ferrohsm_build_info", "process_cpu_seconds", "process_resident_memory_bytes",
                 "process_open_fds", "process_start_time_seconds"):
        assert parsed[name].samples, name
