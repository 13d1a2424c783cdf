"""The kernel log: printk with dmesg's ``[%5lu.%06lu]`` timestamps in emulated seconds."""

from __future__ import annotations

import threading
from typing import Callable


def format_line(t: float, msg: str) -> str:
    usec = max(0, round(t * 1_000_000))
    return "[%5d.%06d] %s" % (usec // 1_000_000, usec % 1_000_000, msg)


class KernelLog:
    """Lines in the order they were printed; thread-safe (the reaper prints too)."""

    def __init__(self, now: Callable[[], float], echo: Callable[[str], None] | None = None):
        self._now = now
        self._echo = echo
        self._lock = threading.Lock()
        self.lines: list[str] = []
        self._last = float("-inf")

    def printk(self, msg: str, t: float | None = None) -> str:
        """Print ``msg`` at emulated time ``t`` (default: now). Like dmesg's, the log's times
        never go backwards: a line for an earlier time than the last (an OOM decided as of
        its allocation's time, which reached the supervisor a little later) takes the
        last line's time."""
        with self._lock:
            t = self._now() if t is None else t
            self._last = t = max(t, self._last)
            line = format_line(t, msg)
            self.lines.append(line)
            if self._echo is not None:
                self._echo(line)
            return line
