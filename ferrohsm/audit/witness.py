"""Witnesses: copies of the signed checkpoints kept somewhere the data directory does not hold.

A checkpoint in ``checkpoints.jsonl`` beside the log makes a truncated tail visible only while the
file itself survives: whoever can cut the log can cut that file too. A witness is a second place
the server sends each checkpoint to, out of reach of someone who holds the data directory:

* ``file:/other/disk/checkpoints.jsonl``: appended (under ``flock``: every process and node
  writing the log appends its own) and fsynced, same format as the local file; the server reads
  its newest checkpoint at start-up, and ``ferrohsm audit verify --witness FILE`` checks the
  log against all of it.
* ``syslog``: one line per checkpoint to the local syslog (stdlib ``syslog``), for a log shipper.
* ``https://host/path``: a POST of the checkpoint JSON (``http.client``, TLS verified against the
  system roots or ``[audit].witness_ca_file``, bounded timeout).

Checkpoints are public (log id, seq, head hash, time, key fingerprint, signature): nothing secret
is ever sent. Publishing happens on the sink's checkpoint thread, never on a request's path; a
failure is logged and the newest checkpoint is tried again at the next one.
"""

from __future__ import annotations

import fcntl
import http.client
import logging
import os
import ssl
import urllib.parse
from typing import Any, Protocol

from ..domain.errors import ConfigError
from .chain import canonical_json

log = logging.getLogger("ferrohsm.audit")

SYSLOG_TAG = "ferrohsm-checkpoint"


class Witness(Protocol):
    """Somewhere a checkpoint is copied to; ``publish`` raises OSError (or ssl/http errors)."""

    description: str

    def publish(self, checkpoint: dict[str, Any]) -> None: ...


class FileWitness:
    """Append + fsync to a JSONL file outside the data directory."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.description = f"file:{self.path}"

    def publish(self, checkpoint: dict[str, Any]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # every writer of the log (processes, nodes) appends
            os.write(fd, canonical_json(checkpoint) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)


class SyslogWitness:
    """One ``ferrohsm-checkpoint {json}`` line to the local syslog (facility LOG_AUTH)."""

    description = "syslog"

    def publish(self, checkpoint: dict[str, Any]) -> None:
        import syslog  # Unix only: imported when configured
        syslog.openlog(SYSLOG_TAG, 0, syslog.LOG_AUTH)
        syslog.syslog(syslog.LOG_NOTICE, canonical_json(checkpoint).decode("ascii"))


class HttpsWitness:
    """POST the checkpoint JSON; any answer but 2xx is a failure."""

    def __init__(self, url: str, *, ca_file: str = "", timeout: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError("[audit].witness must be file:PATH, syslog or https://HOST/PATH")
        self.host, self.port = parts.hostname, parts.port or 443
        self.path = parts.path or "/"
        if parts.query:
            self.path += "?" + parts.query
        self.timeout = timeout
        self.description = f"https://{self.host}:{self.port}{parts.path}"  # no userinfo
        self._context = ssl.create_default_context(cafile=ca_file or None)

    def publish(self, checkpoint: dict[str, Any]) -> None:
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                           context=self._context)
        try:
            conn.request("POST", self.path, body=canonical_json(checkpoint),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read(4096)
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            raise OSError(f"witness answered HTTP {response.status}")


def make_witness(spec: str, *, data_dir: str = "", ca_file: str = "",
                 timeout: float = 5.0) -> Witness | None:
    """The witness named by ``[audit].witness`` ("" for none). A file witness inside the data
    directory is refused: it would vanish together with what it is meant to witness."""
    if not spec:
        return None
    if spec == "syslog":
        return SyslogWitness()
    if spec.startswith("file:"):
        path = os.path.abspath(spec.removeprefix("file:"))
        if not spec.removeprefix("file:"):
            raise ConfigError("[audit].witness file: needs a path")
        if data_dir and _inside(path, os.path.abspath(data_dir)):
            raise ConfigError(f"[audit].witness {path} is inside the data directory: a witness "
                              "must live where the data directory does not")
        if not os.path.isdir(os.path.dirname(path)):
            raise ConfigError(f"[audit].witness: the directory of {path} does not exist")
        return FileWitness(path)
    return HttpsWitness(spec, ca_file=ca_file, timeout=timeout)


def _inside(path: str, directory: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([real, base]) == base
