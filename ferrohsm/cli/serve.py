"""`ferrohsm serve` and `ferrohsm quickstart`."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

from ..config import Config, load_config, load_secrets, parse_listen
from ..telemetry import access
from ..telemetry.logs import fatal, setup_logging
from . import confreload, earlyhup, quickstart, sdnotify
from .errors import CANNOT_LISTEN, CliExit

T = TypeVar("T")


def _serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (see config.example.toml)")
    p.add_argument("--key-store", choices=("filesystem", "sqlite", "memory", "postgres"),
                   help="key store backend (default filesystem); postgres takes its DSN from "
                   "FERROHSM_POSTGRES_DSN (or the variable [storage].postgres_dsn_env names)")
    p.add_argument("--data-dir", metavar="DIR", help="directory for keys, audit log and state (made 0700)")
    p.add_argument("--listen", metavar="HOST:PORT", help="HOST:PORT to listen on; port 0 picks a free port")
    p.add_argument("--processes", metavar="N|auto",
                   help="serve with N processes sharing the port and the state (sqlite or "
                   "postgres store); auto: one per core (default 1)")
    p.add_argument("--audit-retention-days", type=float, metavar="DAYS",
                   help="prune audit records older than this (SQLite audit sink)")
    p.add_argument("--approval-retention-days", type=float, metavar="DAYS",
                   help="prune finished approvals older than this")
    p.add_argument("--accept-store-loss", action="store_true",
                   help="start although keys the audit log created are missing from the key "
                   "store (each one is recorded as key.lost); for this start only")
    p.add_argument("--accept-audit-loss", action="store_true",
                   help="start a new audit log although the old one is missing while the key "
                   "store holds keys (recorded in the new log); for this start only")
    p.add_argument("--accept-unrecorded", action="store_true",
                   help="start although key records are not explained by the audit log (an "
                   "older copy put back, a key whose creation was never recorded): each is "
                   "bound as it is and recorded as store.bound; for this start only")


def add_parsers(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the HTTPS API server",
                           description="Run the FerroHSM HTTPS API server. Secrets come from "
                           "FERROHSM_MASTER_KEY, FERROHSM_JWT_HS256_SECRET and "
                           "FERROHSM_AUDIT_HMAC_KEY, or the 0600 files named in [secrets].",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="examples:\n"
                           "  ferrohsm serve --config /etc/ferrohsm/ferrohsm.toml\n"
                           "  ferrohsm serve --config ferrohsm.toml --listen 0.0.0.0:8443 "
                           "--key-store sqlite\n\n"
                           "exit 2: a bad configuration or data directory; exit 4: the listen "
                           "address is in use or not available")
    _serve_flags(serve)
    serve.set_defaults(func=run_serve)
    quick = sub.add_parser("quickstart", help="run a local dev server with generated secrets",
                           description="Run a local server on embedded defaults: a generated "
                           "development CA and certificate, the filesystem store, and dev secrets "
                           "kept 0600 in the data dir. Prints FERROHSM_URL, FERROHSM_CA_CERT "
                           "and an Administrator FERROHSM_TOKEN as export lines.",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="examples:\n"
                           "  ferrohsm quickstart --data-dir ferrohsm-data\n"
                           "  ferrohsm quickstart --data-dir ferrohsm-data --listen "
                           "127.0.0.1:8443 > env.sh   # then: . ./env.sh in another shell")
    _serve_flags(quick)
    quick.set_defaults(func=run_quickstart)


def _overrides(args: argparse.Namespace) -> dict[tuple[str, str], Any]:
    return {("storage", "key_store"): args.key_store, ("storage", "data_dir"): args.data_dir,
            ("server", "listen"): args.listen,
            ("audit", "retention_days"): args.audit_retention_days,
            ("approvals", "retention_days"): args.approval_retention_days,
            ("server", "processes"): _processes(args.processes)}


def _processes(value: str | None) -> int | str | None:
    """``--processes``: a number, or auto (one per core); anything else is left for the
    configuration check to name."""
    from .nodes import auto_processes
    if value is None:
        return None
    try:
        return auto_processes(value)
    except ValueError:
        return value


def _options(args: argparse.Namespace) -> Any:
    from .. import app as wiring
    return wiring.StartupOptions(accept_store_loss=args.accept_store_loss,
                                 accept_audit_loss=args.accept_audit_loss,
                                 accept_unrecorded=args.accept_unrecorded)


def run_serve(args: argparse.Namespace) -> int:
    from .. import app as wiring
    earlyhup.hold()  # a reload asked during start-up is done once it can be, not fatal
    try:
        config = load_config(args.config, overrides=_overrides(args))
        setup_logging(config.logging.level, fatal_as_json=True)
        warn_unknown_variables(config)
        confreload.remember(config, lambda: load_config(args.config, overrides=_overrides(args)))
        return _run(config, wiring.tls_provider(config), options=_options(args))
    except OSError as exc:  # e.g. a read-only data directory: one line naming path and operation
        raise wiring.startup_failure(exc) from None


def run_quickstart(args: argparse.Namespace) -> int:
    from .. import app as wiring
    earlyhup.hold()
    try:
        return _quickstart(args)
    except OSError as exc:
        raise wiring.startup_failure(exc) from None


def _quickstart(args: argparse.Namespace) -> int:
    from .. import app as wiring
    from ..auth.authn import issue_token
    from ..domain.errors import ConfigError
    from ..tls.devpki import make_dev_pki
    overrides = _overrides(args)
    # the file is checked as given (a bad value quickstart then replaces still stops it), and
    # its data directory is the one used, as --data-dir and FERROHSM_DATA_DIR would be
    given = load_config(args.config, overrides=dict(overrides)) if args.config else None
    data_dir = Path(args.data_dir or os.environ.get("FERROHSM_DATA_DIR")
                    or (given.storage.data_dir if given else None) or "./ferrohsm-data")
    if data_dir.exists() and not data_dir.is_dir():  # said as such, not as a secret file's
        raise ConfigError(f"the data directory {data_dir} exists and is not a directory: give "
                          "--data-dir a directory (it is created if missing)")
    wiring.ensure_private_dir(data_dir)
    files = quickstart.ensure_dev_secrets(data_dir)
    pki = make_dev_pki(data_dir / "tls")
    overrides.update({("secrets", quickstart.SETTING[name]): path for name, path in files.items()})
    overrides.update({
        ("storage", "data_dir"): str(data_dir),
        ("tls", "cert"): str(pki.server_cert), ("tls", "key"): str(pki.server_key),
        ("tls", "mode"): "pem"})  # quickstart keeps its dev CA, whatever --config says
    config = load_config(args.config, overrides=overrides)
    setup_logging(config.logging.level)
    warn_unknown_variables(config)
    confreload.remember(config, lambda: load_config(args.config, overrides=overrides))

    def announce(port: int) -> None:
        secret = load_secrets(config).jwt_hs256_secret
        token = issue_token(secret, subject="quickstart-admin", role="administrator",
                            ttl=config.auth.max_token_ttl_seconds, issuer=config.auth.issuer,
                            audience=config.auth.audience)
        print(f"export FERROHSM_URL={_local_url(config.server.listen, port)}")
        print(f"export FERROHSM_CA_CERT={Path(pki.ca_cert).resolve()}")
        print(f"export FERROHSM_TOKEN={token}")
        sys.stdout.flush()
    return _run(config, wiring.tls_provider(config), announce, _options(args))


def warn_unknown_variables(config: Config) -> None:
    """A FERROHSM_* variable nothing reads is logged, not refused: it may be meant for the CLI
    of a newer version, and a server that would not start over it is a worse surprise."""
    from ..config.envnames import configured_variables, unknown_variables
    for line in unknown_variables(os.environ, configured_variables(config)):
        logging.getLogger("ferrohsm").warning("%s", line)


def _local_url(listen: str, port: int) -> str:
    """The URL a local client uses: a wildcard address becomes the loopback of its family
    (both are in the dev certificate), and an IPv6 address is bracketed, as URLs need."""
    host = parse_listen(listen)[0]
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104  compares, binds nothing
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def setter(event: threading.Event) -> Callable[..., None]:
    """A signal handler that sets ``event`` from a new thread. Python runs handlers in the main
    thread, which is waiting in ``event.wait()``: interrupted while it holds the event's lock,
    an ``event.set()`` right there waits for that lock forever (SIGTERM then never stops it)."""
    return lambda *_: threading.Thread(target=event.set, name="ferrohsm-signal",
                                       daemon=True).start()


def core_list(cores: set[int]) -> str:
    """``{0, 1, 2, 5}`` as ``0-2, 5``."""
    runs: list[list[int]] = []
    for core in sorted(cores):
        if runs and core == runs[-1][1] + 1:
            runs[-1][1] = core
        else:
            runs.append([core, core])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def pin_to(config: Config) -> None:
    """``[server].pin_cpu``: this process on that core, or a configuration error naming the
    setting and the machine's cores. Any core of the machine's cpuset may be taken, whatever
    the affinity this process was started with (a parent pinned elsewhere, a taskset)."""
    from ..domain.errors import ConfigError
    core = config.server.pin_cpu
    try:
        os.sched_setaffinity(0, {core})
    except OSError as exc:
        cores = set(range(os.cpu_count() or 1))
        where = "core" if len(cores) == 1 else "cores"
        raise ConfigError(f"{config.origin_of('[server].pin_cpu')}: [server].pin_cpu = {core}: this machine has "
                          f"{where} {core_list(cores)}, and {core} cannot be taken "
                          f"({exc.strerror})") from None


def sighup_reload(rt: Any, ssl_provider: Any, check_config: bool = True) -> None:
    """SIGHUP re-reads what can be reloaded: the keysets (``rt`` None: sealed, none loaded
    yet), then the TLS certificate files. The configuration file is loaded and checked too
    (``check_config``: one process of a group says it), its problems or changes only warned
    about (cli/confreload.py): settings take effect at a restart."""
    sdnotify.reloading()
    try:
        if check_config:
            try:
                confreload.check_config_file()
            except Exception:  # never in the way of the reloads below
                logging.getLogger("ferrohsm").exception("SIGHUP: cannot check the configuration")
        if rt is not None:
            rt.authenticator.reload("SIGHUP")
        if hasattr(ssl_provider, "reload"):
            ssl_provider.reload("SIGHUP")
    finally:
        sdnotify.ready()


LISTEN_ERRORS = {errno.EADDRINUSE: "is already in use (another server, or an old one still "
                                   "running?): stop it or choose another --listen port",
                 errno.EADDRNOTAVAIL: "is not an address of this machine: check --listen",
                 errno.EACCES: "needs privileges (a port below 1024): choose a port above 1023"}


def listen_or_exit(server: Any, listen: str) -> None:
    """Bind and start; the usual reasons a listen fails are one line and exit 4."""
    _listening(server.start, listen)


def _listening(bind: Callable[[], T], listen: str) -> T:
    """``bind()``, with the usual reasons a listen fails as one line and exit 4."""
    try:
        return bind()
    except OSError as exc:
        why = LISTEN_ERRORS.get(exc.errno or 0)
        if why is None:
            raise
        raise CliExit(f"cannot listen on {listen}: the address {why}", CANNOT_LISTEN) from None


def _resolvable(listen: str) -> None:
    """Look the listen host up before anything is built or forked: a name that does not
    resolve is a listen failure (exit 4, like a busy port), not an error of the data directory,
    which is what the bind's OSError would otherwise be reported as."""
    host, port = parse_listen(listen)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        not_found = exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None))
        why = "host not found" if not_found else f"cannot look up the host ({exc.strerror})"
        raise CliExit(f"cannot listen on {listen}: {why}", CANNOT_LISTEN) from None


