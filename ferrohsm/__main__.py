"""`python -m ferrohsm` and the shiv entry point (build.py: ``ferrohsm.__main__:run``)."""

import sys

from .cli import earlyhup  # os and signal only


def run() -> int:
    """For a command that starts a server, SIGHUP is held from here on, before the imports of
    the CLI and the server, which take most of a second: a reload asked meanwhile killed the
    process (exit 129, nothing logged)."""
    if sys.argv[1:2] and sys.argv[1] in earlyhup.SERVERS:
        earlyhup.hold()
    from .cli.main import main
    return main()


if __name__ == "__main__":
    sys.exit(run())
