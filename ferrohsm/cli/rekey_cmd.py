"""`ferrohsm rekey`: rotate the master key of a data directory, with the server stopped.

A rekey beside a running server is refused: the filesystem store's lock refuses it, and for a
store several processes share (SQLite, PostgreSQL) it holds the lock a starting node takes.
The current key comes from FERROHSM_MASTER_KEY / [secrets].master_key_file, or in
split-knowledge mode from a threshold of shares (``--share-file``, stdin, or prompts). The new
key goes, in environment mode, to ``--new-master-key-file`` (0600; an existing file's key is
used, so an interrupted run is simply repeated), in split-knowledge mode into new shares,
printed once (or encrypted to ``--custodian-key`` files) BEFORE any record changes.
custody/rekey.py has the crash-safe steps; this module orders them and audits them.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..audit.anchor import write_private_file
from ..config import Config, decode_key32, load_secrets, read_secret_file
from ..domain.errors import ConfigError, FerroError

PROGRESS_EVERY = 500  # records between two custody.rekey_progress audit records


def add_parser(sub: Any, custody_flags: Callable[[Any], None]) -> None:
    from .settings import approval_flag, client_flags
    p = sub.add_parser("rekey", parents=[client_flags()],
                       help="rotate the master key (server stopped, or --online)",
                       description="Generate a new master key, re-seal every key version under "
                       "it, re-MAC every key record and replace the check value; crash-safe "
                       "(run it again after any interruption, with the old or the new key). "
                       "Stop the server first, or give --online to have a running server do "
                       "it (POST /v1/sys/rekey: Administrators, dual control when "
                       "[approvals].rekey_approvals_required is set; the server writes the new "
                       "key to its [secrets].master_key_file).",
                       epilog="examples:\n  ferrohsm rekey --config ferrohsm.toml "
                       "--new-master-key-file /etc/ferrohsm/master.key.new\n"
                       "  ferrohsm rekey --config ferrohsm.toml --shares 5 --threshold 3\n"
                       "  ferrohsm rekey --online --server https://hsm:8443 --reason 'yearly'",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-master-key-file", metavar="FILE",
                   help="environment mode: write the new key here (0600, base64); if FILE "
                   "exists its key is used. Point FERROHSM_MASTER_KEY or "
                   "[secrets].master_key_file at it afterwards")
    p.add_argument("--shares", type=int, help="split-knowledge mode: shares of the new key "
                   "(default: as now)")
    p.add_argument("--threshold", type=int, help="split-knowledge mode: threshold of the new "
                   "key (default: as now)")
    p.add_argument("--share-file", action="append", default=[], metavar="FILE",
                   help="split-knowledge mode: a file with one current share (repeat; the "
                   "rest are read from stdin or prompted for)")
    p.add_argument("--private-key", metavar="FILE", action="append", default=[],
                   help="a custodian's private key opening encrypted share files (repeat for "
                   "shares encrypted to different custodians)")
    p.add_argument("--leave-damaged", action="store_true",
                   help="rekey even though some key records cannot be re-sealed (their record "
                   "fails its integrity check, or their material does not open under the "
                   "master key): those are left as they are and stay unreadable for good. "
                   "Without it such records refuse the rekey before anything changes")
    p.add_argument("--online", action="store_true",
                   help="ask the running server (--server / FERROHSM_URL, an Administrator "
                   "token) to rekey while it serves; give a --timeout above the time it "
                   "takes (about 1.5 ms a key on SQLite, 6.5 ms on the filesystem store)")
    p.add_argument("--reason", default="", help="--online: why (bound to the approval)")
    approval_flag(p)
    custody_flags(p)
    p.set_defaults(func=run_rekey)


def run_rekey(args: argparse.Namespace) -> int:
    if args.online:
        from .main import run_client
        args.client_func = run_online
        return run_client(args)
    from .custody import custody_config, offline_hold, require_data_dir
    config = custody_config(args)
    require_data_dir(config)
    shamir = config.secrets.unseal == "shamir"
    _check_flags(args, config, shamir)  # a usage error: nothing was attempted, nothing recorded
    # A store several processes share takes no lock a serving node holds: without this hold
    # the rekey ran beside a live server, which went on sealing new keys under the old key.
    with offline_hold(config) as alone:
        if not alone:
            from ..integrity.logcheck import StartupRefused
            raise StartupRefused(f"the {config.storage.key_store} key store of "
                                 f"{config.storage.data_dir} is in use by a running server: "
                                 "stop it first, or rekey it online (ferrohsm rekey --online)")
        return _run_held(args, config, shamir)


def _run_held(args: argparse.Namespace, config: Config, shamir: bool) -> int:
    """``run_rekey`` once no node serves the store, and none can start until it ends."""
    from .. import app as wiring
    from ..audit.chain import AuditEvent
    from .custody import cli_context, other_secrets
    secrets = other_secrets(config) if shamir else load_secrets(config)
    ctx = cli_context()
    sink = wiring.open_audit(config, secrets)
    started: list[str] = []

    def audit(action: str, message: str, outcome: str = "success", **details: Any) -> None:
        sink.append(AuditEvent.from_context(ctx, action, outcome, message, details=details))
        if action in ("custody.rekey_started", "custody.rekey_resumed"):
            started.append(action)
    try:
        given = _shares_key(args, config) if shamir else secrets.master_key
        return _rekey(args, config, given, shamir, audit, rekey_changes(ctx, sink))
    except BaseException as exc:
        _record_failure(audit, exc, bool(started))
        raise
    finally:
        sink.close()


def _record_failure(audit: Callable[..., None], exc: BaseException, started: bool) -> None:
    """The refusal (wrong, duplicate or foreign shares, the wrong key: nothing changed) or the
    failure midway (run it again to finish) gets its own record, so a started rekey never
    stays without an outcome. A failure to record that is not allowed to hide ``exc``."""
    why = exc.message if isinstance(exc, FerroError) else type(exc).__name__
    try:
        if started:
            audit("custody.rekey_done", f"master-key rekey stopped midway ({why}); every "
                  "record is readable under the old or the new key: run it again to finish",
                  outcome="error")
        elif isinstance(exc, FerroError):
            audit("custody.rekey_started", f"master-key rekey refused: {why}; nothing changed",
                  outcome="denied")
    except Exception:  # noqa: S110  the original error is the one to report
        pass


def _check_flags(args: argparse.Namespace, config: Config, shamir: bool) -> None:
    """Every flag checked before a share is asked for or anything is recorded."""
    if not shamir:
        if not args.new_master_key_file:
            raise ConfigError("--new-master-key-file is required: the new master key cannot "
                              "be put into the environment of the server for you")
        if args.shares or args.threshold or args.share_file or args.private_key:
            raise ConfigError("--shares, --threshold, --share-file and --private-key are for "
                              "split-knowledge mode; this data directory's master key comes "
                              "from the environment or [secrets].master_key_file")
        where = Path(args.new_master_key_file).parent
        if not Path(args.new_master_key_file).exists() and not where.is_dir():
            raise ConfigError(f"--new-master-key-file {args.new_master_key_file}: the "
                              f"directory {where} does not exist: nothing was changed")
        return
    if args.new_master_key_file:
        raise ConfigError("--new-master-key-file is for environment (or master_key_file) "
                          "mode: in split-knowledge mode the new key goes into new shares")
    from ..custody import state
    from .custody import check_custodian_count
    check_custodian_count(args, _counts(args, state.load(config.storage.data_dir).current)[0])


def _counts(args: argparse.Namespace, current: Any) -> tuple[int, int]:
    """(shares, threshold) of the new split: the flags, else as now."""
    shares = args.shares or current.shares
    threshold = args.threshold or current.threshold
    if not 2 <= threshold <= shares <= 255:
        raise ConfigError("need 2 <= --threshold <= --shares <= 255")
    return shares, threshold


def run_online(args: argparse.Namespace, client: Any, settings: Any) -> int:
    """``POST /v1/sys/rekey`` (a 202 is reported by run_client: repeat with --approval-id)."""
    from .output import emit
    body = {"reason": args.reason} if args.reason else None
    result = client.request("POST", "/v1/sys/rekey", body, approval_id=settings.approval_id,
                            idempotent=False)
    emit(settings, result, lambda: f"rekey done: {result['rewritten']} key record(s) "
         f"re-sealed; the new master key is in {result['master_key_file']} on the server")
    return 0


def rekey_changes(ctx: Any, sink: Any) -> Any:
    from ..custody.rekey import Changes
    return Changes(ctx, sink.append)


def _rekey(args: argparse.Namespace, config: Config, given: bytes, shamir: bool,
           audit: Callable[..., None], changes: Any) -> int:
    from .. import app as wiring
    from ..custody import rekey
    store = wiring.open_store(config, rekey.record_mac(given))
    try:
        running = rekey.journal_state(store) == "running"
        if running:
            keys = rekey.MasterKeys.from_journal(store.get_meta(rekey.JOURNAL) or b"", given)
            leave = _damaged(args, store, keys.old, keys.new)
        else:
            _not_a_stopped_rekeys(store, config, given, shamir)
            leave = _damaged(args, store, rekey.verify_current(store, given))
            keys = rekey.MasterKeys(given, _new_key(args, shamir))  # refused: no key made
            if hmac.compare_digest(keys.new, given):
                raise ConfigError(f"{args.new_master_key_file} holds the current master key: "
                                  "the store is under it already (name a file that does not "
                                  "exist, and a new key is made into it)")
        audit("custody.rekey_resumed" if running else "custody.rekey_started",
              f"master-key rekey {'resumed' if running else 'started'}",
              mode="shamir" if shamir else "env",
              **({"left_damaged": len(leave), "left_keys": ",".join(sorted(leave)[:50])}
                 if leave else {}))
        if not running:
            _hand_out(args, config, keys, shamir)
            rekey.crash_point("handed-out")
            rekey.start_journal(store, keys)
            if shamir:
                print("re-sealing: from here on either set of shares finishes this rekey; "
                      "keep the current shares until it says `rekey done`", file=sys.stderr)
        elif not shamir:
            _write_key_file(args.new_master_key_file, keys.new)
    finally:
        store.close()
    rekey.crash_point("journal")
    if running and shamir:
        _ensure_pending(args, config, keys, given)
    store = wiring.open_store(config, rekey.record_mac(keys.new))
    try:
        count = rekey.convert(store, keys, changes, _progress(audit), leave)
        jobs = rekey.reseal_jobs(wiring.open_import_jobs(config, store), keys)
        audit("custody.rekey_progress", f"{count} key record(s) re-sealed and re-MACed",
              rewritten=count, import_jobs=jobs)
        rekey.crash_point("converted")
        rekey.commit(store, keys)
        rekey.crash_point("committed")
        if shamir:
            _promote(config, keys)
            rekey.crash_point("promoted")
        # Recorded before the journal says done: a kill between the two leaves the journal
        # running, and the rerun finishes it (another done record); the other way round the
        # rekey was done with no record of it, and a rerun could not tell.
        audit("custody.rekey_done", "master-key rekey done: the new key is the store's key")
        rekey.crash_point("recorded")
        rekey.finish(store)
    finally:
        store.close()
    print("rekey done" + ("" if shamir else f": start the server with the new master key in "
                          f"{args.new_master_key_file}"), file=sys.stderr)
    return 0


def _damaged(args: argparse.Namespace, store: Any, *masters: bytes) -> frozenset[str]:
    """The records the rekey cannot convert (custody/rekey.py ``damaged``), found before the
    journal starts: refused, nothing changed, unless ``--leave-damaged`` leaves them as they
    are. Also on a resumed run, whose journal would otherwise stay unfinishable."""
    from ..custody import rekey
    found = rekey.damaged(store, *masters)
    if found and not args.leave_damaged:
        rekey.refuse_damaged(found, "run again with --leave-damaged, which leaves them "
                             "unreadable for good")
    return frozenset(found)


def _not_a_stopped_rekeys(store: Any, config: Config, given: bytes, shamir: bool) -> None:
    """New shares with no rekey running: printed by a run stopped before its journal, so
    nothing changed and they open nothing. Said as such (not as "not this service's")."""
    from ..custody import rekey, state
    if not shamir or store.get_meta(rekey.CHECK_VALUE) is None:
        return
    pending = state.load(config.storage.data_dir).pending
    if pending is not None and pending.opens_with(given):
        try:
            rekey.verify_current(store, given)
        except ConfigError:
            raise ConfigError("these are the new shares of a rekey that stopped before it "
                              "changed anything: the current shares still open this data "
                              "directory. Run `ferrohsm rekey` again with them; it issues "
                              "new shares (discard these)") from None


def _progress(audit: Callable[..., None]) -> Callable[[int], None]:
    from ..custody import rekey

    def progress(done: int) -> None:
        rekey.crash_point(f"record:{done}")
        if done and done % PROGRESS_EVERY == 0:
            audit("custody.rekey_progress", f"{done} key record(s) re-sealed so far",
                  rewritten=done)
    return progress


def _new_key(args: argparse.Namespace, shamir: bool) -> bytes:
    """Split knowledge: fresh. Environment: the key in --new-master-key-file, or a fresh one
    written there (0600, never overwritten)."""
    if shamir:
        return os.urandom(32)
    path = Path(args.new_master_key_file)
    if path.exists():
        return decode_key32(read_secret_file(str(path), "--new-master-key-file"),
                            "--new-master-key-file")
    key = os.urandom(32)
    _write_key_file(str(path), key)
    return key


def _write_key_file(name: str, key: bytes) -> None:
    """Write ``key`` to a new 0600 file; an existing file must hold exactly this key."""
    path = Path(name)
    if path.exists():
        held = decode_key32(read_secret_file(name, "--new-master-key-file"),
                            "--new-master-key-file")
        if held != key:
            raise ConfigError(f"{name} holds another key than the interrupted rekey's new key")
        return
    # under a temporary name, linked into place: a kill leaves no empty file for the next run
    try:
        write_private_file(name, base64.b64encode(key) + b"\n")
    except OSError as exc:
        raise ConfigError(f"--new-master-key-file {name}: cannot write it "
                          f"({exc.strerror or exc}); this run re-sealed nothing") from None


def _hand_out(args: argparse.Namespace, config: Config, keys: Any, shamir: bool) -> None:
    """Split knowledge: new shares printed (or encrypted) once, then the pending split
    recorded, both before the journal exists (so before anything is re-sealed)."""
    if not shamir:
        return
    _issue_pending(args, config, keys)


def _issue_pending(args: argparse.Namespace, config: Config, keys: Any) -> None:
    from ..custody import rekey, state
    from .custody import issue_shares, read_custodian_keys
    current = state.load(config.storage.data_dir)
    shares, threshold = _counts(args, current.current)
    custodians = read_custodian_keys(args, shares)
    split, new_shares = state.new_split(keys.new, shares, threshold)
    pending = state.CustodyFile(current.current, split)
    # recorded first, then shown: shares shown and not recorded would open nothing
    state.save(config.storage.data_dir, pending.signed({current.current.split_id: keys.old,
                                                        split.split_id: keys.new}))
    rekey.crash_point("recorded")
    issue_shares(new_shares, custodians, args.out_dir, threshold)


def _ensure_pending(args: argparse.Namespace, config: Config, keys: Any, given: bytes) -> None:
    """Resuming with the NEW shares: their split stays (its custodians hold it; once promoted,
    the current one). Resuming with the OLD shares: nobody may hold the new split (the killed
    run's output is lost with a dropped session), and finishing onto it lost every key (an
    outside tester): a fresh split of the new key replaces it and is handed out here."""
    from ..custody import state
    custody = state.load(config.storage.data_dir)
    with_new = hmac.compare_digest(given, keys.new)
    for split in (custody.pending, custody.current):
        if split is not None and split.opens_with(keys.new) and (with_new or split is
                                                                 custody.current):
            return
    if custody.pending is not None and not with_new:
        print("resumed with the current shares: the new shares the interrupted run printed "
              "are void; these replace them", file=sys.stderr)
    _issue_pending(args, config, keys)


def _promote(config: Config, keys: Any) -> None:
    """The pending split becomes the current one (idempotent)."""
    from ..custody import state
    custody = state.load(config.storage.data_dir)
    if custody.pending is None or not custody.pending.opens_with(keys.new):
        return  # already promoted
    promoted = state.CustodyFile(custody.pending)
    state.save(config.storage.data_dir, promoted.signed({custody.pending.split_id: keys.new}))


def _shares_key(args: argparse.Namespace, config: Config) -> bytes:
    """The master key from a threshold of current (or, after an interruption, new) shares."""
    from .custody import master_from_shares
    return master_from_shares(args.share_file, args.private_key, config.storage.data_dir,
                              "nothing changed")
