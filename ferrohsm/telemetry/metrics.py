"""Prometheus text exposition (format 0.0.4) without a client library.

Counters and histograms keyed by label tuples, guarded by one lock; gauges (and counters the
code already keeps, e.g. cache hits) are read from callbacks at scrape time so they cost nothing
on the request path. Every series that is known at start is created at zero (``touch``), so
``rate()`` and alerts see it before its first event. Why not prometheus_client: README.md,
"Observability"; tests/unit/test_metrics_exposition.py parses every scrape with its parser.

Other packages add a gauge with ``ServerMetrics.add_gauge(name, help, read, labels)``: ``read``
returns ``{label values: number}`` and runs at scrape time (e.g. the TLS certificate's expiry).
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence

from .metricshare import Family, MetricShare

log = logging.getLogger("ferrohsm.telemetry")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Counter:
    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def touch(self, *labels: str) -> None:
        """Create the series at zero (it exists before its first event)."""
        with self._lock:
            self._values.setdefault(labels, 0.0)

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def total(self) -> float:
        return sum(self._values.values())

    def render(self) -> list[str]:
        # 0.0.4 convention (as prometheus_client writes it): HELP/TYPE name the _total series.
        lines = [f"# HELP {self.name}_total {self.help}", f"# TYPE {self.name}_total counter"]
        with self._lock:
            items = sorted(self._values.items())
        lines += [f"{self.name}_total{_labels(self.label_names, k)} {_num(v)}" for k, v in items]
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.buckets = tuple(buckets)
        self._series: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., sum, count
        self._lock = threading.Lock()

    def touch(self, *labels: str) -> None:
        """Create the series with every bucket at zero."""
        with self._lock:
            self._series.setdefault(labels, [0.0] * (len(self.buckets) + 2))

    def count(self, *labels: str) -> float:
        series = self._series.get(labels)
        return series[-1] if series else 0.0

    def observe(self, value: float, *labels: str) -> None:
        buckets = self.buckets
        i = bisect_left(buckets, value)  # the first bound >= value, found in C
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = [0.0] * (len(buckets) + 2)
            if i < len(buckets) and value <= buckets[i]:  # NaN lands in no bucket
                series[i] += 1
            series[-2] += value
            series[-1] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for key, series in items:
            running = 0.0
            for bound, count in zip(self.buckets, series):
                running += count
                le = f'le="{_num(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {_num(running)}")
            inf = _labels(self.label_names, key, 'le="+Inf"')
            lines.append(f"{self.name}_bucket{inf} {_num(series[-1])}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {series[-2]!r}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {_num(series[-1])}")
        return lines


_unread: dict[str, float] = {}  # family -> when a failed read was last logged


def _read(name: str, read: Callable[[], dict[tuple[str, ...], float]]
          ) -> dict[tuple[str, ...], float]:
    """A family's values read at scrape time, or none when the read fails (the key store or
    the database down): the rest of the scrape still answers, ``ferrohsm_audit_healthy`` among
    it, where one failing read used to turn the whole scrape into a 503. Logged once a minute
    a family."""
    try:
        return read()
    except Exception as exc:  # any failure of one source must not cost the other series
        now = time.monotonic()
        if now - _unread.get(name, float("-inf")) >= 60.0:
            _unread[name] = now
            log.warning("metrics: %s left out of the scrape: %s", name,
                        getattr(exc, "message", None) or type(exc).__name__)
        return {}


class Gauge:
    """A value read at scrape time from ``read`` (label values → number)."""

    def __init__(self, name: str, help_text: str, read: Callable[[], dict[tuple[str, ...], float]],
                 labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.read, self.label_names = name, help_text, read, tuple(labels)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        lines += [f"{self.name}{_labels(self.label_names, k)} {_num(v)}"
                  for k, v in sorted(_read(self.name, self.read).items())]
        return lines


class CounterFunc:
    """A counter whose values the code keeps anyway (cache hits...), read at scrape time."""

    def __init__(self, name: str, help_text: str, read: Callable[[], dict[tuple[str, ...], float]],
                 labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.read, self.label_names = name, help_text, read, tuple(labels)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name}_total {self.help}", f"# TYPE {self.name}_total counter"]
        lines += [f"{self.name}_total{_labels(self.label_names, k)} {_num(v)}"
                  for k, v in sorted(_read(self.name, self.read).items())]
        return lines


Metric = Counter | Histogram | Gauge | CounterFunc


class Registry:
    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def add(self, metric: Metric) -> None:
        self.metrics.append(metric)

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.metrics:
            lines += metric.render()
        return "\n".join(lines) + "\n"

    def families(self) -> list[Family]:
        """(name, HELP line, TYPE line, samples) of each metric (metricshare.py merges them)."""
        out: list[Family] = []
        for metric in self.metrics:
            lines = metric.render()
            out.append((lines[1].split()[2], lines[0], lines[1], lines[2:]))
        return out


# Why TLS handshakes failed (api/tlsfail.py): a fixed set, so the series stay bounded
TLS_HANDSHAKE_FAILURE_REASONS = ("client_certificate_required", "client_certificate_refused",
                                 "protocol_version", "plain_http", "closed", "other")


class ServerMetrics:
    """The metrics FerroHSM exports; the HTTP layer and the service feed them."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.share: MetricShare | None = None  # processes = N: set by the composition root
        self.requests = Counter("ferrohsm_http_requests", "HTTP requests by route, method and status",
                                ("route", "method", "status"))
        self.latency = Histogram("ferrohsm_http_request_duration_seconds",
                                 "HTTP request latency by route and method", ("route", "method"))
        self.crypto_ops = Counter("ferrohsm_crypto_operations",
                                  "Cryptographic operations by algorithm, operation and outcome",
                                  ("algorithm", "operation", "outcome"))
        self.auth_failures = Counter("ferrohsm_auth_failures", "Rejected credentials", ("reason",))
        self.rate_limited = Counter("ferrohsm_rate_limited", "Requests refused by rate limiting",
                                    ("scope",))
        self.tls_handshake_failures = Counter("ferrohsm_tls_handshake_failures",
                                              "TLS handshakes that failed, by reason", ("reason",))
        self.audit_sync = Histogram("ferrohsm_audit_fsync_duration_seconds",
                                    "Time one audit flush (fsync or commit) took",
                                    buckets=FSYNC_BUCKETS)
        self.audit_batch = Histogram("ferrohsm_audit_fsync_batch_records",
                                     "Audit records made durable by one flush",
                                     buckets=BATCH_BUCKETS)
        for metric in (self.requests, self.latency, self.crypto_ops, self.auth_failures,
                       self.rate_limited, self.tls_handshake_failures, self.audit_sync,
                       self.audit_batch):
            self.registry.add(metric)
        for reason in TLS_HANDSHAKE_FAILURE_REASONS:
            self.tls_handshake_failures.touch(reason)
        self.rate_limited.touch("actor")
        self.rate_limited.touch("ip")
        self.audit_sync.touch()
        self.audit_batch.touch()
        from .. import __version__
        self.add_gauge("ferrohsm_build_info", "FerroHSM version and Python (always 1)",
                       lambda: {(__version__, platform.python_version()): 1.0},
                       ("version", "python_version"))
        for collected in process_metrics():
            self.registry.add(collected)

    def add_gauge(self, name: str, help_text: str,
                  read: Callable[[], dict[tuple[str, ...], float]], labels: Sequence[str] = ()) -> None:
        self.registry.add(Gauge(name, help_text, read, labels))

    def add_counter(self, name: str, help_text: str,
                    read: Callable[[], dict[tuple[str, ...], float]],
                    labels: Sequence[str] = ()) -> None:
        """A monotonic value read at scrape time, exported as ``<name>_total``."""
        self.registry.add(CounterFunc(name, help_text, read, labels))

    def observe_audit_sync(self, seconds: float, records: int) -> None:
        """One audit flush: its duration and how many records it made durable."""
        self.audit_sync.observe(seconds)
        self.audit_batch.observe(float(records))

    def render(self) -> str:
        """This process's series; with ``processes = N`` every process's (metricshare.py)."""
        return self.share.render() if self.share is not None else self.registry.render()


