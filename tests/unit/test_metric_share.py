"""/metrics under ``processes = N`` (telemetry/metricshare.py): each process's series labelled
with its index, merged into one exposition per scrape that prometheus_client's parser reads as
one family each; stale snapshots left out. Real registries, real files."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ferrohsm.telemetry.metrics import ServerMetrics
from ferrohsm.telemetry.metricshare import STALE_SECONDS, MetricShare, with_label


def test_the_process_label_goes_first_in_every_sample() -> None:
    assert with_label('a_total{route="/x y{z}",s="2"} 3', 'process="1"') == (
        'a_total{process="1",route="/x y{z}",s="2"} 3')
    assert with_label("process_open_fds 12", 'process="0"') == 'process_open_fds{process="0"} 12'
    assert with_label("a_sum 0.5", 'process="2"') == 'a_sum{process="2"} 0.5'


def _process(tmp_path: Path, index: int) -> tuple[ServerMetrics, MetricShare]:
    metrics = ServerMetrics()
    share = MetricShare(tmp_path / "metrics", index, metrics.registry.families)
    metrics.share = share
    return metrics, share


def test_a_scrape_shows_every_process_once_per_family(tmp_path: Path) -> None:
    first, first_share = _process(tmp_path, 0)
    second, second_share = _process(tmp_path, 1)
    first.requests.inc("/v1/keys", "GET", "200", amount=3)
    second.requests.inc("/v1/keys", "GET", "200", amount=4)
    second.latency.observe(0.002, "/v1/keys", "GET")
    second_share.write()
    families = {f.name: f for f in text_string_to_metric_families(first.render())}
    requests = [s for s in families["ferrohsm_http_requests"].samples
                if s.name == "ferrohsm_http_requests_total"]
    assert {(s.labels["process"], s.value) for s in requests} == {("0", 3.0), ("1", 4.0)}
    latency = [s for s in families["ferrohsm_http_request_duration_seconds"].samples
               if s.name.endswith("_count")]
    assert [(s.labels["process"], s.value) for s in latency] == [("1", 1.0)]
    built = families["ferrohsm_build_info"].samples
    assert sorted(s.labels["process"] for s in built) == ["0", "1"]
    text = first.render()
    assert text.count("# TYPE ferrohsm_http_requests_total counter") == 1
    assert os.stat(tmp_path / "metrics" / "process-1.json").st_mode & 0o777 == 0o600
    assert first_share.others() and second_share.others()  # 0's scrape wrote its own


def test_a_counter_never_goes_down_between_scrapes_of_two_processes(tmp_path: Path) -> None:
    """A scrape writes the snapshot of what it shows: the sibling that takes the next scrape
    shows no less (it showed an older snapshot, a drop Prometheus reads as a reset)."""
    first, _ = _process(tmp_path, 0)
    second, second_share = _process(tmp_path, 1)
    second_share.write()

    def requests_of_0(text: str) -> float:
        families = {f.name: f for f in text_string_to_metric_families(text)}
        return next(s.value for s in families["ferrohsm_http_requests"].samples
                    if s.name == "ferrohsm_http_requests_total" and s.labels["process"] == "0")
    seen = 0.0
    for turn in range(5):
        first.requests.inc("/v1/keys", "GET", "200", amount=turn + 1)
        for scraped in (first.render(), second.render()):
            assert requests_of_0(scraped) >= seen
            seen = requests_of_0(scraped)
    assert seen == 15


def test_a_process_gone_for_good_drops_out(tmp_path: Path) -> None:
    first, _ = _process(tmp_path, 0)
    _, second_share = _process(tmp_path, 1)
    second_share.write()
    old = time.time() - STALE_SECONDS - 1
    os.utime(tmp_path / "metrics" / "process-1.json", (old, old))
    assert 'process="1"' not in first.render()


def test_an_unreadable_snapshot_is_skipped(tmp_path: Path) -> None:
    first, _ = _process(tmp_path, 0)
    (tmp_path / "metrics" / "process-1.json").write_text("{half")
    text = first.render()
    assert 'process="0"' in text and 'process="1"' not in text
    assert list(text_string_to_metric_families(text))


def test_the_snapshot_thread_keeps_writing(tmp_path: Path) -> None:
    metrics, share = _process(tmp_path, 3)
    share.start()
    try:
        path = tmp_path / "metrics" / "process-3.json"
        first = path.stat().st_mtime_ns
        metrics.requests.inc("/v1/keys", "GET", "200")
        deadline = time.monotonic() + 5
        while path.stat().st_mtime_ns == first:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert 'ferrohsm_http_requests_total{process=\\"3\\",route=\\"/v1/keys\\"' in \
            path.read_text()
    finally:
        share.close()


def test_a_failing_gauge_costs_snapshots_for_a_while_not_the_thread(tmp_path: Path) -> None:
    """A gauge that reads the shared store fails while the database is down: the thread says
    so, leaves no half-written file, and writes again once the store answers."""
    from ferrohsm.domain.errors import StoreError
    down = [True]

    def families() -> list[tuple[str, str, str, list[str]]]:
        if down[0]:
            raise StoreError("cannot connect to PostgreSQL")
        return [("x", "# HELP x x", "# TYPE x gauge", ["x 1"])]
    share = MetricShare(tmp_path / "metrics", 4, lambda: [])
    share.start()
    share._families = families
    try:
        time.sleep(1.5)  # at least one failed snapshot
        assert not list((tmp_path / "metrics").glob(".*.tmp"))
        down[0] = False
        path = tmp_path / "metrics" / "process-4.json"
        deadline = time.monotonic() + 5
        while 'x{process=\\"4\\"} 1' not in path.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        share.close()
