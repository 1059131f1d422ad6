"""A real, throwaway ACME server for the tests: Debian's ``pebble`` with ``pebble-challtestsrv``
as its DNS server (every name resolves to 127.0.0.1), on free ports.

No mock of the CA anywhere: issuance, challenges, renewal and outages are tested against
Let's Encrypt's own test server. Pebble's HTTPS certificate comes from a development PKI the
test generates (its CA is the ``ca_bundle`` FerroHSM trusts); pebble's issuing root, which it
regenerates at every start, is read from its management port (``/roots/0``).
``PEBBLE_VA_NOSLEEP=1`` keeps validations immediate; pebble's default 5 % of rejected nonces is
kept on purpose, so the badNonce retry runs for real. Where the binaries are missing, tests
skip with the install command.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferrohsm.tls.devpki import make_dev_pki

INSTALL_HINT = "apt-get install pebble (Debian's pebble and pebble-challtestsrv)"


def available() -> bool:
    return all(shutil.which(n) for n in ("pebble", "pebble-challtestsrv"))


def skip_unless_available() -> None:
    if not available():
        pytest.skip(f"needs an ACME test server ({INSTALL_HINT})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Pebble:
    """One pebble (and its DNS server) in ``root``; ``stop``/``start`` keep the same ports."""

    def __init__(self, root: Path, http_port: int, tls_port: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        pki = make_dev_pki(root / "https", hosts=["127.0.0.1", "localhost"])
        self.ca_bundle = str(pki.ca_cert)
        self.port, self.management_port, self.dns_port = free_port(), free_port(), free_port()
        self.dns_management_port = free_port()
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        self.config = root / "pebble.json"
        self.config.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(pki.server_cert), "privateKey": str(pki.server_key),
            "httpPort": http_port, "tlsPort": tls_port, "ocspResponderURL": "",
            "externalAccountBindingRequired": False}}))
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        log = open(self.root / "pebble.log", "ab")
        self._procs = [
            subprocess.Popen(["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1",
                              "-defaultIPv6", "", "-dns01", f"127.0.0.1:{self.dns_port}",
                              "-http01", "", "-https01", "", "-tlsalpn01", "",
                              "-management", f"127.0.0.1:{self.dns_management_port}"],
                             stdout=log, stderr=log),
            subprocess.Popen(["pebble", "-config", str(self.config), "-dnsserver",
                              f"127.0.0.1:{self.dns_port}"], stdout=log, stderr=log,
                             env={**os.environ, "PEBBLE_VA_NOSLEEP": "1"}),
        ]
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        context = ssl.create_default_context(cafile=self.ca_bundle)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(self.directory, context=context,  # noqa: S310
                                            timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self._procs):
                    raise RuntimeError("pebble did not start: "
                                       + (self.root / "pebble.log").read_text()[-2000:]) from None
                time.sleep(0.1)

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = []

    def root_pem(self) -> bytes:
        """Pebble's current issuing root (regenerated at every start)."""
        context = ssl.create_default_context(cafile=self.ca_bundle)
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=5) as resp:
            data: bytes = resp.read()
        return data


@contextlib.contextmanager
def running(root: Path, http_port: int = 0, tls_port: int = 0) -> Iterator[Pebble]:
    """A started pebble validating http-01 on ``http_port`` and tls-alpn-01 on ``tls_port``."""
    pebble = Pebble(root, http_port or free_port(), tls_port or free_port())
    pebble.start()
    try:
        yield pebble
    finally:
        pebble.stop()
