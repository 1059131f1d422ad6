"""GET /readyz apart from /healthz, GET / to the dashboard, and HSTS on every answer, against a
live server over real TLS: not ready until started, ready, not ready while the audit log refuses
records (a full disk, RLIMIT_FSIZE) though still alive, and not ready once shutdown began."""

from __future__ import annotations

import contextlib
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

from live import LiveServer

from ferrohsm import app as wiring

HSTS = "max-age=31536000"


@contextlib.contextmanager
def full_disk(srv: LiveServer) -> Iterator[None]:
    """Writes that grow the live audit segment fail (EFBIG) until the block ends."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    live = sorted((srv.data_dir / "audit").glob("audit-*.jsonl"))[-1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (live.stat().st_size + 10, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_readiness_follows_start_audit_health_and_shutdown(tmp_path: Path) -> None:
    srv = LiveServer(tmp_path, key_store="filesystem")
    try:
        status, headers, body = srv.call("GET", "/readyz", role=None)
        assert status == 503 and body["status"] == "not_ready"
        assert body["checks"] == {"started": False, "store_open": True, "audit_writable": True,
                                  "tls_certificate": False}
        assert headers["strict-transport-security"] == HSTS
        wiring.wire_tls(srv.rt, wiring.tls_provider(srv.config))  # as `ferrohsm serve` does
        srv.rt.serving.set()
        status, _, body = srv.call("GET", "/readyz", role=None)
        assert status == 200 and body == {"status": "ready", "checks": {
            "started": True, "store_open": True, "audit_writable": True,
            "tls_certificate": True}}

        key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt"})[2]
        with full_disk(srv):
            status, headers, _ = srv.call("POST", f"/v1/keys/{key['id']}/rotate")
            assert status == 503 and headers["strict-transport-security"] == HSTS
            ready = srv.call("GET", "/readyz", role=None)
            health = srv.call("GET", "/healthz", role=None)
            alive = srv.call("GET", "/livez", role=None)
        assert ready[0] == 503 and ready[2]["checks"]["audit_writable"] is False
        assert health[0] == 503 and health[2]["status"] == "degraded"  # says why
        assert alive[0] == 200  # the liveness probe: a restart would not free the disk
        assert srv.call("POST", f"/v1/keys/{key['id']}/rotate")[0] == 200  # a good write
        assert srv.call("GET", "/readyz", role=None)[0] == 200
    finally:
        srv.close()
    checks = srv.rt.readiness()
    assert checks["started"] is False and checks["store_open"] is False


def test_root_redirects_to_the_dashboard_and_every_answer_has_hsts(tmp_path: Path) -> None:
    srv = LiveServer(tmp_path)
    try:
        status, headers, _ = srv.call("GET", "/", role=None)
        assert status == 302 and headers["location"] == "/ui/"
        assert headers["strict-transport-security"] == HSTS
        for path, expected in (("/ui/", 200), ("/ui/style.css", 200), ("/nope", 404),
                               ("/v1/keys", 401), ("/healthz", 200)):
            status, headers, _ = srv.call("GET", path, role=None)
            assert status == expected, path
            assert headers["strict-transport-security"] == HSTS, path
        status, headers, body = srv.call("GET", "/livez", role=None)
        assert (status, body) == (200, {"status": "alive"})
        for path, role in (("/healthz", None), ("/healthz", "auditor"), ("/readyz", None),
                           ("/livez", None),
                           ("/metrics", None)):  # /healthz's details for a token: not cached
            status, headers, _ = srv.call("GET", path, role=role)
            assert headers.get("cache-control") == "no-store", (path, role, headers)
        status, headers, _ = srv.call("DELETE", "/", role=None)
        assert status == 405 and headers["strict-transport-security"] == HSTS
        status, headers, _ = srv.call("GET", "/", role=None, headers={"X-Big": "x" * 40000})
        assert status == 431  # refused while reading the head, before any route
        assert headers["strict-transport-security"] == HSTS
    finally:
        srv.close()
