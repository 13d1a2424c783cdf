"""A run's clock: emulated seconds on the real monotonic clock, run ``speed`` times faster.

With ``speed`` N, one emulated second passes in 1/N real seconds, so every
kernel constant and scenario duration is divided by N (SimPy's
``RealtimeEnvironment(factor=...)`` idea). The model itself takes the time
as a parameter (``kernel/clock.py``).
"""

from __future__ import annotations

import time


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
