"""The hand-written Prometheus exposition, read back by prometheus_client's own parser: counters
are ``_total`` counters, series known at start exist at zero, build_info and process_* are
there, and another package can add a gauge with one call."""

from __future__ import annotations

import math
import os
import time

from prometheus_client.parser import text_string_to_metric_families

from ferrohsm.telemetry.metrics import ServerMetrics


def test_every_counter_is_a_total_and_parses() -> None:
    metrics = ServerMetrics()
    metrics.requests.inc("/v1/keys", "GET", "200")
    metrics.crypto_ops.inc("aes-256-gcm", "encrypt", "success")
    metrics.auth_failures.inc("expired")
    parsed = list(text_string_to_metric_families(metrics.render()))
    for family in parsed:
        if family.type == "counter":
            assert all(s.name == f"{family.name}_total" for s in family.samples), family.name
    text = metrics.render()
    assert "ferrohsm_http_requests_total{" in text and "ferrohsm_auth_failures_total{" in text


def test_series_known_at_start_exist_at_zero() -> None:
    metrics = ServerMetrics()
    metrics.crypto_ops.touch("aes-256-gcm", "encrypt", "success")
    metrics.latency.touch("/v1/keys", "GET")
    parsed = {f.name: f for f in text_string_to_metric_families(metrics.render())}
    limited = {s.labels["scope"]: s.value for s in parsed["ferrohsm_rate_limited"].samples}
    assert limited == {"actor": 0.0, "ip": 0.0}
    crypto = parsed["ferrohsm_crypto_operations"].samples
    assert [(s.labels, s.value) for s in crypto] == [
        ({"algorithm": "aes-256-gcm", "operation": "encrypt", "outcome": "success"}, 0.0)]
    count = [s for s in parsed["ferrohsm_http_request_duration_seconds"].samples
             if s.name.endswith("_count")]
    assert [(s.labels, s.value) for s in count] == [({"route": "/v1/keys", "method": "GET"}, 0.0)]
    for name in ("ferrohsm_audit_fsync_duration_seconds", "ferrohsm_audit_fsync_batch_records"):
        assert parsed[name].type == "histogram"
        assert {s.name for s in parsed[name].samples} >= {f"{name}_count", f"{name}_sum"}


def test_audit_flushes_fill_both_histograms() -> None:
    metrics = ServerMetrics()
    metrics.observe_audit_sync(0.0004, 12)
    metrics.observe_audit_sync(0.002, 1)
    parsed = {f.name: f for f in text_string_to_metric_families(metrics.render())}
    sync = {(s.name, s.labels.get("le")): s.value
            for s in parsed["ferrohsm_audit_fsync_duration_seconds"].samples}
    assert sync[("ferrohsm_audit_fsync_duration_seconds_bucket", "0.0005")] == 1
    assert sync[("ferrohsm_audit_fsync_duration_seconds_bucket", "+Inf")] == 2
    assert math.isclose(sync[("ferrohsm_audit_fsync_duration_seconds_sum", None)], 0.0024)
    batch = {(s.name, s.labels.get("le")): s.value
             for s in parsed["ferrohsm_audit_fsync_batch_records"].samples}
    assert batch[("ferrohsm_audit_fsync_batch_records_bucket", "1")] == 1
    assert batch[("ferrohsm_audit_fsync_batch_records_bucket", "16")] == 2
    assert batch[("ferrohsm_audit_fsync_batch_records_sum", None)] == 13


def test_build_info_and_process_metrics() -> None:
    parsed = {f.name: f for f in text_string_to_metric_families(ServerMetrics().render())}
    from ferrohsm import __version__
    (info,) = parsed["ferrohsm_build_info"].samples
    assert info.value == 1 and info.labels["version"] == __version__
    assert parsed["process_cpu_seconds"].type == "counter"
    assert parsed["process_cpu_seconds"].samples[0].value > 0
    rss = parsed["process_resident_memory_bytes"].samples[0].value
    assert 10 * 2**20 < rss < 4 * 2**30
    fds = parsed["process_open_fds"].samples[0].value
    assert 3 <= fds == len(os.listdir("/proc/self/fd")) or abs(fds - len(os.listdir(
        "/proc/self/fd"))) <= 2
    start = parsed["process_start_time_seconds"].samples[0].value
    assert time.time() - 24 * 3600 < start <= time.time()


def test_another_package_adds_a_gauge_read_at_scrape_time() -> None:
    metrics = ServerMetrics()
    expiry = {"value": 1.8e9}
    metrics.add_gauge("ferrohsm_tls_certificate_expiry_timestamp_seconds",
                      "When the serving certificate expires",
                      lambda: {("server",): expiry["value"]}, ("certificate",))
    expiry["value"] = 1.9e9
    parsed = {f.name: f for f in text_string_to_metric_families(metrics.render())}
    (sample,) = parsed["ferrohsm_tls_certificate_expiry_timestamp_seconds"].samples
    assert sample.labels == {"certificate": "server"} and sample.value == 1.9e9


def test_a_read_that_fails_leaves_out_its_family_not_the_scrape() -> None:
    """With the database down the keys-by-state gauge's read raised and /metrics answered 503,
    so Prometheus lost every series (ferrohsm_audit_healthy among them) during the outage."""
    from ferrohsm.domain.errors import StoreError

    metrics = ServerMetrics()

    def down() -> dict[tuple[str, ...], float]:
        raise StoreError("cannot reach the key database")

    metrics.add_gauge("ferrohsm_keys", "Keys by lifecycle state", down, ("state",))
    metrics.add_counter("ferrohsm_things", "Things", down)
    metrics.add_gauge("ferrohsm_audit_healthy", "1 when the audit log accepts records",
                      lambda: {(): 0.0})
    parsed = {f.name: f for f in text_string_to_metric_families(metrics.render())}
    assert parsed["ferrohsm_keys"].samples == [] and parsed["ferrohsm_things"].samples == []
    assert parsed["ferrohsm_audit_healthy"].samples[0].value == 0.0
