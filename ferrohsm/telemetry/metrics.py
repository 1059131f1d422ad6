"""Prometheus text exposition (format 0.0.4) without a client library.

Counters and histograms keyed by label tuples, guarded by one lock; gauges are read from callbacks
at scrape time so they cost nothing on the request path.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


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


class Gauge:
    """A value read at scrape time from ``read`` (label values → number)."""

    def __init__(self, name: str, help_text: str, read: Callable[[], dict[tuple[str, ...], float]],
                 labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.read, self.label_names = name, help_text, read, tuple(labels)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        lines += [f"{self.name}{_labels(self.label_names, k)} {_num(v)}"
                  for k, v in sorted(self.read().items())]
        return lines


class Registry:
    def __init__(self) -> None:
        self.metrics: list[Counter | Histogram | Gauge] = []

    def add(self, metric: Counter | Histogram | Gauge) -> None:
        self.metrics.append(metric)

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.metrics:
            lines += metric.render()
        return "\n".join(lines) + "\n"


class ServerMetrics:
    """The metrics FerroHSM exports; the HTTP layer and the service feed them."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.requests = Counter("ferrohsm_http_requests", "HTTP requests by route and status",
                                ("route", "method", "status"))
        self.latency = Histogram("ferrohsm_http_request_duration_seconds",
                                 "HTTP request latency by route", ("route", "method"))
        self.crypto_ops = Counter("ferrohsm_crypto_operations",
                                  "Cryptographic operations by algorithm, operation and outcome",
                                  ("algorithm", "operation", "outcome"))
        self.auth_failures = Counter("ferrohsm_auth_failures", "Rejected credentials", ("reason",))
        self.rate_limited = Counter("ferrohsm_rate_limited", "Requests refused by rate limiting",
                                    ("scope",))
        for metric in (self.requests, self.latency, self.crypto_ops, self.auth_failures,
                       self.rate_limited):
            self.registry.add(metric)

    def add_gauge(self, name: str, help_text: str,
                  read: Callable[[], dict[tuple[str, ...], float]], labels: Sequence[str] = ()) -> None:
        self.registry.add(Gauge(name, help_text, read, labels))

    def render(self) -> str:
        return self.registry.render()