# ---- process_* (the names every Prometheus client library exports) ---------------------------

_START = time.time()


def _proc_stat() -> list[str] | None:
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def _start_time() -> float:
    """When the process started (Linux: from /proc, else when this module was imported)."""
    fields = _proc_stat()
    try:
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
        if fields is not None:
            return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    return _START


def _resident_bytes() -> dict[tuple[str, ...], float]:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return {(): float(pages * os.sysconf("SC_PAGE_SIZE"))}
    except (OSError, ValueError, IndexError):
        return {}


def _open_fds() -> dict[tuple[str, ...], float]:
    try:
        return {(): float(len(os.listdir("/proc/self/fd")))}
    except OSError:
        return {}


def _max_fds() -> dict[tuple[str, ...], float]:
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return {} if soft == resource.RLIM_INFINITY else {(): float(soft)}


def process_metrics() -> list[Metric]:
    """process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
    process_max_fds and process_start_time_seconds, read at scrape time."""
    started = _start_time()

    def cpu() -> dict[tuple[str, ...], float]:
        times = os.times()
        return {(): times.user + times.system}
    return [
        CounterFunc("process_cpu_seconds", "Total user and system CPU time spent in seconds", cpu),
        Gauge("process_resident_memory_bytes", "Resident memory size in bytes", _resident_bytes),
        Gauge("process_open_fds", "Number of open file descriptors", _open_fds),
        Gauge("process_max_fds", "Maximum number of open file descriptors", _max_fds),
        Gauge("process_start_time_seconds",
              "Start time of the process since unix epoch in seconds", lambda: {(): started}),
    ]
