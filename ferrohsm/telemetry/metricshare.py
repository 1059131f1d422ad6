"""``GET /metrics`` under ``[server] processes = N``: every scrape shows every process.

A scrape reaches whichever process the kernel hands its connection to (SO_REUSEPORT). Were
each to show only its own counters, successive scrapes would jump between processes and
Prometheus would read every jump down as a counter reset. So each process writes its series
to ``<data_dir>/metrics/process-<i>.json`` every SNAPSHOT_SECONDS (a thread; nothing on the
request path), and a scrape answers its own live series followed by the other processes'
newest snapshots, every sample labelled ``process="<i>"``: rates are summed with ``sum
without (process) (rate(...))``. Gauges of the shared state (``ferrohsm_keys``,
``ferrohsm_approvals_pending``, the certificate's expiry) read the same in every process:
take ``max`` of those, not ``sum``. A snapshot older than STALE_SECONDS (a process gone for
good) is left out; a restarted process rewrites its own at once. A scrape writes the snapshot
of what it shows first: else a sibling's next scrape showed an older snapshot of the same
series, and a counter went down between two scrapes a second apart (an outside tester saw 28
in 30 scrapes 0.3 s apart).

The same scheme as prometheus_client's multiprocess mode, which FerroHSM cannot use: its
registry is not prometheus_client's (telemetry/metrics.py says why).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("ferrohsm.telemetry")

SNAPSHOT_SECONDS = 1.0
STALE_SECONDS = 10.0
REPORT_EVERY = 60.0  # seconds between two warnings that snapshots fail
# One metric family: its name, the HELP and TYPE lines, and its sample lines.
Family = tuple[str, str, str, list[str]]


def with_label(sample: str, label: str) -> str:
    """``name{a="x"} 1`` -> ``name{label,a="x"} 1``; ``name 1`` -> ``name{label} 1``. The
    name is everything before the first ``{`` or space (names hold neither)."""
    space = sample.find(" ")
    brace = sample.find("{", 0, space)
    if brace >= 0:
        return f"{sample[:brace + 1]}{label},{sample[brace + 1:]}"
    return f"{sample[:space]}{{{label}}}{sample[space:]}"


class MetricShare:
    """This process's half of the exchange: its snapshots written, the others' merged in."""

    def __init__(self, directory: str | os.PathLike[str], index: int,
                 families: Callable[[], list[Family]]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.index, self._families = index, families
        self._label = f'process="{index}"'
        self._path = self.directory / f"process-{index}.json"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writing = threading.Lock()  # read and written in one go: never an older last

    def labelled(self) -> list[Family]:
        return [(name, help_line, type_line, [with_label(s, self._label) for s in samples])
                for name, help_line, type_line, samples in self._families()]

    def write(self) -> list[Family]:
        """This process's series, for the others' scrapes (replaced whole: rename); returned."""
        with self._writing:
            own = self.labelled()
            text = json.dumps({"process": self.index, "families": own})
            tmp = self._path.with_name(f".{self._path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text)
            os.replace(tmp, self._path)
        return own

    def others(self) -> list[list[Family]]:
        """The other processes' fresh snapshots, by process index."""
        now = time.time()
        found: list[tuple[int, list[Family]]] = []
        for path in sorted(self.directory.glob("process-*.json")):
            if path == self._path:
                continue
            try:
                if now - path.stat().st_mtime > STALE_SECONDS:
                    continue
                data = json.loads(path.read_text())
                found.append((int(data["process"]), [
                    (str(name), str(help_line), str(type_line), [str(x) for x in samples])
                    for name, help_line, type_line, samples in data["families"]]))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being replaced, or not ours: the next scrape reads it
        found.sort(key=lambda item: item[0])
        return [families for _, families in found]

    def render(self) -> str:
        """Each family once (HELP, TYPE), with this process's samples and then the others'."""
        try:
            own = self.write()  # what this scrape shows, no sibling's next one shows less of
        except OSError:
            own = self.labelled()
        merged: dict[str, Family] = {}
        for families in [own, *self.others()]:
            for name, help_line, type_line, samples in families:
                if name not in merged:
                    merged[name] = (name, help_line, type_line, [])
                merged[name][3].extend(samples)
        lines: list[str] = []
        for _, help_line, type_line, samples in merged.values():
            lines += [help_line, type_line, *samples]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        self.write()
        self._thread = threading.Thread(target=self._run, name="ferrohsm-metrics-share",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Snapshots until closed. A failure (the disk; a gauge that reads the shared store
        while the database is down) costs the other processes' scrapes this process's series
        for a while, said at most once a minute; the thread goes on and recovers by itself."""
        said = -REPORT_EVERY
        while not self._stop.wait(SNAPSHOT_SECONDS):
            try:
                self.write()
            except Exception as exc:
                now = time.monotonic()
                if now - said >= REPORT_EVERY:
                    said = now
                    reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                    log.warning("metrics: cannot write %s (%s); retrying every %.0f s",
                                self._path, str(reason)[:200], SNAPSHOT_SECONDS)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
