"""Time as the model sees it: emulated seconds, passed in; the Clock protocol; FakeClock.

All policy and deadline logic works in *emulated* seconds and takes the time
as a parameter. A run's clock (``runtime/clock.py``'s RunClock) maps
those onto the real monotonic clock; tests of pure logic use
:class:`FakeClock` and jump through hours in no real time (trio's
``MockClock`` idea). Nothing here reads the real clock.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Protocol

HZ = 250                      # the kernel's tick rate; one jiffy is 4 ms
JIFFY_S = 1.0 / HZ


class Clock(Protocol):
    """What the model asks of a clock: the emulated time now, in seconds since time 0."""

    def now(self) -> float: ...


class FakeClock:
    """A clock that moves only when told to: for pure-logic tests. It has what the reaper
    asks of a run's RunClock (``emulator.runtime.clock``), as no-ops where a RunClock
    holds, freezes or waits, so the reaper can be driven with it too; a real wait is the
    emulated one."""

    speed = 1.0

    def __init__(self, start: float = 0.0):
        self._now = float(start)
        self.t0 = 0.0

    def now(self) -> float:
        return self._now

    def real_wait(self, emulated_s: float) -> float:
        return max(0.0, emulated_s)

    def real_since(self, t: float) -> float:
        """RunClock's: how late (real seconds) what was due at ``t`` is now; never, here."""
        return 0.0

    def frozen(self):
        """Real work takes no time here either (RunClock's freeze, a no-op)."""
        return nullcontext()

    def let_go(self) -> None:
        """RunClock's: this clock never holds."""

    def hold(self, at: float) -> float:
        return max(at, self._now)

    def lower_hold(self, at: float) -> None:
        """RunClock's: this clock never holds."""

    def advance(self, dt: float) -> float:
        if dt < 0:
            raise ValueError("time does not go backwards")
        self._now += dt
        return self._now

    def advance_to(self, t: float) -> float:
        """Move to time ``t`` (no earlier than now)."""
        return self.advance(max(0.0, t - self._now))
