"""`python -m ferrohsm` and the shiv entry point (build.py: ``ferrohsm.__main__:run``)."""

import sys

# The commands that start a server: a SIGHUP is held from here on (cli/earlyhup.py), before the
# imports of the CLI and the server, which take most of a second: a reload asked meanwhile killed
# the process (exit 129, nothing logged). cli/main.py LONG_RUNNING names the same commands.
SERVERS = ("serve", "quickstart")


def run() -> int:
    if sys.argv[1:2] and sys.argv[1] in SERVERS:
        from .cli import earlyhup  # os and signal only
        earlyhup.hold()
    from .cli.main import main
    return main()


if __name__ == "__main__":
    sys.exit(run())
