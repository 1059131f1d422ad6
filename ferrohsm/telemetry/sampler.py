"""OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, decided here without the SDK.

The request path decides before it records anything, so a sampled-out request makes no span
record at all. The samplers are the specification's (and the Python SDK's) six: ``always_on``,
``always_off``, ``traceidratio`` (sampled when the trace id's lower 64 bits are below
ratio x 2^64, so every service sampling one trace at one ratio agrees), and ``parentbased_*``
(default ``parentbased_always_on``): with a valid ``traceparent`` the caller's sampled flag
decides, else the root sampler named after the prefix. An unknown name falls back to the
default and a missing or invalid ratio to 1.0, as the SDK does, each with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from .tracecontext import Parent

log = logging.getLogger("ferrohsm.telemetry")
DEFAULT = "parentbased_always_on"
NAMES = frozenset({"always_on", "always_off", "traceidratio", "parentbased_always_on",
                   "parentbased_always_off", "parentbased_traceidratio"})
_LOW_64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Sampler:
    """``bound``: a root trace is sampled when its id's lower 64 bits are below it (0: never,
    2^64: always). ``parent_based``: a remote parent's sampled flag decides instead."""

    name: str
    bound: int
    parent_based: bool

    def root(self, trace_id: str) -> bool:
        """Whether a new trace (32 hex digits) is sampled."""
        bound = self.bound
        return bound > _LOW_64 or (bound > 0 and int(trace_id[16:], 16) < bound)

    def remote(self, parent: Parent) -> bool:
        """Whether a request continuing ``parent``'s trace is sampled."""
        if self.parent_based:
            return bool(parent.flags & 1)
        return self.root(parent.trace_id)


def ratio_bound(ratio: float) -> int:
    """The SDK's TraceIdRatioBased bound: round(ratio x 2^64), ratio clamped to [0, 1]."""
    return round(min(1.0, max(0.0, ratio)) * (1 << 64))


def from_environment(env: Mapping[str, str]) -> Sampler:
    """The sampler OTEL_TRACES_SAMPLER (and _ARG for the ratio ones) name."""
    name = env.get("OTEL_TRACES_SAMPLER", DEFAULT).strip().lower() or DEFAULT
    if name not in NAMES:
        log.warning("OTEL_TRACES_SAMPLER=%s is not a supported sampler; using %s",
                    name[:40], DEFAULT)
        name = DEFAULT
    parent_based = name.startswith("parentbased_")
    base = name.removeprefix("parentbased_")
    if base == "always_on":
        return Sampler(name, 1 << 64, parent_based)
    if base == "always_off":
        return Sampler(name, 0, parent_based)
    return Sampler(name, ratio_bound(_ratio(env.get("OTEL_TRACES_SAMPLER_ARG"))), parent_based)


def _ratio(value: str | None) -> float:
    if value is None or not value.strip():
        return 1.0
    try:
        ratio = float(value)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:  # NaN included
        log.warning("OTEL_TRACES_SAMPLER_ARG=%s is not a ratio in [0, 1]; using 1.0", value[:40])
        return 1.0
    return ratio