def _run(config: Config, ssl_provider: Any, announce: Any = None, options: Any = None) -> int:
    _resolvable(config.server.listen)
    if config.server.processes > 1:
        return _supervise(config, announce, options)
    return _serve(config, ssl_provider, announce, options)


def _supervise(config: Config, announce: Any, options: Any) -> int:
    """``[server].processes = N``: the parent forks N serving children and supervises them
    (cli/nodes.py)."""
    from .. import app as wiring
    from .nodes import Supervisor, cores_for, listening, reserve_port
    log = logging.getLogger("ferrohsm")
    listen = config.server.listen
    config, reserved = _listening(lambda: reserve_port(config), listen)
    parent = os.getpid()
    spread = wiring.connection_spread(config.server.processes)  # before fork: shared
    supervisor = Supervisor(config.server.processes,
                            lambda index: _child(config, options, parent, index, spread),
                            config.server.shutdown_grace_seconds,
                            cores_for(config.server.processes, config.server.pin_processes),
                            spread.down)
    supervisor.install()
    extending = ExitStack()  # more start-up time asked of systemd until a child serves
    try:
        extending.enter_context(sdnotify.starting())
        supervisor.start()
        host, port = parse_listen(config.server.listen)

        def ready() -> None:
            extending.close()
            log.info("listening on %s:%d with %d processes (key store %s)", host, port,
                     config.server.processes, config.storage.key_store)
            sdnotify.ready(f"listening on port {port} with {config.server.processes} processes")
            if announce:
                announce(port)
        return supervisor.run(lambda: listening(host, port), ready)
    finally:
        extending.close()
        spread.close()
        for sock in reserved:
            sock.close()


