"""Exit codes of `ferrohsm`, and the one exception that carries a specific one.

A script can tell apart what it may retry (1: the server refused or failed), what it must fix in
its own invocation (2), and the local causes that are neither: an output it cannot write, found
before anything was sent (3), an address the server cannot listen on (4), an output that failed
after the server had already carried out the request, so its answer is lost (5: do not simply
retry a spent approval or a key creation), and a reader that closed the pipe early (141, what a
shell reports for a process killed by SIGPIPE, so ``ferrohsm audit report … | head -1`` looks the
same as any other Unix filter).
"""

from __future__ import annotations

OK = 0
FAILED = 1          # the operation failed or was refused (API errors, unreachable server)
USAGE = 2           # usage or configuration error (a bad flag, a token with a line break)
CANNOT_WRITE = 3    # an output file or directory cannot be created or written
CANNOT_LISTEN = 4   # `serve`/`quickstart`: the listen address is in use or not available
OUTPUT_LOST = 5     # the server carried out the request, then writing its answer failed
INTERRUPTED = 130   # SIGINT (128 + 2), as a shell reports it
CLOSED_PIPE = 141   # the reader of standard output went away (128 + SIGPIPE)
TERMINATED = 143    # SIGTERM (128 + 15): raised as an exception so temporary files go

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (OK, "success"),
    (FAILED, "the operation failed or was refused (API error, unreachable, invalid signature)"),
    (USAGE, "usage or configuration error"),
    (CANNOT_WRITE, "an output file cannot be written, or standard output is closed or its "
                   "reader has gone (found before anything was sent to the server)"),
    (CANNOT_LISTEN, "serve/quickstart: the listen address is in use or not available"),
    (OUTPUT_LOST, "the server carried out the request but its answer could not be written, "
                  "or its reader closed the pipe (output lost; an --approval-id given is "
                  "spent)"),
    (INTERRUPTED, "a client command interrupted (SIGINT, Ctrl-C); an --out file is left as it "
                  "was (serve and quickstart drain and exit 0)"),
    (CLOSED_PIPE, "the reader of standard output closed the pipe early (a read: nothing "
                  "was changed)"),
    (TERMINATED, "a client command terminated (SIGTERM); an --out file is left as it was "
                 "(serve and quickstart drain and exit 0)"),
)


class CliExit(Exception):
    """A failure with its own exit code: main() prints ``ferrohsm: <message>`` and exits."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
