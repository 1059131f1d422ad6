"""`ferrohsm man`: the manual page, ferrohsm(1), generated from the argparse tree.

Every command gets its synopsis, description, flags and examples exactly as ``--help`` has them
(tree.walk), so the page ships inside the one-file build (``dist/ferrohsm man | man -l -``) and
cannot fall behind the parser. Plain roff with the man(7) macros only.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import __version__
from . import tree
from .errors import EXIT_CODES

ENVIRONMENT = (
    ("FERROHSM_URL", "server URL, https://HOST:PORT (--server)"),
    ("FERROHSM_TOKEN, FERROHSM_TOKEN_FILE", "bearer token, or a file holding it (surrounding "
     "whitespace is dropped)"),
    ("FERROHSM_CA_CERT", "CA certificate(s) of the server certificate (--ca-cert)"),
    ("FERROHSM_CLIENT_CERT, FERROHSM_CLIENT_KEY", "client certificate and key for mutual TLS"),
    ("FERROHSM_TIMEOUT", "per-request timeout in seconds (default 30)"),
    ("FERROHSM_PROFILE, FERROHSM_PROFILE_FILE", "profile name and file "
     "(~/.config/ferrohsm/profiles.toml)"),
    ("FERROHSM_MASTER_KEY, FERROHSM_JWT_HS256_SECRET, FERROHSM_AUDIT_HMAC_KEY",
     "server secrets (serve), or the 0600 files named in [secrets]"),
    ("FERROHSM_DEBUG", "print a traceback (bearer tokens removed) for an unexpected error"),
    ("NO_COLOR", "no colour in tables"),
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("man", allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="print the manual page ferrohsm(1) as roff",
                       description="Print the manual page, generated from this command's own "
                       "parser, in roff: read it with man -l, or install it as ferrohsm.1.",
                       epilog="examples:\n  ferrohsm man | man -l -\n"
                       "  ferrohsm man > /usr/local/share/man/man1/ferrohsm.1")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .main import build_parser
    sys.stdout.write(page(build_parser()))
    return 0


def escape(text: str) -> str:
    """Roff-safe text: backslashes and hyphens escaped, no line starting with a control dot."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line
                     for line in text.split("\n"))


def _option(action: argparse.Action) -> str:
    metavar = action.metavar or (action.dest.upper() if tree.takes_value(action) else None)
    if action.choices and tree.takes_value(action):
        metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
    flags = ", ".join(f"\\fB{escape(s)}\\fR" for s in action.option_strings)
    value = f" \\fI{escape(str(metavar))}\\fR" if metavar and tree.takes_value(action) else ""
    return f".TP\n{flags}{value}\n{escape(' '.join(str(action.help or '').split()))}\n"


def _command(command: tree.Command) -> str:
    parser = command.parser
    parts = [f'.SS "{escape(command.name)}"\n', f".B {escape(tree.synopsis(command))}\n.PP\n",
             escape(" ".join((parser.description or command.help).split())) + "\n"]
    for action in tree.positionals(parser):
        parts.append(f".TP\n\\fI{escape(str(action.metavar or action.dest))}\\fR\n"
                     f"{escape(str(action.help or ''))}\n")
    client = {a.dest for a in tree.options(parser)} >= {"server", "token", "ca_cert"}
    for action in tree.options(parser):
        if client and action.dest in tree.CLIENT_DESTS:
            continue  # described once, under CLIENT SETTINGS
        if action.dest == "help":
            continue
        parts.append(_option(action))
    if parser.epilog:
        parts.append(f".PP\n.nf\n{escape(parser.epilog.strip())}\n.fi\n")
    return "".join(parts)


def page(root: argparse.ArgumentParser) -> str:
    from .settings import client_flags
    leaves = tree.leaves(root)
    out = [f'.TH FERROHSM 1 "" "ferrohsm {escape(__version__)}" "User Commands"\n',
           ".SH NAME\nferrohsm \\- a software HSM: server, key operations and audit tools\n",
           ".SH SYNOPSIS\n.B ferrohsm\n\\fICOMMAND\\fR [\\fIOPTIONS\\fR]\n",
           f".SH DESCRIPTION\n{escape(' '.join(str(root.description).split()))}\n",
           ".PP\nEvery command takes \\fB\\-\\-help\\fR.\n.SH COMMANDS\n"]
    out.extend(_command(c) for c in leaves)
    out.append(".SH CLIENT SETTINGS\nThe commands that talk to a server take these flags; "
               "flags beat \\fB\\-\\-profile\\fR, which beats the environment.\n")
    out.extend(_option(a) for a in tree.options(client_flags()) if a.dest != "help")
    out.append(".SH ENVIRONMENT\n")
    out.extend(f".TP\n.B {escape(name)}\n{escape(text)}\n" for name, text in ENVIRONMENT)
    out.append(".SH EXIT STATUS\n")
    out.extend(f".TP\n.B {code}\n{escape(text)}\n" for code, text in EXIT_CODES)
    out.append(".SH SEE ALSO\n.BR openssl (1)\n")
    return "".join(out)
