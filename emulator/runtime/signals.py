"""Signals a run defers: a terminating signal ends the run at a safe point.

A supervisor that dies half-way through creating or removing its objects
would leave them in /dev/shm, and one that dies mid-run would leave its
workers to PR_SET_PDEATHSIG and its objects to ``oomemu cleanup``. So while
a run is on, every catchable signal whose default action is to terminate
only *records* itself (and wakes the run's event loop through a wakeup fd);
the run ends at its next safe point, tears everything down once, and then
the signal is re-raised as an exception: KeyboardInterrupt for SIGINT,
``SystemExit(128 + signum)`` for the others. A second signal during the
teardown changes nothing.

SIGTSTP (Ctrl-Z) is recorded too: the run stops its workers, stops itself,
and on SIGCONT continues them and says for how long it was stopped.
"""

from __future__ import annotations

import os
import signal
import threading

# Default action "terminate" or "core", asynchronous (not faults such as SIGSEGV).
TERMINATING = tuple(s for s in (
    signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
    signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGXCPU, signal.SIGXFSZ,
    getattr(signal, "SIGIO", None), getattr(signal, "SIGPWR", None), getattr(signal, "SIGSTKFLT", None),
    *range(signal.SIGRTMIN, signal.SIGRTMAX + 1)) if s is not None)


_exiting = False


def exiting() -> bool:
    """A run has torn down and is exiting on a signal: later signals change nothing
    (the command line's own handlers ignore them)."""
    return _exiting


def exit_code(signum: int) -> int:
    return 128 + signum


def name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class DeferredSignals:
    """Record terminating signals instead of dying of them (main thread only).

    ``hold_sigint``: SIGINT asks for a normal end (a held run's Ctrl-C) instead."""

    def __init__(self, hold_sigint: bool = False):
        self.hold_sigint = hold_sigint
        self.pending: int | None = None       # the first terminating signal
        self.stop_requested = False           # SIGINT with hold_sigint
        self.tstp = False                     # Ctrl-Z, not yet acted on
        self.active = False                   # set on entry: only the main thread can
        self._old: dict[int, object] = {}
        self._old_wakeup = -1
        self.rfd = self.wfd = -1

    def __enter__(self):
        self.active = threading.current_thread() is threading.main_thread()
        if not self.active:
            return self
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup = signal.set_wakeup_fd(self.wfd, warn_on_full_buffer=False)
        for sig in (*TERMINATING, signal.SIGTSTP):
            try:
                self._old[sig] = signal.signal(sig, self._record)
            except (OSError, ValueError):
                pass
        return self

    def _record(self, signum, frame) -> None:
        if signum == signal.SIGTSTP:
            self.tstp = True
        elif signum == signal.SIGINT and self.hold_sigint and self.pending is None:
            self.stop_requested = True
        elif self.pending is None:
            self.pending = signum

    def drain(self) -> None:
        """Empty the wakeup pipe (the loop calls it when the pipe is readable)."""
        try:
            while os.read(self.rfd, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    def __exit__(self, *exc):
        global _exiting
        if not self.active:
            return False
        if self.pending is not None:
            _exiting = True                    # before our handlers go: no window for a second one
        for sig, old in self._old.items():
            try:
                signal.signal(sig, old)
            except (OSError, ValueError, TypeError):
                pass
        signal.set_wakeup_fd(self._old_wakeup)
        for fd in (self.rfd, self.wfd):
            os.close(fd)
        self.rfd = self.wfd = -1
        return False

    def raise_pending(self) -> None:
        """After the teardown: die of the recorded signal, as an exception."""
        global _exiting
        if self.pending is not None:
            _exiting = True
        if self.pending == signal.SIGINT:
            raise KeyboardInterrupt
        if self.pending is not None:
            raise SystemExit(exit_code(self.pending))
