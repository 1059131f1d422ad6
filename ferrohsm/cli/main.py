"""`ferrohsm`: one executable for the server, its operators and its auditors.

argparse builds the command tree; each family of subcommands lives in a small module (serve,
token, keys, ops, approvals, audit_cmd) that only imports argparse-level things, so building the
tree is cheap and ``ferrohsm --version`` stays fast. The HTTP client is imported only when a
client command runs.

Exit codes (errors.py): 0 success, 1 operation failed or refused, 2 usage error, 3 an output
that cannot be written (found before anything was sent), 4 an address the server cannot listen
on, 5 an answer lost after the server acted, 130/143 SIGINT/SIGTERM, 141 a closed pipe. Every error
is one line on stderr, ``ferrohsm: <message> (<code>, request id <id>)`` for API errors; no
traceback ever reaches a user, and no token or key material ever appears in an error. With
FERROHSM_DEBUG=1 an unexpected error prints its traceback, with every bearer token cut out.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from .. import __version__
from ..domain.errors import ConfigError, FerroError
from ..telemetry.logs import fatal
from . import approvals as approvals_cmd
from . import argcheck, audit_cmd, completion, earlyhup, info, keys, manpage, ops, tree
from . import backup as backup_cmd
from . import custody as custody_cmd
from . import serve as serve_cmd
from . import token as token_cmd
from .errors import (
    CANNOT_WRITE,
    CLOSED_PIPE,
    EXIT_CODES,
    FAILED,
    INTERRUPTED,
    OUTPUT_LOST,
    TERMINATED,
    USAGE,
    CliExit,
)
from .nodump import forbid_core_dumps
from .output import FieldMissing
from .settings import unverified_claims
from .streams import StdoutFailed, guarded_stdout, reset_answered, stdout_problem

EPILOG = """\
client commands read their settings from flags, a --profile, or the environment:
  FERROHSM_URL, FERROHSM_TOKEN (or FERROHSM_TOKEN_FILE), FERROHSM_CA_CERT,
  FERROHSM_CLIENT_CERT, FERROHSM_CLIENT_KEY. `ferrohsm quickstart` prints the first three.
  Run `ferrohsm COMMAND --help` for a command's flags and examples.

exit codes:
""" + "\n".join(f"  {code:<3} {text}" for code, text in EXIT_CODES) + """

examples:
  ferrohsm quickstart --data-dir ferrohsm-data
  ferrohsm keys list --output json | jq -r '.keys[].name'
  ferrohsm sign release-signing --in app.tar.gz --out app.sig"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferrohsm", description="FerroHSM: a software HSM with a TLS REST API, sealed keys "
        "and a tamper-evident audit log.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"ferrohsm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve_cmd.add_parsers(sub)
    token_cmd.add_parser(sub)
    keys.add_parsers(sub)
    ops.add_parsers(sub)
    approvals_cmd.add_parsers(sub)
    audit_cmd.add_parsers(sub)
    custody_cmd.add_parsers(sub)
    backup_cmd.add_parsers(sub)
    info.add_parsers(sub)
    completion.add_parser(sub)
    manpage.add_parser(sub)
    tree.no_abbreviations(parser)
    tree.once_only(parser)
    return parser


def _tolerant_text_streams() -> None:
    """A string the server returns always prints: one that is not Unicode text (a lone
    surrogate, from data stored before the API refused it) is written as ``\\udfff``."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


# The server's own processes keep the interpreter's stdout as it is: forked children flush it
# on their way to os._exit, where nothing may turn a failed flush into a CLI exit.
LONG_RUNNING = earlyhup.SERVERS
# Client commands that send no token: /healthz and the unseal of a sealed server.
NO_TOKEN = ("status", "unseal")


def main(argv: Sequence[str] | None = None) -> int:
    forbid_core_dumps()  # before any secret is read: no core file, no same-user /proc reader
    _tolerant_text_streams()
    args_list = list(sys.argv[1:] if argv is None else argv)
    reset_answered()
    if args_list[:1] and args_list[0] in LONG_RUNNING:
        return _guarded_main(args_list)
    problem = stdout_problem()
    if problem:  # before anything is sent: an answer written nowhere is an answer lost
        _fail(f"{problem}: nothing was sent to the server; redirect it (>/dev/null) to "
              "discard the output")
        return CANNOT_WRITE
    with guarded_stdout(), _terminated_is_an_exception():  # a full disk: one line, exit 3
        return _guarded_main(args_list)


class Terminated(BaseException):
    """SIGTERM, raised where the command is, so every ``with`` block on the way out runs: an
    --out's temporary file is removed (Output.__exit__), not left beside the target."""


