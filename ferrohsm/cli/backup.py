"""`ferrohsm backup --out FILE` (online, or --offline) and `ferrohsm restore FILE`.

Online, backup asks the running server (``POST /v1/sys/backup``, Administrators). Offline, it
opens the data directory as ``serve`` does (every start-up check, reconciliation
included), so a damaged or inconsistent store is not backed up, and a running server's locks (the
filesystem store, the file audit sink) make it refuse. Restore verifies the whole archive (its
authentication, every record MAC, the master key's check value) before it writes anything, and
only into an empty data directory and store (custody/restore.py says what a kill -9 leaves).

Split-knowledge mode: the master key is rebuilt from a threshold of the custodians' shares and
checked against the custody file in the data directory (a restore's target holds a copy of the
source's); shares that do not open it are refused before anything is written, and a refused
offline backup is recorded in the source's audit log.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import dataclasses
import errno
import glob
import hashlib
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, load_config, load_secrets
from ..domain.errors import ConfigError, IntegrityError
from .errors import CANNOT_WRITE, USAGE, CliExit
from .settings import client_flags
from .streams import names_stdout, writing

if TYPE_CHECKING:
    from ..config import Secrets
    from ..crypto.archive import BackupKey
    from ..custody.snapshot import RevocationSource

MAX_ARCHIVE = 1 << 31


def _flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (see config.example.toml)")
    p.add_argument("--key-store", metavar="KIND",
                   help="key store backend: filesystem, sqlite or any other persistent store "
                   "[storage].key_store accepts (default: the configuration's)")
    p.add_argument("--data-dir", metavar="DIR", help="the data directory (default: the configuration's)")
    p.add_argument("--backup-key-file", metavar="FILE", help="0600 file holding a separate "
                   "backup key (base64 of 32 bytes); default FERROHSM_BACKUP_KEY, else "
                   "[secrets].backup_key_file, else a key derived from the master key")
    p.add_argument("--share-file", action="append", default=[], metavar="FILE",
                   help='split-knowledge mode ([secrets] unseal = "shamir"): a file with one '
                   "unseal share (repeat; the rest are read from stdin or prompted for)")
    p.add_argument("--private-key", metavar="FILE", action="append", default=[],
                   help="a custodian's private key opening encrypted share files (repeat for "
                   "shares encrypted to different custodians)")


def add_parsers(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    b = sub.add_parser("backup", help="write an encrypted backup archive of every key",
                       parents=[client_flags()], allow_abbrev=False,
                       description="Write one archive of the key records (still sealed), "
                       "approvals, the token revocations in force and the audit head, "
                       "encrypted and authenticated under the backup key. Online (default): "
                       "asks the running server (POST /v1/sys/backup, an Administrator token). "
                       "--offline: reads a stopped server's data directory itself, with the "
                       "secrets serve uses.",
                       formatter_class=fmt, epilog="examples:\n  ferrohsm backup --out "
                       "/backups/ferrohsm-$(date +%F).fhsmbak\n  ferrohsm backup --offline "
                       "--config ferrohsm.toml --out /backups/ferrohsm.fhsmbak")
    _flags(b)
    b.add_argument("--offline", action="store_true",
                   help="back up a stopped server's data directory instead of asking the server")
    b.add_argument("--out", required=True, metavar="FILE", help="archive to write (0600; must not exist)")
    b.set_defaults(func=run_backup)
    r = sub.add_parser("restore", help="restore a backup archive into an empty data directory",
                       description="Verify the archive completely, then restore it into an "
                       "empty data directory and store (any store kind), the token revocations "
                       "of the archive into its deny-list (tokens revoked in the source after "
                       "the backup are not: revoke them again, or change the JWT secret). Needs "
                       "the same master key (and backup key) as the source; in split-knowledge "
                       "mode, a threshold of its shares and its custody.json copied into the "
                       "new data directory first.", formatter_class=fmt,
                       epilog="examples:\n  ferrohsm restore /backups/ferrohsm.fhsmbak "
                       "--data-dir /var/lib/ferrohsm-new --key-store sqlite\n  install -d -m 700 "
                       "/var/lib/ferrohsm-new && cp /var/lib/ferrohsm/custody.json "
                       "/var/lib/ferrohsm-new/ && ferrohsm "
                       "restore /backups/ferrohsm.fhsmbak --data-dir /var/lib/ferrohsm-new "
                       "--share-file share-1 --share-file share-2")
    _flags(r)
    r.add_argument("archive", metavar="FILE", help="the archive written by `ferrohsm backup`")
    r.set_defaults(func=run_restore)


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config, overrides={
        ("storage", "key_store"): args.key_store, ("storage", "data_dir"): args.data_dir,
        ("secrets", "backup_key_file"): args.backup_key_file})
    from ..custody import state
    if config.secrets.unseal != "shamir" and state.path_in(config.storage.data_dir).exists():
        # a custody file in the data directory (copied there for a restore, or a split-
        # knowledge server's own) means its shares hold the master key, whatever the defaults
        config = dataclasses.replace(config, secrets=dataclasses.replace(config.secrets,
                                                                         unseal="shamir"))
    if config.secrets.unseal != "shamir" and (args.share_file or args.private_key):
        raise ConfigError('--share-file and --private-key are for split-knowledge mode '
                          '([secrets] unseal = "shamir"): here the master key comes from '
                          "FERROHSM_MASTER_KEY or [secrets].master_key_file")
    return config


def _secrets(config: Config, args: argparse.Namespace, untouched: str) -> Any:
    """The secrets ``serve`` would use. In split-knowledge mode nobody holds the master key:
    a threshold of custodians give their shares, and the custody file in the data directory
    checks them (for a restore, the source's, copied there first)."""
    if config.secrets.unseal != "shamir":
        return load_secrets(config)
    from ..custody import state
    from .custody import master_from_shares, other_secrets
    secrets = other_secrets(config)
    if not state.path_in(config.storage.data_dir).exists():
        raise ConfigError(f"split-knowledge mode: {state.path_in(config.storage.data_dir)} does "
                          "not exist. For a restore, copy the source data directory's "
                          f"{state.FILE_NAME} there first: its shares open the archive")
    master = master_from_shares(args.share_file, args.private_key, config.storage.data_dir,
                                untouched)
    return dataclasses.replace(secrets, master_key=master)


def run_backup(args: argparse.Namespace) -> int:
    """Check the flags and open the archive's file before anything is read or asked: an
    archive that cannot be written must not cost the server an audited backup nobody got."""
    if args.out == "-" or names_stdout(args.out):
        raise CliExit("--out names the archive's file: a backup is written to a new 0600 "
                      "file, never to standard output", USAGE)
    if not args.offline:
        _online_only(args)
    with PrivateArchive(args.out) as archive:
        args.archive_out = archive
        if args.offline:
            return run_offline_backup(args)
        from .main import run_client
        args.client_func = fetch_backup
        return run_client(args)


def _online_only(args: argparse.Namespace) -> None:
    given = [f for f, v in (("--config", args.config), ("--data-dir", args.data_dir),
                            ("--key-store", args.key_store),
                            ("--backup-key-file", args.backup_key_file),
                            ("--share-file", args.share_file),
                            ("--private-key", args.private_key)) if v]
    if given:
        raise CliExit(f"{', '.join(given)}: only with --offline (online, the server's own "
                      "settings apply)", USAGE)
    if os.environ.get("FERROHSM_BACKUP_KEY"):  # the flag's twin: said, not silently passed over
        print("ferrohsm: warning: FERROHSM_BACKUP_KEY is not used by an online backup: the "
              "server seals the archive with its own backup key (its environment's "
              "FERROHSM_BACKUP_KEY or [secrets].backup_key_file, else the one derived from its "
              "master key); unset it, or back up with --offline", file=sys.stderr)


def fetch_backup(args: argparse.Namespace, client: Any, settings: Any) -> int:
    """The online backup: the server's archive, checked against its digest, written 0600."""
    reply = client.request("POST", "/v1/sys/backup")
    try:
        data = base64.b64decode(reply["archive"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise CliExit("the server's answer holds no archive", 1) from None
    if hashlib.sha256(data).hexdigest() != reply.get("sha256"):
        raise CliExit("the archive does not match the digest the server sent", 1)
    args.archive_out.commit(data)
    _report(args, Path(args.out), reply.get("header") or {}, reply["sha256"])
    return 0


def _report(args: argparse.Namespace, out: Path, h: dict[str, Any], digest: str) -> None:
    """The archive written: a line, or with --output json / --field the archive's header, its
    digest and where it went (the same for an online and an offline backup)."""
    from .output import emit
    from .settings import output_only
    emit(output_only(args), {"out": str(out), "sha256": digest, "header": h}, lambda: (
        f"wrote {out}: {h.get('key_count')} key(s), {h.get('approval_count')} approval(s), "
        f"{h.get('revoked_token_count', 0)} token revocation(s), "
        f"audit head seq {(h.get('audit_head') or {}).get('seq')}, "
        f"{(h.get('backup_key') or {}).get('kind')} backup key "
        f"{(h.get('backup_key') or {}).get('id')}, sha256 {digest}"))


def run_offline_backup(args: argparse.Namespace) -> int:
    from .. import app as wiring
    from ..custody.keysource import backup_key
    from ..integrity.logcheck import StartupRefused
    from .custody import offline_hold, require_data_dir
    config = _config(args)
    if config.storage.key_store == "memory":
        raise ConfigError("the memory key store keeps nothing to back up")
    require_data_dir(config)
    out = Path(args.out)
    try:
        secrets = _secrets(config, args, "nothing was written")
    except ConfigError as exc:
        if config.secrets.unseal == "shamir":
            _record_refused(wiring, config, exc.message)
        raise
    key = backup_key(secrets.master_key, os.environ, config.secrets.backup_key_file)
    # SQLite takes no lock a reader meets: a server running (or starting) on the directory is
    # refused, and one started meanwhile waits until the backup is written
    with offline_hold(config) as alone:
        if not alone:
            raise StartupRefused(f"{config.storage.data_dir} is in use by a running server: back "
                                 "it up online (ferrohsm backup without --offline), or stop it "
                                 "first")
        return _offline_backup(args, config, secrets, key, out)


def _offline_backup(args: argparse.Namespace, config: Config, secrets: Secrets,
                    key: BackupKey, out: Path) -> int:
    from .. import app as wiring
    from ..custody import snapshot
    try:
        store, approvals, audit, settled = wiring.open_for_backup(config, secrets)
    except OSError as exc:
        raise wiring.startup_failure(exc) from None
    try:
        revoked = LoggedRevocations(wiring.open_revocations(config, store), settled.revoked,
                                    config.auth.max_token_ttl_seconds, config.auth.leeway_seconds)
        newest = settled.approval_revisions  # what the log confirms (app.open_for_backup)
        try:
            written = snapshot.take_archive(store, approvals, audit, secrets.master_key, key,
                                            config.storage.key_store, revoked,
                                            lambda a: a.revision >= newest.get(a.id, 0))
        except IntegrityError as exc:  # a record the server refuses: no archive, on record
            audit.append(snapshot.refused_event(str(exc)))
            raise
        args.archive_out.commit(written.data)
        try:
            audit.append(snapshot.backup_event(written, str(out)))
        except BaseException:
            out.unlink(missing_ok=True)  # not audited: not a backup
            raise
    finally:
        audit.close()
        approvals.close()
        store.close()
    _report(args, out, written.header, written.digest)
    return 0


class LoggedRevocations:
    """What an offline backup carries of the revoked tokens: the deny-list's entries and the
    source audit log's revocations still in force. ``serve`` puts the log's back on a deny-list
    lost or edited while it was stopped; the stopped server's archive must hold them too."""

    def __init__(self, listed: RevocationSource,
                 logged: Iterable[tuple[str, float | None, float]], max_ttl: int,
                 leeway: int) -> None:
        self._listed, self._logged = listed, tuple(logged)
        self._max_ttl, self._leeway = max_ttl, leeway

    def entries(self, now: float) -> dict[str, float]:
        from ..auth.authn import logged_in_force
        from ..auth.denylist import lengthened
        return lengthened(logged_in_force(self._logged, now, self._max_ttl, self._leeway),
                          self._listed.entries(now))


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def _remove_stale(path: Path) -> None:
    """Remove the temporary files of backups to ``path`` whose process is gone (a kill -9
    leaves one; a backup that ends any other way removes its own). A running one's is kept."""
    prefix = f".{path.name}.{_HOST}-"  # this host's: a pid says nothing of another's (NFS)
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = leftover.name[len(prefix):-len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            leftover.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: alive
        return True
    return True


class PrivateArchive:
    """The archive's file, opened before the backup is taken: a 0600 temporary file beside it
    (created now, so a missing directory or a read-only disk fails first, exit 3), written,
    fsynced and linked into place at ``commit``; removed if the backup does not get that far. A
    write that fails after the server made the archive is exit 5 (streams.writing). The link
    never replaces a file: one made at the path while the backup ran (another job's archive)
    is kept and the backup refused, exit 3; a rename would have overwritten it."""

    def __init__(self, out: str) -> None:
        if not out.strip() or out.endswith("/"):
            raise CliExit(f"--out {out!r}: name the archive file to write", USAGE)
        self.path = Path(out)
        self.tmp = self.path.with_name(f".{self.path.name}.{_HOST}-{os.getpid()}.tmp")
        try:
            if self.path.exists():
                raise FileExistsError(0, "it exists: choose a new archive name")
            _remove_stale(self.path)
            self.fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                          | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise CliExit(f"cannot write {out}: {exc.strerror or exc}; no backup was taken",
                          CANNOT_WRITE) from None

    def commit(self, data: bytes) -> None:
        """Atomically: written, fsynced, linked into place (never over a file), the directory
        fsynced."""
        if self.fd is None:
            raise CliExit(f"{self.path}: the archive was already written", 1)
        with writing(str(self.path)):
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            try:
                _place(self.tmp, self.path)
            except FileExistsError:
                raise CliExit(f"cannot write {self.path}: a file was made there while the "
                              "backup ran, and an archive never replaces a file: choose a new "
                              "archive name; nothing was written", CANNOT_WRITE) from None
            finally:
                self.tmp.unlink(missing_ok=True)
            dir_fd = os.open(self.path.parent if str(self.path.parent) else ".", os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def __enter__(self) -> PrivateArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.tmp.unlink(missing_ok=True)


def _place(tmp: Path, path: Path) -> None:
    """``tmp`` at ``path`` whole, or FileExistsError if ``path`` exists. A filesystem without
    hard links (FAT, some network shares) gets the name reserved by an exclusive create, then
    replaced by ``tmp``: still never over a file someone else made."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    os.replace(tmp, path)


def _read_archive(path: str) -> bytes:
    """The archive's bytes; one that cannot be read is a bad input (exit 2, like --in)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ARCHIVE + 1)
    except OSError as exc:
        raise CliExit(f"cannot read {path}: {exc.strerror}", USAGE) from None
    if len(data) > MAX_ARCHIVE:
        raise CliExit(f"{path} is too large to be a FerroHSM backup archive", USAGE)
    return data


def _record_refused(wiring: Any, config: Config, why: str) -> None:
    """An offline backup the shares did not open: recorded in the source's log (as a refused
    rekey is), never hiding the refusal itself. Messages about shares never quote one."""
    from ..audit.chain import AuditEvent
    from .custody import cli_context, other_secrets
    try:
        sink = wiring.open_audit(config, other_secrets(config))
    except Exception:  # no log to record in (or it is held): the refusal is reported anyway
        return
    try:
        sink.append(AuditEvent.from_context(cli_context(), "system.backup", "denied",
                                            f"offline backup refused: {why}"))
    except Exception:  # noqa: S110  the refusal is the error to report
        pass
    finally:
        sink.close()


def run_restore(args: argparse.Namespace) -> int:
    from .. import app as wiring
    from ..custody import restore as restoring
    from ..custody.keysource import backup_key
    config = _config(args)
    if config.storage.key_store == "memory":
        raise ConfigError("restore into the memory key store keeps nothing: choose filesystem "
                          "or sqlite")
    data = _read_archive(args.archive)
    secrets = _secrets(config, args, "nothing was restored")
    key = backup_key(secrets.master_key, os.environ, config.secrets.backup_key_file)
    got = restoring.verify_under(data, secrets.master_key, key)  # before anything is written
    digest = hashlib.sha256(data).hexdigest()
    try:
        revoked = _restore(wiring, config, secrets, got, digest)
    except OSError as exc:
        raise wiring.startup_failure(exc) from None
    print(f"restored {len(got.keys)} key(s), {len(got.approvals)} approval(s) and {revoked} "
          f"token revocation(s) into {config.storage.data_dir} ({config.storage.key_store}); "
          f"source audit head seq {got.audit_head.get('seq')}. Note: "
          f"{restoring.state_as_taken(got.header)}; destroy it again if its destruction must "
          f"stand. {restoring.revocations_as_taken(got.header)}. The AES-GCM encryption "
          f"counts of the keys are the archive's too: rotate the aes-256-gcm encrypt keys the "
          f"source used since, or their encryptions since go uncounted against the 2^32 bound. "
          f"Start the server with the same "
          f"{'shares' if config.secrets.unseal == 'shamir' else 'master key'}."
          f"{_witness_note(config)}")
    return 0


def _witness_note(config: Config) -> str:
    """The restored log is a new log: a file witness holding another log's checkpoints would
    stop the restored server's start (as a replaced log must)."""
    witness = config.audit.witness
    path = Path(witness.removeprefix("file:")) if witness.startswith("file:") else None
    try:
        if path is None or not path.is_file() or not path.stat().st_size:
            return ""
    except OSError as exc:  # the restore is done: this note must not turn it into a failure
        return f" The witness {path} could not be read ({exc.strerror}): see the README."
    return (f" The witness {path} holds checkpoints of another log (the source's): keep it with "
            "the archive and give the restored server a new witness file ([audit].witness), "
            "or its start is refused as a replaced log.")


def _restore(wiring: Any, config: Config, secrets: Any, got: Any, digest: str) -> int:
    """Into the empty (or interrupted) target, held alone; how many token revocations were
    written."""
    from ..custody import restore as restoring
    from ..datadir import local_store_present
    from .custody import offline_hold
    location = wiring.audit_location(config)
    storage = config.storage
    if location.present() and not local_store_present(storage.key_store, storage.data_dir):
        raise restoring.not_empty(["an audit log"])  # refused before the stores are made
    if storage.key_store == "sqlite":  # nothing else serialises two restores of one directory
        wiring.ensure_private_dir(storage.data_dir)
    # A second restore waits here, then finds the target restored (not empty); a server started
    # meanwhile waits to start on the restored store instead of finding a restore in progress.
    with offline_hold(config) as alone:
        if not alone:
            raise restoring.TargetNotEmpty(f"{storage.data_dir} is in use by a running "
                                           "server: restore into a new, empty data directory")
        return _restore_held(wiring, config, secrets, got, digest, location)


def _restore_held(wiring: Any, config: Config, secrets: Any, got: Any, digest: str,
                  location: Any) -> int:
    """``_restore`` once the target is held: an interrupted restore is started over."""
    from ..custody import restore as restoring
    store, approvals = wiring.open_restore_target(config, secrets)
    try:
        revocations = wiring.open_revocations(config, store)
        state = restoring.target_state(store, approvals, location.present())
        if state == "interrupted":
            print("ferrohsm: the target holds an interrupted restore: starting over",
                  file=sys.stderr)
            restoring.wipe_interrupted(store, approvals)
            _move_aside(Path(location.directory))
        restoring.begin(store)
        audit = wiring.open_audit(config, secrets)
        try:
            revoked: int = restoring.apply(got, digest, store, approvals, audit, revocations)
        finally:
            audit.close()
        restoring.finish(store)
        return revoked
    finally:
        approvals.close()
        store.close()


def _move_aside(directory: Path) -> None:
    """An interrupted restore's audit log is kept (renamed), never deleted."""
    if directory.exists():
        shutil.move(str(directory), f"{directory}.interrupted-{int(time.time())}")
