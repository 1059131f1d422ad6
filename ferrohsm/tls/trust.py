"""What client certificates new handshakes accept: ``[tls] client_ca``, watched for changes.

Both providers (PEM files, ACME) serve mutual TLS from the same bundle, and an operator who
takes a CA out of it expects that CA to stop being trusted without a restart, whichever mode
serves the server certificate. ``ClientTrust`` reads and checks the files; ``TrustWatch`` is
the reload loop of the ACME provider (the PEM provider reloads trust with its pair, in one
step). A bundle that cannot be read or parsed leaves the trust in service as it is, with the
same warning, ``tls.reload_refused`` record and ``reload_refused`` status as a refused pair.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path

from .pair import PairRefused

log = logging.getLogger("ferrohsm.tls")


class ClientTrust:
    """The client CA bundle of mutual TLS (None: no mutual TLS)."""

    def __init__(self, client_ca: str | os.PathLike[str] | None) -> None:
        self.client_ca = os.fspath(client_ca) if client_ca is not None else None

    @property
    def files(self) -> list[Path]:
        return [Path(self.client_ca)] if self.client_ca is not None else []

    def read(self) -> str | None:
        """The digest of the files (None: no mutual TLS), so that a changed bundle is put in
        service like a changed pair: a CA taken out of it must stop being trusted."""
        if self.client_ca is None:
            return None
        digest = hashlib.sha256()
        for path in self.files:
            try:
                digest.update(path.read_bytes() + b"\0")
            except OSError as exc:
                raise PairRefused("unreadable", f"cannot read {path}: "
                                  f"{exc.strerror or type(exc).__name__}") from None
        return digest.hexdigest()

    def check(self) -> None:
        """Load the files into a scratch context: PairRefused if OpenSSL would not."""
        if self.client_ca is None:
            return
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=self.client_ca)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror
            raise PairRefused("unparsable", f"{self.client_ca}: not a PEM CA bundle "
                              f"({reason or type(exc).__name__})") from None


Emit = Callable[[str, Mapping[str, object]], None]


class TrustWatch:
    """A changed bundle is checked, then ``rebuild`` puts it in service (it raises PairRefused
    when the contexts cannot be built from it). Refusals follow the PEM provider's rules: a
    poll waits one more poll before refusing (the file may be half written), SIGHUP refuses
    at once, and while a refusal stands every poll looks again, saying nothing new unless the
    reason changes."""

    def __init__(self, trust: ClientTrust, rebuild: Callable[[], None], emit: Emit,
                 serial: Callable[[], str | None]) -> None:
        self.trust, self._rebuild, self._emit, self._serial = trust, rebuild, emit, serial
        self.digest = trust.read()  # PairRefused at start-up: the caller's configuration error
        trust.check()
        self.refused: str | None = None
        self._pending: tuple[str | None, str] | None = None  # (digest, kind) failing lately
        self._reported: tuple[str | None, str] | None = None  # the one warned about

    def check(self, loud: bool = False) -> bool:
        """One look (``loud``: SIGHUP); True when a changed bundle went into service."""
        digest: str | None = None
        try:
            digest = self.trust.read()
            if digest == self.digest:  # unchanged, or put back as it is served
                self.refused = self._pending = self._reported = None
                return False
            self.trust.check()
            self._rebuild()
        except PairRefused as exc:
            self._refuse(exc, (digest, exc.kind), loud)
            return False
        self.digest = digest
        self.refused = self._pending = self._reported = None
        log.info("TLS client CA file %s reloaded: new handshakes trust its certificates",
                 self.trust.client_ca)
        self._emit("tls.client_ca_reloaded", {"file": str(self.trust.client_ca),
                                              "sha256": str(digest)})
        return True

    def _refuse(self, exc: PairRefused, key: tuple[str | None, str], loud: bool) -> None:
        if not loud and self._pending != key:
            self._pending = key  # maybe still being written: the next poll decides
            log.debug("TLS client CA file changed but cannot be used yet: %s", exc.message)
            return
        if not loud and self._reported == key:
            log.debug("TLS client CA file still refused (%s): %s", exc.kind, exc.message)
            return
        self._pending = self._reported = key
        self.refused = exc.kind
        log.warning("TLS client CA file changed but was refused (%s); keeping the trust in "
                    "service: %s", exc.kind, exc.message)
        self._emit("tls.reload_refused", {"reason": exc.kind, "message": exc.message,
                                          "serial": self._serial(),
                                          "file": str(self.trust.client_ca)})