@contextlib.contextmanager
def _terminated_is_an_exception() -> Iterator[None]:
    """SIGTERM as ``Terminated`` for one command (the interpreter already makes SIGINT a
    KeyboardInterrupt); the previous handler is back afterwards. Only in the main thread,
    where Python runs signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _guarded_main(args_list: list[str]) -> int:
    """Run the command; whatever it raises becomes one line on stderr and an exit code."""
    try:
        return _dispatch(args_list)
    except BrokenPipeError:  # `ferrohsm audit report … | head -1`: the reader left
        return _closed_pipe()
    except Terminated:  # cleaned up on the way here; 128 + SIGTERM, as a shell reports it
        _fail("terminated (SIGTERM); nothing was written")
        return TERMINATED
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handling
        return INTERRUPTED
    except StdoutFailed as exc:  # a full disk or an I/O error under stdout
        _silence_stdout()
        _fail(exc.message)
        return exc.code
    except CliExit as exc:  # also from the offline audit tools, which run outside _dispatch
        _fail(exc.message)
        return exc.code
    except Exception as exc:  # a bug: one line (its text might hold data), traceback on request
        if os.environ.get("FERROHSM_DEBUG"):
            from .scrub import print_scrubbed_traceback
            print_scrubbed_traceback(exc)
        _fail(f"unexpected {type(exc).__name__}; run again with FERROHSM_DEBUG=1 for details")
        return FAILED


def _dispatch(args_list: list[str]) -> int:
    if len(args_list) >= 2 and args_list[0] == "audit" and args_list[1] in audit_cmd.OFFLINE:
        return _flushed(audit_cmd.run_offline(args_list[1], args_list[2:]))
    parser = build_parser()
    args_list = argcheck.hoist_leading_flags(parser, args_list)
    argcheck.unknown_flags_first(parser, args_list)
    args, extra = _parse(parser, args_list)
    if extra:  # told by the command that was given, with its usage, not by the root
        tree.chosen(parser, args_list).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return USAGE
    argcheck.check_values(tree.chosen(parser, args_list), args)
    try:
        if hasattr(args, "client_func"):
            return _flushed(run_client(args))
        return _flushed(int(args.func(args)))
    except ConfigError as exc:
        _fail(f"configuration error: {exc.message}")
        return USAGE
    except FerroError as exc:
        _fail(exc.message)
        return FAILED
    except KeyboardInterrupt:
        return INTERRUPTED


def _parse(parser: argparse.ArgumentParser,
           args_list: list[str]) -> tuple[argparse.Namespace, list[str]]:
    try:
        args, extra = parser.parse_known_args(args_list)
        tree.forget_given(args)
        return args, extra
    except SystemExit:  # --help or --version printed: a full disk says so now, not at exit
        sys.stdout.flush()
        raise


def _flushed(code: int) -> int:
    """Flush stdout inside the handlers above: a closed pipe shows up here, not at exit."""
    sys.stdout.flush()
    return code


def _closed_pipe() -> int:
    """The reader of stdout went away: say so once, and stop writing to the pipe. After the
    server acted (a key made, an approval spent), that is an answer lost (exit 5), not a
    command stopped before it did anything."""
    from .streams import server_acted
    _silence_stdout()
    if server_acted():
        _fail("the server carried out the request, but the reader of standard output closed "
              "it early (broken pipe); the rest of the answer is lost")
        return OUTPUT_LOST
    _fail("output closed early by the reader (broken pipe); stopped")
    return CLOSED_PIPE


def _silence_stdout() -> None:
    """Let nothing write to a stdout that failed again: the interpreter's own flush at exit
    would raise a second time, after the one line was said."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run_client(args: argparse.Namespace) -> int:
    """Resolve settings, open one client, run the command, and turn every failure into one
    line and an exit code."""
    from ..client import ApiError, ApprovalRequired, ClientError
    from .settings import UsageError, make_client, resolve
    from .streams import InputTooLarge
    token: str | None = None
    try:
        settings = resolve(args)
        token = settings.token
        if token is None and args.command not in NO_TOKEN:
            raise UsageError("no token: set FERROHSM_TOKEN (or FERROHSM_TOKEN_FILE, --token-file"
                             ", a profile's token_file); `ferrohsm token issue` makes one; "
                             "nothing was sent")
        with make_client(settings) as client:
            return _shape_checked(args, client, settings)
    except (UsageError, FieldMissing) as exc:
        advice = ops.TOO_LARGE_ADVICE.get(args.command) if isinstance(exc, InputTooLarge) \
            else None
        _fail(f"{exc}: {advice}" if advice else str(exc))
        return USAGE
    except ApprovalRequired as exc:
        from .settings import output_format
        _approval_pending(exc, output_format(args) == "json", getattr(args, "field", None),
                          getattr(args, "approval_id", None))
        return FAILED
    except ApiError as exc:
        text = _too_large(exc.message, args) if exc.code == "payload_too_large" \
            else exc.message + _named_key(exc.message, args) + _hint(exc.code, args.command,
                                                                     token, exc.message)
        _fail(f"{text} ({exc.code}, request id {exc.request_id or 'unknown'})")
        return 1
    except ClientError as exc:  # transport: refused, reset, TLS, timeout
        # A request id only for a request that left: one refused at connect reached no log.
        sent = getattr(exc, "sent", True)
        suffix = f" (request id {exc.request_id})" if exc.request_id and sent else ""
        if exc.message.startswith("cannot reach") and not sent:
            suffix += ("; is the server running there, and is FERROHSM_URL (or --server) the "
                       "right address?")
        _fail(exc.message + suffix)
        return 1


