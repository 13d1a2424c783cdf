"""``python -m emulator``: the ``oomemu`` command.

A terminating signal that comes while the command line is still being
imported exits 128+N, as one that comes later does (``tools.cli.main`` then
installs its own handlers, and a run defers them to its safe points)."""

import signal
import sys


def _early(signum, frame):
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


for _sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
    signal.signal(_sig, _early)

try:
    from .tools.cli import main  # noqa: E402  (after the handlers, on purpose)
except KeyboardInterrupt:
    print("oomemu: interrupted (SIGINT)", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
