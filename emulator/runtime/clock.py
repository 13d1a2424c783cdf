"""A run's clock: emulated seconds on the real monotonic clock, run ``speed`` times faster,
stopped while real work that the model says takes no time is being done.

With ``speed`` N, one emulated second passes in 1/N real seconds, so every
kernel constant and scenario duration is divided by N (SimPy's
``RealtimeEnvironment(factor=...)`` idea). The model itself takes the time
as a parameter (``kernel/clock.py``).

Real work is not emulated time. Faulting 100 MB in takes this machine some
60 ms, punching it out some 20 ms; at speed 10 that would be 0.6 s and 0.2 s
of emulated time, and outcomes would change with the speed. So a process
doing such work *freezes* the run clock around it (:meth:`RunClock.frozen`):
for every process of the run, emulated time stands still until the last
freeze is given back. Only work that never waits may be done frozen (pages
faulted in, zapped, freed; the supervisor's repair after a crash); a wait
under a freeze would stop the run.

The clock's state is one 8-byte word in the zone, read with one load: a
positive word is the ``time.monotonic()`` at which emulated time 0 would
have been (``t0`` plus every freeze so far), so ``now = (monotonic() - word)
* speed``; a word <= 0 is a frozen clock standing at ``-word``. The clock
starts frozen at 0, held by every task, each of which lets go when it reaches
the start line: time 0 is when the last task is ready to act, however long a
busy machine took to wake them all. Freezes are
counted per *slot* (each task's index, then the supervisor's), so that the
freezes of a process that died, or that ``oomemu inject stop`` stopped, can be
given back for it (``Zone.thaw_clock(slot, everything=True)``).

How far a run fell behind its clock (SimPy's strict real-time mode) is
measured where something was due at an emulated time: :func:`late_ms` gives
the lateness in real milliseconds, :func:`tolerance_ms` what a run may lag
before it says so.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

#: While the clock is frozen, a timed wait wakes at least this often (real seconds)
#: to see whether it runs again; freezes last milliseconds.
FROZEN_POLL_S = 0.0005
#: A run lagged if something due at an emulated time happened later than the larger
#: of these: TOLERANCE_EMULATED_S of emulated time, or TOLERANCE_REAL_S of real time.
TOLERANCE_EMULATED_S = 0.005
TOLERANCE_REAL_S = 0.002


def tolerance_ms(speed: float) -> float:
    """How late (real ms) something may happen at ``speed`` before the run has lagged."""
    return 1000 * max(TOLERANCE_EMULATED_S / speed, TOLERANCE_REAL_S)


def late_ms(now: float, due: float, speed: float) -> float:
    """Real milliseconds by which emulated time ``now`` is past ``due`` (0 if not)."""
    return max(0.0, (now - due) / speed * 1000)


def emulated_now(word: float, speed: float) -> float:
    """The emulated time a clock word (``Zone.clock_word``) says it is now."""
    return (time.monotonic() - word) * speed if word > 0 else -word


class ScaledClock:
    """Emulated time since ``t0`` (a ``time.monotonic()`` value), run ``speed`` times faster,
    never frozen: the supervisor's clock before time 0, and a simple clock for tests."""

    def __init__(self, speed: float = 1.0, t0: float | None = None, _monotonic=time.monotonic):
        if not speed > 0:
            raise ValueError("speed must be > 0")
        self.speed = float(speed)
        self._monotonic = _monotonic
        self.t0 = _monotonic() if t0 is None else t0

    def now(self) -> float:
        return (self._monotonic() - self.t0) * self.speed

    def to_real(self, emulated_s: float) -> float:
        return emulated_s / self.speed

    def real_wait(self, emulated_s: float) -> float:
        """Real seconds to wait for ``emulated_s`` to pass (at least; check again after)."""
        return max(0.0, emulated_s / self.speed)


class RunClock:
    """The run's clock as every process of the run sees it, from the zone.

    ``slot`` is whose freezes this process holds: a task's index, or the
    zone's ``supervisor_slot``. ``speed`` and ``t0`` come from the zone."""

    def __init__(self, zone, slot: int):
        self.zone = zone
        self.slot = slot
        self.speed = zone.speed

    @property
    def t0(self) -> float:
        return self.zone.t0

    def now(self) -> float:
        return emulated_now(self.zone.clock_word, self.speed)

    @property
    def is_frozen(self) -> bool:
        return self.zone.clock_word <= 0

    def to_real(self, emulated_s: float) -> float:
        return emulated_s / self.speed

    def real_wait(self, emulated_s: float) -> float:
        """Real seconds to wait before looking again whether ``emulated_s`` has passed: all
        of it while the clock runs, a short poll while it is frozen."""
        real = max(0.0, emulated_s / self.speed)
        return min(real, FROZEN_POLL_S) if self.is_frozen else real

    @contextmanager
    def frozen(self):
        """Emulated time stands still for the whole run while the body runs (real work the
        model says takes no time). The body must not wait for anything."""
        if not self.t0:
            yield                       # before time 0 there is no clock to stop
            return
        self.zone.freeze_clock(self.slot)
        try:
            yield
        finally:
            self.zone.thaw_clock(self.slot)