def _shape_checked(args: argparse.Namespace, client: Any, settings: Any) -> int:
    """The command, with an answer not shaped as this CLI expects (another server, a proxy
    that rewrites JSON: ``{"keys": 5}``) said as that, not "unexpected TypeError" (an outside
    tester). With FERROHSM_DEBUG=1 the traceback still shows where it broke."""
    from .streams import has_answered
    try:
        return int(args.client_func(args, client, settings))
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        if not has_answered() or os.environ.get("FERROHSM_DEBUG"):
            raise
        _fail(f"the server's answer is not shaped as a FerroHSM answer ({type(exc).__name__}"
              "): is FERROHSM_URL (or --server) a FerroHSM server of this version, with no "
              "proxy rewriting its answers? FERROHSM_DEBUG=1 shows where it broke")
        return FAILED


def _named_key(message: str, args: argparse.Namespace) -> str:
    """The server says "no such key" without the reference (a hidden key answers the same);
    the CLI knows which one it asked for, and where to look for the right one."""
    key = getattr(args, "key", None)
    if message != "no such key" or not isinstance(key, str):
        return ""
    return f": {key[:80]!a} (`ferrohsm keys list` shows the keys this token sees)"


def _hint(code: str, command: str, token: str | None, message: str = "") -> str:
    """What to do next, from the error code and what the CLI's own token says of itself."""
    if code == "unauthenticated" and message.startswith("token lifetime must be 1-"):
        # `token issue` without the server's --config mints the default lifetime
        limit = message.removeprefix("token lifetime must be 1-").split(" ", 1)[0]
        return (f"; issue one with `ferrohsm token issue --ttl {limit[:12]} …`, or with "
                "`--config` naming the server's file so the token carries its limits")
    if code == "unauthenticated":
        return "; get a token with `ferrohsm token issue` and set FERROHSM_TOKEN"
    if command not in ops.OPS or code not in ("forbidden", "not_found"):
        return ""
    claims = unverified_claims(token)
    if claims.get("role") == "service" and isinstance(claims.get("tags"), list):
        # A key outside the token's tags answers 404 exactly like a missing key.
        tags = ", ".join(str(t)[:40] for t in claims["tags"][:10]) or "none"
        return (f"; or this service token's tags ({tags}) do not cover this key: "
                "it may use only keys carrying one of them")
    if code == "forbidden" and claims.get("role") != "service":
        return ("; cryptographic operations need a service token "
                "(`ferrohsm token issue --role service …`)")
    return ""


