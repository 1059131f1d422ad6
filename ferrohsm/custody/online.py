"""Online master-key rotation (``POST /v1/sys/rekey``, ``ferrohsm rekey --online``).

The same crash-safe steps as the offline rekey (custody/rekey.py: journal, per-record
compare-and-swap rewrite, check value, journal done), run by the server itself while it serves:

* **Consistency while serving: a pause, not two keys at once.** Every ``/v1/`` request holds
  the pause (``Pause.enter``/``leave``, custody/serving.py) and so does every tick of the
  retention scheduler (control/heldscheduler.py); the rekey takes ``Pause.exclusive``, after
  checking every record opens under the current key: new requests wait
  (at most ``HOLD_WAIT`` seconds, then 503 ``rekey_in_progress``), the ones in flight finish
  (at most ``DRAIN_WAIT``), then the records are rewritten, the store's record MAC and the
  engine's sealer swapped to the new key and the unsealed-key cache dropped, and requests go
  on. Nothing ever sees a record under one key and a sealer under the other. The pause lasts
  about as long as re-sealing every key version (see README for a figure).
* **Delivery of the new key (environment mode):** it is written, 0600, beside
  ``[secrets] master_key_file`` (``<file>.rekey-new``) BEFORE the journal starts, and renamed
  over the file once the check value has committed: the file always holds the old or the new
  key, and either opens the journal. It is never returned over the API. A server whose key
  comes from ``FERROHSM_MASTER_KEY`` (or split-knowledge mode, or a store other processes
  serve from: PostgreSQL, ``processes = N``) answers 409: use the offline ``ferrohsm rekey``
  there (``key_file_for``).
* **Crash safety:** a kill -9 at any point leaves every record under the old or the new key
  (the journal holds each key sealed under the other); the next start resumes and finishes the
  rekey (``resume_at_start``) with whichever key the file holds, before any check or request
  (or the offline ``ferrohsm rekey --new-master-key-file <file>.rekey-new`` does, and the next
  start installs that file).
* **Failure midway** (a store error): the pause is never lifted; every request answers 503
  until a restart finishes the rekey from the journal (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ..audit.anchor import fsync_dir, write_private_file
from ..audit.chain import AuditEvent
from ..crypto.seal import Sealer
from ..domain.errors import ConfigError, Conflict, FerroError
from ..domain.model import RequestContext
from ..store.importjobs import ImportJobStore
from ..store.keystore import KeyStore
from . import rekey

HOLD_WAIT = 30.0  # seconds a request waits for a rekey in progress before 503
DRAIN_WAIT = 30.0  # seconds the rekey waits for the requests in flight before giving up
SIDECAR = ".rekey-new"
Append = Callable[[AuditEvent], dict[str, Any]]


class RekeyInProgress(FerroError):
    """A master-key rekey holds the key material: retry shortly."""

    code, status, outcome = "rekey_in_progress", 503, "error"


class Pause:
    """A readers/writer gate: requests are readers, the rekey is the one writer."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._paused = False
        self._broken: str | None = None

    @property
    def broken(self) -> str | None:
        """Why every request is refused until a restart (a rekey failed midway), or None."""
        return self._broken

    @property
    def paused(self) -> bool:
        return self._paused or self._broken is not None

    def enter(self, wait: bool = True) -> None:
        """Count one request in, once no rekey holds the pause (RekeyInProgress after
        HOLD_WAIT, or at once without ``wait``: a request on the server's event loop must not
        stall it). The hot path: one uncontended lock, no allocation."""
        with self._cond:
            if self._paused and not (wait and self._cond.wait_for(lambda: not self._paused,
                                                                  HOLD_WAIT)):
                raise RekeyInProgress("a master-key rekey is in progress; retry shortly")
            if self._broken is not None:
                raise RekeyInProgress(self._broken)
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            if self._paused:  # only a draining rekey waits for this
                self._cond.notify_all()

    @contextmanager
    def hold(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Called from inside a held request (the rekey request itself): it waits for every
        OTHER request to finish."""
        with self._cond:
            if self._paused:
                raise Conflict("a master-key rekey is already running")
            self._paused = True
            if not self._cond.wait_for(lambda: self._active <= 1, DRAIN_WAIT):
                self._paused = False
                self._cond.notify_all()
                raise RekeyInProgress(f"requests in flight did not finish within "
                                      f"{DRAIN_WAIT:.0f} s; nothing was changed: try again")
        try:
            yield
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """At shutdown: admit nothing more and wait up to ``timeout`` seconds for what holds the
        pause to finish (a scheduler tick in the middle of a change, whose settling record must
        be written before the audit log closes). False when something was still running."""
        with self._cond:
            self._broken = self._broken or "the server is stopping"
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._active <= 0, timeout)

    def break_for_good(self, reason: str) -> None:
        """Refuse every further request (503) until a restart."""
        with self._cond:
            self._broken = reason
            self._cond.notify_all()


OFFLINE = ("; rotate it with the server stopped: `ferrohsm rekey` (README, Split-knowledge "
           "unsealing and rekey)")


def key_file_for(unseal: str, key_in_environment: bool, master_key_file: str,
                 shared_by: str = "") -> tuple[str, str]:
    """Where an online rekey writes the new master key, or "" and why it cannot run here.
    ``shared_by`` names who else serves from the key store (a rekey here would leave them
    holding the old key)."""
    if shared_by:
        return "", (f"the key store is shared by {shared_by}: the others would still hold "
                    "the old key; stop them all" + OFFLINE)
    if unseal != "env":
        return "", "split-knowledge mode: new shares are issued by the offline rekey" + OFFLINE
    if key_in_environment:
        return "", ("the master key comes from FERROHSM_MASTER_KEY, which the server cannot "
                    "replace" + OFFLINE)
    if not master_key_file:
        return "", "no [secrets].master_key_file to write the new master key to" + OFFLINE
    return master_key_file, ""


def installer(engine: Any) -> Callable[[bytes], None]:
    """Swap the key engine's sealer (engine/keyengine.py) and drop its unsealed-key cache."""
    def install(master: bytes) -> None:
        engine.sealer = Sealer(master)
        engine.cache.clear()
    return install


# ---- the new key's file ---------------------------------------------------------------------

def _read_key(path: Path) -> bytes | None:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {type(exc).__name__}") from None
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{path} does not hold a base64 master key")
    return raw


def prepare_key_file(key_file: str) -> bytes:
    """A fresh key, durable in ``<key_file>.rekey-new`` (0600) before anything uses it. A
    sidecar left by a run killed before its journal started was never used: replaced. Written
    under a temporary name and linked into place, so a kill leaves the sidecar whole or
    absent, never empty (which a start-up would have to refuse)."""
    side = Path(key_file + SIDECAR)
    _replaceable(Path(key_file))
    key = os.urandom(32)
    try:
        side.unlink(missing_ok=True)
        write_private_file(str(side), base64.b64encode(key) + b"\n")
    except OSError as exc:  # e.g. a read-only secrets mount: nothing has changed yet
        raise Conflict(f"cannot write the new master key to {side} ({exc.strerror}): the "
                       "directory of [secrets].master_key_file must be writable by the "
                       "server" + OFFLINE) from None
    return key


def _replaceable(path: Path) -> None:
    """Refuse, before anything changes, a key file the final rename could not replace: a
    symlink (the link would become a file, the old key left in its target) or a file mounted
    on its own (a container's bind mount: EBUSY once every record was re-sealed, an outside
    tester's outage). Conflict, naming the way out."""
    why = ("is a symbolic link: the rekey would replace the link, and leave the old key in "
           "its target; name the file itself" if path.is_symlink() else
           "is mounted on its own (a bind-mounted file): the server cannot replace it; mount "
           "its directory instead" if str(path.resolve()) in _mount_points() else "")
    if why:
        raise Conflict(f"[secrets].master_key_file {path} {why}" + OFFLINE)


def _mount_points() -> set[str]:
    """Where things are mounted (mountinfo's fifth field, its octal escapes such as \\040
    undone; the rest of the text, UTF-8 included, as it is)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return set()
    return {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            for fields in (line.split() for line in lines) if len(fields) > 4}


def install_key_file(key_file: str, new: bytes) -> None:
    """The sidecar renamed over ``key_file`` (atomic; idempotent once done)."""
    path, side = Path(key_file), Path(key_file + SIDECAR)
    held = _read_key(side)
    if held is not None:
        if held != new:
            raise ConfigError(f"{side} holds another key than the rekey's new key")
        try:
            os.replace(side, path)
        except OSError as exc:  # the store is under the new key: say where it is
            raise ConfigError(f"the store is under the new master key, which is in {side}, "
                              f"but it could not replace {path} ({exc.strerror}): move it "
                              f"there by hand (mv {side} {path}), then start the server") \
                from None
        fsync_dir(str(path.parent))
        return
    if _read_key(path) != new:
        raise ConfigError(f"{path} does not hold the rekey's new master key and {side} is gone")


# ---- the steps ------------------------------------------------------------------------------

def complete(store: KeyStore, jobs: ImportJobStore, keys: rekey.MasterKeys, key_file: str,
             changes: rekey.Changes, append: Append, ctx: RequestContext) -> int:
    """Steps 1-5 on a store whose journal is running; how many records were rewritten now."""
    store.use_record_mac(rekey.record_mac(keys.new))

    def progress(done: int) -> None:
        rekey.crash_point(f"record:{done}")
    count = rekey.convert(store, keys, changes, progress)
    rekey.reseal_jobs(jobs, keys)
    append(AuditEvent.from_context(ctx, "custody.rekey_progress", "success",
                                   f"{count} key record(s) re-sealed and re-MACed",
                                   details={"rewritten": count}))
    rekey.crash_point("converted")
    rekey.commit(store, keys)
    rekey.crash_point("committed")
    install_key_file(key_file, keys.new)
    rekey.crash_point("installed")
    rekey.finish(store)
    return count


# While held, no other node starts on the store; says how many other nodes serve it (several
# `serve` on one SQLite data directory: store/nodelock.py), None when one is starting or a
# backup, restore or rekey holds the store.
Sole = Callable[[], AbstractContextManager[int | None]]


class OnlineRekey:
    """What ``POST /v1/sys/rekey`` runs once authorized (and approved, when configured)."""

    def __init__(self, store: KeyStore, jobs: ImportJobStore, append: Append,
                 install: Callable[[bytes], None], master: bytes, key_file: str,
                 unavailable: str, pause: Pause, sole: Sole | None = None) -> None:
        self._sole: Sole = sole or (lambda: nullcontext(0))
        self._store = store
        self._jobs = jobs
        self._append = append
        self._install = install  # the engine's sealer and cache (app.py)
        self._master = master
        self._key_file = key_file
        self._unavailable = unavailable
        self._pause = pause

    @property
    def master(self) -> bytes:
        """The master key the records are sealed under now (the new one after a rekey): what
        an online backup derives its key from (custodywire.py)."""
        return self._master

    def __call__(self, ctx: RequestContext) -> dict[str, Any]:
        if not self._key_file:
            raise Conflict(self._unavailable)
        with self._sole() as others:
            if others is None:
                raise Conflict("a master-key rekey, a backup or restore, or a node's start-up "
                               "holds this data directory: try again when it ends")
            if others:  # they would keep the old key, and lose what they write under it
                raise Conflict(f"{others} other node(s) serve this data directory: they would "
                               "still hold the old key; stop them all" + OFFLINE)
            return self._checked_run(ctx)

    def _checked_run(self, ctx: RequestContext) -> dict[str, Any]:
        try:  # a record the rekey cannot convert would stop it halfway: refuse now. Before
            # the pause (a dry run opens every version): what is written meanwhile is sealed
            # under the current key, and the pause checks the records' MACs again
            rekey.refuse_damaged(rekey.damaged(self._store, self._master),
                                 "stop the server and run the offline `ferrohsm rekey "
                                 "--leave-damaged`, which leaves them unreadable")
        except ConfigError as exc:
            raise Conflict(exc.message) from None
        with self._pause.exclusive():
            return self._run(ctx)

    def _audit(self, ctx: RequestContext, action: str, outcome: str, message: str,
               **details: Any) -> None:
        self._append(AuditEvent.from_context(ctx, action, outcome, message, details=details))

    def _run(self, ctx: RequestContext) -> dict[str, Any]:
        faults = self._store.check_records().faults
        if faults:  # changed since the dry run (``__call__``): refuse, nothing changed
            raise Conflict(f"{len(faults)} key record(s) fail their integrity check (first: "
                           f"key {faults[0].key_id}): nothing was changed; restore them from a "
                           "backup first (the audit log names them at every start)")
        keys = rekey.MasterKeys(self._master, prepare_key_file(self._key_file))
        self._audit(ctx, "custody.rekey_started", "success", "online master-key rekey started",
                    mode="env", online=True)
        rekey.start_journal(self._store, keys)
        rekey.crash_point("journal")
        try:
            count = complete(self._store, self._jobs, keys, self._key_file,
                             rekey.Changes(ctx, self._append), self._append, ctx)
            self._install(keys.new)
        except BaseException as exc:
            message = exc.message if isinstance(exc, FerroError) else type(exc).__name__
            self._pause.break_for_good("a master-key rekey failed midway; every key is still "
                                       "readable: restart the server to finish it")
            self._audit(ctx, "custody.rekey_done", "error", f"online rekey failed midway "
                        f"({message}); requests are refused until a restart finishes it")
            raise
        self._master = keys.new
        self._audit(ctx, "custody.rekey_done", "success", "master-key rekey done: the new key "
                    f"is the store's key and is in {self._key_file}", rewritten=count)
        return {"rekeyed": True, "rewritten": count, "master_key_file": self._key_file}


def _finished_offline(store: KeyStore, master: bytes, key_file: str) -> bytes:
    """An interrupted online rekey finished by the offline ``ferrohsm rekey
    --new-master-key-file <key_file>.rekey-new``: the new key is installed now. A sidecar whose
    key the store does not know (a run killed before its journal) is left alone, and so is
    one that does not even hold a key (left by an older version killed while writing it: no
    journal ever ran with it)."""
    try:
        held = _read_key(Path(key_file + SIDECAR))
    except ConfigError:
        return master
    if held is None or not _the_stores_key(store, master, held):
        return master
    install_key_file(key_file, held)
    store.use_record_mac(rekey.record_mac(held))
    return held


def adopt_key_file(store: KeyStore, master: bytes, key_file: str) -> bytes:
    """A node that waited for another's online rekey to end before joining it (a rekey holds
    the store's start-up lock): the key file now holds the new key, which the store's check
    value names; the store is opened under it. ``master`` unchanged otherwise."""
    held = _read_key(Path(key_file))
    if held is None or not _the_stores_key(store, master, held):
        return master
    store.use_record_mac(rekey.record_mac(held))
    return held


def _the_stores_key(store: KeyStore, master: bytes, held: bytes) -> bool:
    """Whether ``held``, another key than ``master``, is the one the store's check value names."""
    check = store.get_meta(rekey.CHECK_VALUE)
    if check is None or held == master:
        return False
    try:
        Sealer(held).verify_check_value(check)
    except ConfigError:
        return False
    return True


def resume_at_start(store: KeyStore, jobs: ImportJobStore, master: bytes, key_file: str,
                    open_append: Callable[[], tuple[Append, Callable[[], None]]],
                    ctx: RequestContext) -> bytes:
    """Start-up: finish an interrupted online rekey and return the key to serve with, or
    ``master`` unchanged when there is nothing this server can finish (the offline rekey's
    journal without our sidecar: ``refuse_if_interrupted`` then refuses as before)."""
    if not key_file:
        return master
    if rekey.journal_state(store) != "running":
        return _finished_offline(store, master, key_file)
    keys = rekey.MasterKeys.from_journal(store.get_meta(rekey.JOURNAL) or b"", master)
    if not Path(key_file + SIDECAR).exists() and master != keys.new:
        return master
    append, close = open_append()
    try:
        append(AuditEvent.from_context(ctx, "custody.rekey_resumed", "success",
                                       "interrupted online master-key rekey resumed at start-up",
                                       details={"mode": "env", "online": True}))
        count = complete(store, jobs, keys, key_file, rekey.Changes(ctx, append), append, ctx)
        append(AuditEvent.from_context(ctx, "custody.rekey_done", "success",
                                       "master-key rekey done at start-up: the new key is the "
                                       f"store's key and is in {key_file}",
                                       details={"rewritten": count}))
    finally:
        close()
    return keys.new
