"""`ferrohsm init`, `unseal`, `seal` and `rekey`: split-knowledge custody of the master key.

``init`` and ``rekey`` run on the data directory itself (the server stopped for ``rekey``); they
print each share once, to stdout or, with ``--custodian-key``, encrypted into one file per
custodian. ``unseal`` and ``seal`` are client commands. ``run_sealed`` serves a split-knowledge
data directory: it starts SEALED behind custody/gate.py.
"""

from __future__ import annotations

import argparse
import base64
import codecs
import dataclasses
import getpass
import os
import signal
import sys
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import Config, Secrets, load_config, load_secrets
from ..domain.errors import ConfigError, FerroError
from ..smallfile import MIB, read_at_most
from . import earlyhup, sdnotify
from .settings import client_flags, warn_if_readable

ENCRYPTED_HEADER = "FERROHSM ENCRYPTED SHARE v1"
_PLACEHOLDER = base64.b64encode(bytes(32)).decode("ascii")


def add_parsers(sub: Any) -> None:
    init = sub.add_parser("init", help="set up split-knowledge unsealing (Shamir shares)",
                          description="Generate the master key of a NEW data directory and "
                          "split it into --shares shares, any --threshold of which unseal the "
                          "server. Each share is printed once (or encrypted to one custodian "
                          "key each); only a check value is kept. Then set "
                          '[secrets] unseal = "shamir".',
                          epilog="examples:\n  ferrohsm init --data-dir /var/lib/ferrohsm "
                          "--shares 5 --threshold 3\n  ferrohsm init --shares 3 --threshold 2 "
                          "--custodian-key alice.pem --custodian-key bob.pem --custodian-key "
                          "carol.pem --out-dir shares/",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    init.add_argument("--shares", type=int, required=True, help="how many shares (2-255)")
    init.add_argument("--threshold", type=int, required=True,
                      help="how many shares unseal (2..--shares)")
    _custody_flags(init)
    init.set_defaults(func=run_init)
    unseal = sub.add_parser("unseal", parents=[client_flags()], help="submit one unseal share",
                            description="Submit one share to a sealed server (no token "
                            "needed). The share is read from --share-file, else from stdin "
                            "when it is not a terminal, else prompted for without echo.",
                            epilog="examples:\n  ferrohsm unseal\n  ferrohsm unseal --share-file "
                            "share-2.enc --private-key custodian2.key",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    unseal.add_argument("--share-file", help="a file holding the share (plain, or encrypted "
                        "by init/rekey: then give --private-key)")
    unseal.add_argument("--private-key", help="the custodian's PEM private key that opens an "
                        "encrypted --share-file (password from FERROHSM_CUSTODIAN_KEY_PASSWORD)")
    unseal.set_defaults(client_func=run_unseal)
    seal = sub.add_parser("seal", parents=[client_flags()], help="seal the server again",
                          description="Drop the master key from the server's memory "
                          "(Administrators); it answers only health and unseal afterwards.",
                          epilog="example:\n  ferrohsm seal",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    seal.set_defaults(client_func=run_seal)
    from .rekey_cmd import add_parser as add_rekey
    add_rekey(sub, _custody_flags)


def _custody_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--custodian-key", action="append", default=[], metavar="PEM",
                   help="a custodian's X25519 or RSA public key; give one per share, in order: "
                   "share i is written encrypted to --out-dir/share-i.enc")
    p.add_argument("--out-dir", default=".", help="where encrypted shares go (default: .)")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--data-dir", help="the data directory (overrides [storage].data_dir)")


def other_secrets(config: Config) -> Secrets:
    """The JWT secret and audit HMAC key; the master key is left empty: it comes from shares.
    A master key in the environment or the config is refused: it would defeat split knowledge."""
    if os.environ.get("FERROHSM_MASTER_KEY") or config.secrets.master_key_file:
        raise ConfigError("split-knowledge mode: the master key comes from the unseal shares; "
                          "unset FERROHSM_MASTER_KEY and [secrets].master_key_file")
    env = {**os.environ, "FERROHSM_MASTER_KEY": _PLACEHOLDER}
    return dataclasses.replace(load_secrets(config, env), master_key=b"")


def offline_hold(config: Config) -> AbstractContextManager[bool]:
    """The hold of an offline backup, restore or rekey (app.offline_alone), saying on stderr
    why it waits when a server is starting on the store (its cold start may take minutes) or
    another of them holds it: before, it waited without a word."""
    from .. import app as wiring
    where = (config.storage.data_dir if config.storage.key_store == "sqlite"
             else "the PostgreSQL database")

    def waiting() -> None:
        print(f"ferrohsm: waiting: a server is starting on {where}, or another backup, restore "
              "or rekey holds it; going on once it is done", file=sys.stderr, flush=True)
    return wiring.offline_alone(config, waiting)


def require_data_dir(config: Config) -> None:
    """An offline backup or rekey reads an installation that exists: a mistyped --data-dir
    made a new, empty one, and the backup of it said "0 key(s)" with exit 0 (an outside
    tester). Refused before anything (a lock file included) is created."""
    if config.storage.key_store in ("filesystem", "sqlite") \
            and not Path(config.storage.data_dir).is_dir():
        raise ConfigError(f"{config.storage.data_dir}: the data directory does not exist "
                          "(--data-dir, or [storage].data_dir of the config file)")


def custody_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config, overrides={("storage", "data_dir"): args.data_dir})
    if config.storage.key_store == "memory":
        raise ConfigError("split-knowledge unsealing needs a persistent key store")
    return config


def check_custodian_count(args: argparse.Namespace, shares: int) -> None:
    """One --custodian-key per share, or none (the shares are then printed)."""
    if args.custodian_key and len(args.custodian_key) != shares:
        raise ConfigError(f"give one --custodian-key per share: {shares} needed, "
                          f"{len(args.custodian_key)} given")


def read_custodian_keys(args: argparse.Namespace, shares: int) -> list[bytes]:
    from ..custody.custodians import recipient_kind
    if not args.custodian_key:
        return []
    check_custodian_count(args, shares)
    keys = []
    for name in args.custodian_key:
        try:
            pem = read_at_most(name, MIB)
            recipient_kind(pem)
        except OSError as exc:
            raise ConfigError(f"cannot read --custodian-key {name}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"--custodian-key {name}: {exc}") from None
        keys.append(pem)
    for i in range(1, shares + 1):
        if (Path(args.out_dir) / f"share-{i}.enc").exists():
            raise ConfigError(f"{Path(args.out_dir) / f'share-{i}.enc'} exists; choose another "
                              "--out-dir (a share file is never overwritten)")
    return keys


def issue_shares(shares: list[Any], keys: list[bytes], out_dir: str, threshold: int) -> None:
    """Each share once: to stdout, or encrypted to its custodian's key in its own 0600 file."""
    from ..custody.custodians import encrypt_share
    if not keys:
        print(f"Unseal shares: any {threshold} of these {len(shares)} unseal the server. Each is "
              "shown only this once; give one to each custodian.")
        for share in shares:
            print(f"share {share.x}: {share.text()}")
        sys.stdout.flush()
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for share, pem in zip(shares, keys, strict=True):
        path = Path(out_dir) / f"share-{share.x}.enc"
        blob = base64.b64encode(encrypt_share(pem, share.text().encode("ascii"))).decode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{ENCRYPTED_HEADER}\n{blob}\n")
        print(f"share {share.x}: encrypted to custodian key {share.x} in {path}")


def run_init(args: argparse.Namespace) -> int:
    from .. import app as wiring
    from ..custody import state
    config = custody_config(args)
    if not 2 <= args.threshold <= args.shares <= 255:
        raise ConfigError("need 2 <= --threshold <= --shares <= 255")
    keys = read_custodian_keys(args, args.shares)
    data = wiring.ensure_private_dir(config.storage.data_dir)
    if state.path_in(data).exists():
        _refuse_or_start_over(config, data, wiring.audit_location(config).present())
    if wiring.audit_location(config).present():
        raise ConfigError(f"{data} has been used (it has an audit log): init sets up a NEW data "
                          "directory")
    secrets = other_secrets(config)
    master = os.urandom(32)
    split, shares = state.new_split(master, args.shares, args.threshold)
    state.save(data, state.CustodyFile(split).signed({split.split_id: master}))
    del master
    try:
        audit_cli_event(config, secrets, "custody.init", f"split-knowledge unsealing set up: "
                        f"{args.threshold} of {args.shares} shares (split {split.split_id})",
                        split=split.split_id, shares=args.shares, threshold=args.threshold,
                        encrypted_to_custodians=bool(keys))
    except BaseException:
        state.path_in(data).unlink()
        raise
    issue_shares(shares, keys, args.out_dir, args.threshold)
    if config.secrets.unseal != "shamir":
        print('next: set [secrets] unseal = "shamir" (or FERROHSM_SECRETS_UNSEAL=shamir) and '
              "start the server; it starts sealed", file=sys.stderr)
    return 0


def _refuse_or_start_over(config: Config, data: Path, audit_present: bool) -> None:
    """A custody file is there. Without an audit log and a key store beside it, an init was
    killed before recording it, so before issuing a share (shares come after the record):
    nobody can hold a share of that key and nothing was sealed under it, so start over.
    Otherwise the directory is initialised (or was, and its shares were lost)."""
    from ..custody import state
    from ..datadir import local_store_present
    custody = state.path_in(data)
    if not audit_present and not local_store_present(config.storage.key_store, data):
        print(f"ferrohsm: {custody} is from an init killed before it was recorded (no share "
              "was issued): starting over", file=sys.stderr)
        custody.unlink()
        return
    raise ConfigError(f"{custody} exists: this data directory is already initialised "
                      "(`ferrohsm rekey` issues new shares; if the init that made it was "
                      "killed before it issued its shares, no key can be stored under it: "
                      "use a new data directory)")


def cli_context() -> Any:
    """The local operator as an audit actor (``cli:<user>``; holding the data directory and
    its secrets is what lets them run these commands)."""
    from ..domain.ids import uuid4_str
    from ..domain.model import Principal, RequestContext, Role
    return RequestContext(Principal(f"cli:{getpass.getuser()}", Role.ADMINISTRATOR),
                          request_id=uuid4_str())


def audit_cli_event(config: Config, secrets: Secrets, action: str, message: str,
                    **details: Any) -> None:
    """One durable record in the data directory's audit log, by the local operator."""
    from .. import app as wiring
    from ..audit.chain import AuditEvent
    sink = wiring.open_audit(config, secrets)
    try:
        sink.append(AuditEvent.from_context(cli_context(), action, "success", message,
                                            details=details))
    finally:
        sink.close()


def read_share_text(share_file: str | None, private_key: str | list[str] | None) -> str:
    """The share, from a file (decrypted with the custodian key when it is encrypted), stdin,
    or a prompt that does not echo."""
    if share_file:
        text = share_file_text(share_file).strip()
    elif not sys.stdin.isatty():
        text = sys.stdin.readline().lstrip("\ufeff").strip()
    else:
        try:
            text = getpass.getpass("Unseal share (not echoed): ").strip()
        except EOFError:  # Ctrl-D at the prompt ("unexpected EOFError" before): no share,
            print(file=sys.stderr)  # as from an empty pipe
            text = ""
    if text.startswith(ENCRYPTED_HEADER):
        return _decrypt(text, private_key)
    return text


MAX_SHARE_FILE = 1 << 16


def share_file_text(name: str) -> str:
    """A share file's text. Windows tools save text with a byte-order mark, CRLF line ends or
    as UTF-16: each is read as the share it holds, not refused as an unreadable file (which sent
    the custodian to its permissions). Anything else that is not ASCII is refused by what it
    is, never quoting the content (it may be a share)."""
    try:
        with open(name, "rb") as f:
            raw = f.read(MAX_SHARE_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read --share-file {name}: {exc.strerror}") from None
    if len(raw) > MAX_SHARE_FILE:
        raise ConfigError(f"--share-file {name} is too large to hold a share")
    warn_if_readable(Path(name), "the share file")
    text: str | None
    try:
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = raw.decode("utf-16")
        else:
            text = raw.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or not text.isascii() or "\0" in text:
        hint = " (UTF-16 without a byte-order mark?)" if b"\0" in raw else ""
        raise ConfigError(f"--share-file {name} is not ASCII text{hint}: a share is "
                          "fhsm1-<split>-<n>-<value>, ASCII letters, digits and dashes only; "
                          "a file holding anything else is not a share file")
    return text


def master_from_shares(share_files: list[str], private_key: list[str], data_dir: str,
                       untouched: str) -> bytes:
    """The master key from a threshold of the shares of ``data_dir``'s custody file: from the
    ``share_files`` first, then stdin or prompts. ``untouched`` ends the message for shares
    that do not open it (what the command has not done)."""
    from ..custody import state
    from ..custody.shares import parse_share
    from ..custody.unsealer import Unsealer, WrongShares
    unsealer = Unsealer(state.load(data_dir))
    sources: list[str | None] = [*share_files]
    while True:
        name = sources.pop(0) if sources else None
        text = read_share_text(name, private_key)
        if not text:
            raise ConfigError("not enough shares: the threshold was not reached")
        try:
            progress, master = unsealer.submit(parse_share(text))
        except WrongShares:
            raise ConfigError("the shares given do not open this data directory (one is "
                              f"mistyped or belongs to another data directory): {untouched}"
                              ) from None
        except FerroError as exc:
            raise ConfigError(exc.message) from None
        if master is not None:
            return master
        print(f"{progress.submitted} of {progress.threshold} shares", file=sys.stderr)


def _decrypt(text: str, private_key: str | list[str] | None) -> str:
    """The share inside an encrypted share file, opened by the one of the custodian keys
    given that it was encrypted to (shares of several custodians in one offline run)."""
    keys = [private_key] if isinstance(private_key, str) else list(private_key or [])
    if not keys:
        raise ConfigError("this share is encrypted: give the custodian's --private-key")
    problem = ""
    for key in keys:
        try:
            return _decrypt_with(text, key)
        except ConfigError as exc:
            problem = exc.message
    if len(keys) > 1:
        raise ConfigError("cannot open the encrypted share with any of the --private-key files "
                          "given")
    raise ConfigError(problem)


def _decrypt_with(text: str, private_key: str) -> str:
    from ..custody.custodians import decrypt_share
    password = os.environ.get("FERROHSM_CUSTODIAN_KEY_PASSWORD")
    try:
        pem = read_at_most(private_key, MIB)
        warn_if_readable(Path(private_key), "the custodian's private key")
        blob = base64.b64decode(text.splitlines()[1], validate=True)
        return decrypt_share(pem, blob, password.encode() if password else None).decode("ascii")
    except OSError as exc:
        raise ConfigError(f"cannot read --private-key {private_key}: {exc.strerror}") from None
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot open the encrypted share: {exc}") from None


def run_unseal(args: argparse.Namespace, client: Any, settings: Any) -> int:
    text = read_share_text(args.share_file, args.private_key)
    if not text:  # an empty line, Ctrl-D, `< /dev/null`: the server was asked before
        raise ConfigError("no share given (an empty input): give --share-file FILE, pipe "
                          "the share in, or type it at the prompt; nothing was sent")
    status = client.request("POST", "/v1/sys/unseal", {"share": text})
    from .output import emit
    emit(settings, status, lambda: (
        f"sealed: {status.get('progress')} of {status.get('threshold')} shares submitted"
        if status.get("sealed") else "unsealed"))
    return 0


def run_seal(args: argparse.Namespace, client: Any, settings: Any) -> int:
    status = client.request("POST", "/v1/sys/seal")
    from .output import emit
    emit(settings, status, lambda: "sealed")
    return 0


# ---- serving a split-knowledge data directory ---------------------------------------------

def run_sealed(config: Config, ssl_provider: Any, announce: Any, options: Any) -> int:
    """Serve behind the seal gate: sealed until a threshold of shares is submitted."""
    from .. import app as wiring
    from ..auth.ratelimit import RateLimiter, policy_from_settings
    from ..custody import state
    from ..custody.gate import SealGate
    from ..custody.unsealer import Unsealer
    from ..integrity.logcheck import StartupRefused
    secrets = other_secrets(config)
    custody = state.load(config.storage.data_dir)
    location = wiring.audit_location(config)

    def open_sink() -> Any:
        if not location.present() or not location.has_checkpoints():
            raise StartupRefused(f"the audit log in {location.directory} is missing or has no "
                                 "checkpoints: a split-knowledge data directory has one from "
                                 "`ferrohsm init` on; restore it from a backup")
        return wiring.open_audit(config, secrets)

    def open_runtime(master: bytes) -> Any:
        rt = wiring.build_runtime(config, dataclasses.replace(secrets, master_key=master),
                                  options, seal=gate.seal)
        rt.tls_status = ssl_provider.status
        wiring.start_scheduler(rt)
        rt.serving.set()  # /readyz: the runtime behind the gate now takes traffic
        sdnotify.notify("STATUS=unsealed: serving")
        return rt

    gate = SealGate(Unsealer(custody, lambda: state.load(config.storage.data_dir)),
                    open_sink=open_sink, open_runtime=open_runtime,
                    close_runtime=close_runtime, version=__version__,
                    limiter=RateLimiter(policy_from_settings(config.rate_limit)))
    try:
        return _serve(config, gate, ssl_provider, announce)
    finally:
        gate.close()


def close_runtime(rt: Any) -> None:
    """Drop an open runtime: the scheduler stops; store, approvals and audit log close; the
    unsealed-key cache is emptied. The sealer and record MAC key go with the last reference
    (the AES-GCM reserving thread holds one: it stops first, its renewal written)."""
    rt.stop.set()
    rt.service.engine.budget.close()
    rt.service.engine.cache.clear()
    rt.audit.close()
    if rt.approvals is not None:
        rt.approvals.close()
    rt.store.close()
    if rt.cluster is not None:  # its node lock and membership: the next unseal starts cold
        rt.cluster.close()


def _reload(gate: Any, ssl_provider: Any) -> None:
    """SIGHUP while sealed or unsealed: serve.py's reload, on the runtime the gate holds."""
    from .serve import sighup_reload
    sighup_reload(gate.runtime, ssl_provider)


def _serve(config: Config, gate: Any, ssl_provider: Any, announce: Any) -> int:
    import logging

    from .. import app as wiring
    from ..audit.chain import AuditEvent
    from ..domain.model import SYSTEM_CONTEXT
    from .serve import listen_or_exit, setter
    shim: Any = argparse.Namespace(config=config, app=gate, audit=gate)  # what make_server reads
    if hasattr(ssl_provider, "notify"):
        ssl_provider.notify = wiring.tls_notify(gate)
    server = wiring.make_server(shim, ssl_provider)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, setter(done))
    # SIGHUP reloads as it does unsealed (the TLS files; the keysets once unsealed): left at
    # its default it would end the process, and its restart needs the custodians again
    earlyhup.install(lambda *_: threading.Thread(
        target=_reload, args=(gate, ssl_provider), name="ferrohsm-sighup", daemon=True).start())
    # a busy port is exit 4 as unsealed: systemd retries it (2 would stop it for good)
    listen_or_exit(server, config.server.listen)
    try:
        if hasattr(ssl_provider, "start"):  # ACME too: it needs no master key, only its cache,
            ssl_provider.start()  # and the port must answer a tls-alpn-01 validation first
        port = server.server_address[1]
        gate.append(AuditEvent.from_context(SYSTEM_CONTEXT, "system.startup", "success",
                                            f"FerroHSM listening on port {port}, sealed"))
        logging.getLogger("ferrohsm").info("listening on %s:%d, SEALED: submit unseal shares",
                                           server.server_address[0], port)
        # started, as systemd means it: listening, taking unseal shares (a start that waited
        # for the custodians would time out and be restarted, losing their progress)
        sdnotify.ready(f"listening on port {port}, sealed: submit unseal shares")
        if announce:
            announce(port)
        done.wait()
        sdnotify.stopping()
        return 0
    finally:
        server.shutdown(config.server.shutdown_grace_seconds)
        if hasattr(ssl_provider, "close"):
            ssl_provider.close()
        try:
            gate.append(AuditEvent.from_context(SYSTEM_CONTEXT, "system.shutdown", "success",
                                                "FerroHSM stopped"))
        except FerroError:
            logging.getLogger("ferrohsm").error("could not record shutdown in the audit log")