def _too_large(message: str, args: argparse.Namespace) -> str:
    """A 413 as one sentence: what the server refused (its own first clause, which names its
    limit) and this command's way out, instead of the server's advice for every operation.
    An --aad over the server's per-input limit is named as the cause: the input's advice (a
    data key) would not help."""
    aad = len(str(getattr(args, "aad", None) or "").encode("utf-8", "surrogateescape"))
    limit = re.search(r"(\d+)-byte limit", message)
    if aad and limit and aad > int(limit.group(1)):
        return (f"--aad is {aad} bytes, more than the server's {limit.group(1)}-byte limit "
                "for one input ([crypto].max_input_bytes): associated data is meant to be "
                "short (an id, a context label); bind a digest of a larger context instead")
    refused = message.split(":")[0].split(";")[0].strip()
    advice = ops.TOO_LARGE_ADVICE.get(args.command, "the request is larger than the server "
                                      "accepts ([server].max_body_bytes)")
    return f"{refused}: {advice}"


def _approval_pending(exc: Any, as_json: bool, field: str | None = None,
                      sent_id: str | None = None) -> None:
    """A parked request is not an error, but it did not run: say what to do next (and with
    --field, print that member of the answer: ``ID=$(ferrohsm unwrap … --field approval.id)``).
    Repeated with ``--approval-id`` of a pending approval, nothing was parked: it waits."""
    from .output import field_text, print_json, relative, when
    approval = exc.approval
    if field:
        try:
            print(field_text(dict(exc.body), field))
        except FieldMissing as missing:
            _fail(str(missing))
    elif as_json:
        print_json(dict(exc.body))
    ident = approval.get("id", "?")
    have = len(approval.get("approvals") or [])
    expires = approval.get("expires_at")
    votes = f"{have} of {approval.get('required', '?')} approvals"
    window = f"expires {when(expires)} ({relative(expires)})"
    ids = f"({exc.code}, request id {exc.request_id or 'unknown'})"
    if approval.get("state") == "approved":  # a repeat without --approval-id after the quorum
        _fail(f"already approved: this request is approval {ident} ({votes}, {window}); run "
              f"it now by repeating the command with --approval-id {ident} {ids}")
        return
    if sent_id is not None and ident == sent_id:
        _fail(f"approval {ident} is still pending ({votes}, {window}); once approved, repeat "
              f"the command with --approval-id {ident} {ids}")
        return
    # The server answers a repeat with the approval it already parked ("already parked as
    # approval …"): say it was reused, so nobody asks approvers to vote on a new request.
    parked = "already parked as approval" if "already parked" in (exc.message or "") \
        else "request parked as approval"
    _fail(f"approval required: {parked} {ident} ({votes}, {window}); once "
          f"approved, repeat the command with --approval-id {ident} {ids}")


def _fail(message: str) -> None:
    """One line on stderr; control characters from a server message are neutralised."""
    if sys.stderr is None:  # closed (2>&-): the exit code is all that can be said
        return
    clean = "".join(c if c.isprintable() else "?" for c in message)
    if not fatal(clean):  # `serve` set up its JSON log: one JSON line among the others
        print(f"ferrohsm: {clean}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
