"""`ferrohsm man`: the manual page, ferrohsm(1), generated from the argparse tree.

Every command gets its synopsis, description, flags and examples exactly as ``--help`` has them
(tree.walk), so the page ships inside the one-file build (``dist/ferrohsm man | man -l -``) and
cannot fall behind the parser. Plain roff with the man(7) macros only.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

from .. import __version__
from . import tree
from .errors import EXIT_CODES

ENVIRONMENT = (
    # FERROHSM_URL comes first, from the --server flag's own help (environment()).
    ("FERROHSM_TOKEN, FERROHSM_TOKEN_FILE", "bearer token, or a file holding it (surrounding "
     "whitespace is dropped)"),
    ("FERROHSM_CA_CERT", "CA certificate(s) of the server certificate (--ca-cert)"),
    ("FERROHSM_CLIENT_CERT, FERROHSM_CLIENT_KEY", "client certificate and key for mutual TLS"),
    ("FERROHSM_TIMEOUT", "per-request timeout in seconds (default 30)"),
    ("FERROHSM_PROFILE, FERROHSM_PROFILE_FILE", "profile name and file "
     "(~/.config/ferrohsm/profiles.toml)"),
    ("FERROHSM_MASTER_KEY, FERROHSM_JWT_HS256_SECRET, FERROHSM_AUDIT_HMAC_KEY",
     "server secrets (serve), or the 0600 files named in [secrets]"),
)
# After FERROHSM_LISTEN, FERROHSM_DATA_DIR and FERROHSM_KEY_STORE (config.ENV_ALIASES):
MORE_ENVIRONMENT = (
    ("FERROHSM_<SECTION>_<FIELD>", "any setting of the configuration file, for every command "
     "that reads one (--config), e.g. FERROHSM_SERVER_LISTEN for [server] listen; flags beat "
     "it, it beats the file"),
    ("FERROHSM_DEBUG", "print a traceback (bearer tokens removed) for an unexpected error"),
    ("NO_COLOR", "no colour in tables"),
    ("SHIV_ROOT", "dist/ferrohsm (the one-file build) only: the folder it unpacks its bundled "
     "packages into on first run; default $CACHE_DIRECTORY, else $XDG_CACHE_HOME/ferrohsm, "
     "else ~/.cache/ferrohsm, else a private ferrohsm-<uid> folder in the temporary directory"),
)


def environment(root: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """The ENVIRONMENT section's entries. Those that stand for a flag take that flag's --help
    text (the server list of FERROHSM_URL, the data directory of FERROHSM_DATA_DIR), so the
    page says what --help says."""
    from ..config import ENV_ALIASES
    from .settings import client_flags
    server = next(a for a in tree.options(client_flags()) if a.dest == "server")
    entries = [("FERROHSM_URL", f"{_without_env(server.help)} (--server)"), *ENVIRONMENT]
    flags = {a.dest: a for c in tree.leaves(root) if c.name == "ferrohsm serve"
             for a in tree.options(c.parser)}
    for name, (section, field) in ENV_ALIASES.items():
        flag = flags.get(field)
        text = f"{_without_env(flag.help)} (--{field.replace('_', '-')}; " if flag else "("
        entries.append((name, f"{text}[{section}] {field})"))
    return entries + list(MORE_ENVIRONMENT)


def _without_env(text: str | None) -> str:
    """A flag's help without its ``(env NAME)`` note: the entry is already named NAME."""
    return re.sub(r" \(env [A-Z_]+\)", "", " ".join(str(text or "").split()))


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


# Characters outside ASCII, as groff writes them: plain ASCII where that reads the same, else a
# named glyph; groff warns about (and some terminals garble) the raw UTF-8.
GLYPHS = {"…": "...", "→": "\\(->", "←": "\\(<-", "—": "\\(em", "–": "\\(en", "¦": "|",
          "\u2019": "'", "\u2018": "`", "“": '"', "”": '"', "×": "\\(mu", "≥": "\\(>=", "≤": "\\(<="}


def escape(text: str) -> str:
    """Roff-safe text: backslashes and hyphens escaped, no line starting with a control dot,
    non-ASCII characters as ASCII or groff glyphs (``\\[uXXXX]`` for the rest)."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if c.isascii() else GLYPHS.get(c, f"\\[u{ord(c):04X}]") for c in text)
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line
                     for line in text.split("\n"))


def page_date() -> str:
    """The page's date: SOURCE_DATE_EPOCH's when a packager sets one, else the version's
    (build.py writes dist/ferrohsm.1 so, as `ferrohsm man` prints it), never empty (man shows
    it in the footer)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch.isdigit():
        return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%d")
    return f"version {escape(__version__)}"


BREAK_AFTER_COMMA = ",\\:"  # troff's zero-width break point after each comma


def _option(action: argparse.Action) -> str:
    metavar = action.metavar or (action.dest.upper() if tree.takes_value(action) else None)
    if action.choices and tree.takes_value(action):
        metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
    flags = ", ".join(f"\\fB{escape(s)}\\fR" for s in action.option_strings)
    # \: after each comma: a place troff may break a long list of choices (else it warns that
    # it "cannot adjust line" and lets the line run past the margin)
    breakable = escape(str(metavar)).replace(",", BREAK_AFTER_COMMA)
    value = f" \\fI{breakable}\\fR" if metavar and tree.takes_value(action) else ""
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
    out = [f'.TH FERROHSM 1 "{page_date()}" "ferrohsm {escape(__version__)}" '
           '"User Commands"\n',
           ".SH NAME\nferrohsm \\- a software HSM: server, key operations and audit tools\n",
           ".SH SYNOPSIS\n.B ferrohsm\n\\fICOMMAND\\fR [\\fIOPTIONS\\fR]\n",
           f".SH DESCRIPTION\n{escape(' '.join(str(root.description).split()))}\n",
           ".PP\nEvery command takes \\fB\\-\\-help\\fR.\n.SH COMMANDS\n"]
    out.extend(_command(c) for c in leaves)
    out.append(".SH CLIENT SETTINGS\nThe commands that talk to a server take these flags; "
               "flags beat \\fB\\-\\-profile\\fR, which beats the environment.\n")
    out.extend(_option(a) for a in tree.options(client_flags()) if a.dest != "help")
    out.append(".SH ENVIRONMENT\n")
    out.extend(f".TP\n.B {escape(name)}\n{escape(text)}\n" for name, text in environment(root))
    out.append(".SH EXIT STATUS\n")
    out.extend(f".TP\n.B {code}\n{escape(text)}\n" for code, text in EXIT_CODES)
    out.append(".SH SEE ALSO\n.BR openssl (1)\n")
    return "".join(out)
