"""Time: emulated seconds on a scaled monotonic clock, or a fake one.

All policy and deadline logic works in *emulated* seconds and takes the time
as a parameter. A run's :class:`ScaledClock` maps those onto the real
monotonic clock: with ``speed`` N, one emulated second passes in 1/N real
seconds, so every kernel constant and scenario duration is divided by N.
Tests of pure logic use :class:`FakeClock` and jump in no real time (trio's
``MockClock`` idea).
"""

from __future__ import annotations

import time

HZ = 250                      # the kernel's tick rate; one jiffy is 4 ms
JIFFY_S = 1.0 / HZ


class ScaledClock:
    """Emulated time since ``t0`` (a ``time.monotonic()`` value), run ``speed`` times faster."""

    def __init__(self, speed: float = 1.0, t0: float | None = None, _monotonic=time.monotonic):
        if not speed > 0:
            raise ValueError("speed must be > 0")
        self.speed = float(speed)
        self._monotonic = _monotonic
        self.t0 = _monotonic() if t0 is None else t0

    def now(self) -> float:
        return (self._monotonic() - self.t0) * self.speed

    def at(self, monotonic: float) -> float:
        """The emulated time of a ``time.monotonic()`` reading (any process: it is system-wide)."""
        return (monotonic - self.t0) * self.speed

    def to_real(self, emulated_s: float) -> float:
        return emulated_s / self.speed

    def sleep(self, emulated_s: float) -> None:
        if emulated_s > 0:
            time.sleep(emulated_s / self.speed)


class FakeClock:
    """A clock that moves only when told to: for pure-logic tests."""

    def __init__(self, start: float = 0.0):
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, dt: float) -> float:
        if dt < 0:
            raise ValueError("time does not go backwards")
        self._now += dt
        return self._now
