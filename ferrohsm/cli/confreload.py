"""SIGHUP and the configuration file: read and checked again as at start-up, never applied.

The running server keeps the settings it started with (only keysets and TLS files reload). What
SIGHUP adds is a warning, so an edit is not silently waiting for a restart that would fail: a
file that no longer loads is named with its problem; settings that differ from the running ones
are listed by name only (a value may be the path of a secret file), to take effect at the next
restart.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from ..config import Config, load_secrets
from ..domain.errors import ConfigError

log = logging.getLogger("ferrohsm")


@dataclasses.dataclass
class _Started:
    config: Config | None = None
    load: Callable[[], Config] | None = None


_started = _Started()


def remember(config: Config, load: Callable[[], Config]) -> None:
    """The settings the server runs with, and how start-up loaded them (file, environment and
    flags): ``load`` is called again on SIGHUP. Forked processes inherit both."""
    _started.config, _started.load = config, load


def changed_settings(running: Config, loaded: Config) -> list[str]:
    """The names ([section].field, [policy.tags.<name>]) whose values differ."""
    changed: list[str] = []
    for section in dataclasses.fields(running):
        old, new = getattr(running, section.name), getattr(loaded, section.name)
        if not dataclasses.is_dataclass(old):
            continue
        for f in dataclasses.fields(old):
            a, b = getattr(old, f.name), getattr(new, f.name)
            if dataclasses.is_dataclass(a):  # [tls.acme]
                changed += [f"[{section.name}.{f.name}].{g.name}" for g in dataclasses.fields(a)
                            if getattr(a, g.name) != getattr(b, g.name)]
            elif a != b:
                changed.append(f"[{section.name}].{f.name}")
    tags = set(running.policy_tags) | set(loaded.policy_tags)
    changed += [f"[policy.tags.{name}]" for name in sorted(tags)
                if running.policy_tags.get(name) != loaded.policy_tags.get(name)]
    return changed


def check_config_file() -> None:
    """On SIGHUP: load the configuration and the secret files as start-up did, and warn (once)
    about what a restart would meet: an error, or settings that differ from the running ones."""
    running, load = _started.config, _started.load
    if running is None or load is None:
        return
    loaded = running
    if running.source != "<defaults>":  # else no file: the environment, which a signal keeps
        try:
            loaded = load()
        except ConfigError as exc:
            log.warning("SIGHUP: the configuration file %s no longer loads: %s; the running "
                        "server keeps its settings; a restart would fail", running.source,
                        exc.message)
            return
        changed = changed_settings(running, loaded)
        if changed:
            log.warning("SIGHUP: the configuration file %s changes %d setting(s), which take "
                        "effect at the next restart (the running server keeps its settings): %s",
                        running.source, len(changed), ", ".join(changed))
    _check_secrets(loaded)


def _check_secrets(config: Config) -> None:
    """A secret file made readable by others, emptied or removed since start-up: the running
    server keeps the secrets it holds, and a restart would refuse them. Read and dropped at
    once; the message names the file or variable, never a value."""
    try:
        if config.secrets.unseal == "shamir":  # no master key anywhere, by design
            from .custody import other_secrets
            other_secrets(config)
        else:
            load_secrets(config)
    except ConfigError as exc:
        log.warning("SIGHUP: the secrets no longer load: %s; the running server keeps the ones "
                    "it holds; a restart would fail", exc.message)