def _child(config: Config, options: Any, parent: int, index: int, spread: Any) -> int:
    """Serving process ``index`` of a supervised group; errors as ``main`` reports them."""
    from .. import app as wiring
    from ..domain.errors import ConfigError, FerroError
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    earlyhup.hold()  # the parent forwards reloads to children still starting too
    # The parent is the service's main process and tells systemd for the group (the shipped
    # unit has NotifyAccess=main: a child's READY=1 would be ignored, and the start time out).
    os.environ.pop(sdnotify.ENV, None)
    try:
        return _serve(config, wiring.tls_provider(config), None, options, parent=parent,
                      index=index, spread=spread)
    except ConfigError as exc:
        _stop_line(f"configuration error: {exc.message}")
        return 2
    except CliExit as exc:  # cannot listen (4): the parent stops the group, as for 2
        _stop_line(exc.message)
        return exc.code
    except FerroError as exc:
        _stop_line(exc.message)
        return 1
    except OSError as exc:
        _stop_line(f"configuration error: {wiring.startup_failure(exc).message}")
        return 2


def _stop_line(message: str) -> None:
    """Why a serving process stops: a JSON line once the log is set up, else plain text."""
    if not fatal(message):
        print(f"ferrohsm: {message}", file=sys.stderr)


def _serve(config: Config, ssl_provider: Any, announce: Any = None, options: Any = None,
           parent: int | None = None, index: int = 0, spread: Any = None) -> int:
    from .. import app as wiring
    log = logging.getLogger("ferrohsm")
    if config.server.pin_cpu >= 0:
        # Before any thread exists: affinity is per thread on Linux and threads inherit it, so
        # pinning later would leave every worker free to bounce the GIL between cores.
        pin_to(config)
    if config.secrets.unseal == "shamir":  # split knowledge: start sealed (cli/custody.py)
        from .custody import run_sealed
        return run_sealed(config, ssl_provider, announce, options)
    with sdnotify.starting():  # the start-up checks read the whole audit log
        rt = wiring.build_runtime(config, load_secrets(config), options)
    server = None
    try:
        if parent is not None:  # one of processes = N: /metrics shows every process, and
            wiring.share_metrics(rt.metrics, config.storage.data_dir, index)
            access.share_stream()  # access lines share stderr with the other processes
        wiring.wire_tls(rt, ssl_provider)
        server = wiring.make_server(rt, ssl_provider, spread and spread.member(index))
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, setter(done))
        listen_or_exit(server, config.server.listen)
        earlyhup.install(lambda *_: threading.Thread(
            target=sighup_reload, args=(rt, ssl_provider, index == 0), name="ferrohsm-sighup",
            daemon=True).start())
        if parent is not None:
            from .nodes import watch_parent
            watch_parent(parent, done)
        port = server.server_address[1]
        rt.app.server_port = port
        from .nodes import RESTARTED_AFTER
        replaced = os.environ.get(RESTARTED_AFTER, "")
        wiring.system_event(rt, "system.startup", f"FerroHSM listening on port {port}"
                            + (f"; restarted: {replaced}" if replaced else ""))
        wiring.start_scheduler(rt)
        wiring.start_tls(rt, ssl_provider)
        rt.serving.set()
        sdnotify.ready(f"listening on port {port}")
        log.info("listening on %s:%d (key store %s)", server.server_address[0], port,
                 config.storage.key_store)
        if announce:
            announce(port)
        done.wait()
        sdnotify.stopping()
        log.info("shutting down")
        return 0
    finally:
        wiring.shutdown(rt, server)
