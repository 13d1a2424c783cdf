"""A run's clock: emulated seconds on the real monotonic clock, run ``speed`` times faster,
which real work does not move and which waits for whoever is late.

With ``speed`` N, one emulated second passes in 1/N real seconds, so every
kernel constant and scenario duration is divided by N (SimPy's
``RealtimeEnvironment(factor=...)`` idea). The model itself takes the time
as a parameter (``kernel/clock.py``). Two things keep outcomes from depending
on the speed or on how busy the machine is:

* **A task holds the clock at the time it is at.** Each task keeps a plan
  (the emulated time its next action is due at); whenever it is not
  waiting, the clock cannot pass that time (:meth:`RunClock.hold`). So the
  real work it does between two waits (faulting 100 MB in takes this
  machine some 60 ms, punching it out some 20 ms: 0.6 s and 0.2 s of
  emulated time at speed 10) happens at the time it is at, for every
  process of the run. It lets go (:meth:`RunClock.let_go`) only to block
  on another process or to idle.
* **Time waits for whoever has something due.** A process about to sleep
  until emulated time D holds the clock at D (:meth:`RunClock.sleep_until`;
  the reaper, :meth:`RunClock.hold`): the clock will not pass D until that process has
  woken and acted. A busy machine wakes a sleeper late (a few ms with both
  cores taken: more than the 0.4 ms a jiffy is at speed 10); the clock then
  *holds* at D for everyone, and goes on from D once the sleeper is up. An
  OOM kill holds the clock at the kill for a victim that waits killably
  (:func:`hold_for_kill`) and for the reaper it wakes (:func:`hold_for`).
  So what is due at D happens at D, before anything due later, at any
  speed and any load; the run takes longer in real time instead, and says
  by how much (``held_ms``).
* **The supervisor's real work takes no emulated time**: its zaps and
  repairs are done with the clock *frozen* (:meth:`RunClock.frozen`):
  emulated time stands still for the whole run until the last freeze is
  given back. Only work that never waits for another process may be done
  frozen.

What is neither held nor frozen follows real time: a process woken by
another (a lock, mmap_sem) acts when it wakes, and the supervisor learns of
a task's exit when its event arrives. The run measures how late things are
against the clock (``lag_ms``): the hold of a slot that did not wake for
``HOLD_LIMIT_S`` (a process stopped from outside: the clock stops waiting
for it), and what that slot then does late, an OOM call among it. A run lagged if that is more than the
larger of ``TOLERANCE_EMULATED_S`` and ``TOLERANCE_REAL_S`` (:func:`tolerance_ms`).

The shared state lives in the zone: one 8-byte *clock word*, read with one
load: a positive word is the ``time.monotonic()`` at which emulated time 0
would have been (``t0`` plus every freeze and hold so far), so ``now =
(monotonic() - word) * speed``; a word <= 0 is a frozen clock standing at
``-word``. ``min_due``, the earliest time any slot waits for, caps what
``now`` can be. Freezes and dues are kept per *slot* (each task's index,
then the supervisor's), so that those of a process that died or was stopped
can be given back for it (:func:`release_slot`). The clock starts frozen at
0, held by every task, each of which lets go when it reaches the start line:
time 0 is when the last task is ready to act, however long a busy machine
took to wake them all. Every change is made under the zone lock.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

from .zone import DUE, ZONE_HEADER

#: A run lagged if something happened later than the larger of these after the time it
#: was due at: TOLERANCE_EMULATED_S of emulated time, or TOLERANCE_REAL_S of real time.
TOLERANCE_EMULATED_S = 0.005
TOLERANCE_REAL_S = 0.002
#: The shortest real wait (seconds) between two looks at the clock.
MIN_WAIT_S = 0.0002
#: The clock waits at most this long (real seconds) for one late sleeper.
HOLD_LIMIT_S = 2.0


def tolerance_ms(speed: float) -> float:
    """How late (real ms) something may happen at ``speed`` before the run has lagged."""
    return 1000 * max(TOLERANCE_EMULATED_S / speed, TOLERANCE_REAL_S)


def late_ms(now: float, due: float, speed: float) -> float:
    """Real milliseconds by which emulated time ``now`` is past ``due`` (0 if not)."""
    return max(0.0, (now - due) / speed * 1000)


def _raw(word: float, speed: float) -> float:
    return (time.monotonic() - word) * speed if word > 0 else -word


def emulated_now(word: float, speed: float, min_due: float = math.inf) -> float:
    """The emulated time the zone's clock word and earliest due say it is now."""
    return min(_raw(word, speed), min_due)


# -- changes to the shared state: each under the zone lock --------------------------------

def start_clock(zone, t0: float, slots) -> None:
    """Time 0 at ``t0``, the clock frozen at 0 by one freeze per task in ``slots`` (the
    live ones: a task that died before time 0 would never give its back)."""
    slots = set(slots)
    zone.map[zone.freezes_off:zone.freezes_off + zone.nr_slots] = bytes(i in slots for i in range(zone.nr_slots))
    ZONE_HEADER.set(zone.map, "frozen", len(slots))
    ZONE_HEADER.set(zone.map, "clock", -0.0 if slots else t0)


def _set_word(zone, stands: float, speed: float) -> None:
    """The clock goes on (or stays frozen) from emulated time ``stands``."""
    if ZONE_HEADER.get(zone.map, "frozen"):
        ZONE_HEADER.set(zone.map, "clock", -stands)
    else:
        ZONE_HEADER.set(zone.map, "clock", time.monotonic() - stands / speed)


def _due(zone, slot: int) -> float:
    return DUE.unpack_from(zone.map, zone.dues_off + DUE.size * slot)[0]


def _set_due(zone, slot: int, due: float) -> None:
    DUE.pack_into(zone.map, zone.dues_off + DUE.size * slot, due)


def _give_back(zone, slot: int, everything: bool) -> None:
    held = zone.map[zone.freezes_off + slot]
    if held == 0:
        return
    give = held if everything else 1
    zone.map[zone.freezes_off + slot] = held - give
    frozen = ZONE_HEADER.get(zone.map, "frozen") - give
    ZONE_HEADER.set(zone.map, "frozen", frozen)
    if frozen == 0:
        _set_word(zone, -ZONE_HEADER.get(zone.map, "clock"), zone.speed)


def _set_slot_due(zone, slot: int, due: float) -> float:
    """``slot`` now waits for (or holds the clock at) ``due`` (inf: nothing). If that
    raises the clock's cap while the clock is holding at it, the clock goes on from the
    cap. ``min_due`` is stored once, after the clock word: a reader never sees the cap
    lifted before the word moved (RunClock.now reads word, cap, word). Returns how long
    (real seconds) the clock had held for this slot."""
    speed = zone.speed
    word, cap = zone.clock_word, zone.min_due
    raw = _raw(word, speed)
    old = _due(zone, slot)
    _set_due(zone, slot, due)
    new_cap = min(zone.dues.unpack_from(zone.map, zone.dues_off))
    held = 0.0
    if new_cap > cap and raw > cap:          # holding at the cap, which rises: go on from it
        if old == cap:
            held = (raw - cap) / speed
            ZONE_HEADER.set(zone.map, "held_s", ZONE_HEADER.get(zone.map, "held_s") + held)
            ZONE_HEADER.set(zone.map, "held_max_s", max(ZONE_HEADER.get(zone.map, "held_max_s"), held))
        if word > 0:
            ZONE_HEADER.set(zone.map, "clock", time.monotonic() - cap / speed)
    if new_cap != cap:
        ZONE_HEADER.set(zone.map, "min_due", new_cap)
    return held


def _now_locked(zone) -> float:
    return emulated_now(zone.clock_word, zone.speed, zone.min_due)


def _clear_due(zone, slot: int) -> float:
    """Forget ``slot``'s due; if the clock was holding there for it, it goes on from there."""
    return _set_slot_due(zone, slot, math.inf) if _due(zone, slot) != math.inf else 0.0


def _move_due(zone, slot: int, due: float, now: float) -> float:
    """``slot`` now waits for (or holds the clock at) ``due``, no earlier than ``now``
    (a due in the past would turn the clock back). Returns the due set."""
    due = max(due, now)
    _set_slot_due(zone, slot, due)
    return due


def _lower_due(zone, slot: int, at: float) -> None:
    """Someone else holds the clock for ``slot`` at ``at`` (no earlier than now), unless
    the slot holds it earlier already."""
    at = max(at, _now_locked(zone))
    if at < _due(zone, slot):
        _set_slot_due(zone, slot, at)


def release_slot(zone, slot: int) -> None:
    """Give back every freeze and the due of a slot whose process died or was stopped."""
    with zone.lock():
        release_slot_locked(zone, slot)


def release_slot_locked(zone, slot: int) -> None:
    """release_slot, for a caller that holds the zone lock already."""
    zone.map[zone.killable_off + slot] = 0
    _give_back(zone, slot, everything=True)
    _clear_due(zone, slot)


def hold_for_kill(zone, slot: int, at: float) -> None:
    """The OOM killer sends ``slot``'s task the emulated SIGKILL at emulated time ``at``
    (now: the allocator holds the clock there for its OOM call): if the task waits
    killably, the clock holds at ``at`` until it is up, so that its exit starts at the
    kill, however late the signal wakes it."""
    with zone.lock():
        if zone.map[zone.killable_off + slot]:
            _lower_due(zone, slot, at)


def stop_holding(zone, slot: int, due: float) -> bool:
    """The clock stops waiting for ``slot`` at ``due`` (late past HOLD_LIMIT_S): it goes on
    from there. Not if the slot has moved on meanwhile (it woke): returns whether it did."""
    with zone.lock():
        if _due(zone, slot) != due:
            return False
        _clear_due(zone, slot)
        return True


def holding_for(zone) -> list[int]:
    """The slots whose due the clock is holding at now (they are late)."""
    min_due = zone.min_due
    if min_due == math.inf or _raw(zone.clock_word, zone.speed) <= min_due:
        return []
    dues = zone.dues.unpack_from(zone.map, zone.dues_off)
    return [slot for slot, d in enumerate(dues) if d == min_due]


class ScaledClock:
    """Emulated time since ``t0`` (a ``time.monotonic()`` value), run ``speed`` times faster,
    never frozen or held: the supervisor's clock for its log before time 0."""

    def __init__(self, speed: float = 1.0, t0: float | None = None, _monotonic=time.monotonic):
        if not speed > 0:
            raise ValueError("speed must be > 0")
        self.speed = float(speed)
        self._monotonic = _monotonic
        self.t0 = _monotonic() if t0 is None else t0

    def now(self) -> float:
        return (self._monotonic() - self.t0) * self.speed


class RunClock:
    """The run's clock as every process of the run sees it, from the zone.

    ``slot`` is whose freezes and due this process (or thread) holds: a task's index,
    or the zone's ``supervisor_slot`` (the oom_reaper thread waits on it, and freezes
    while it works; the main thread only freezes)."""

    def __init__(self, zone, slot: int):
        self.zone = zone
        self.slot = slot
        self.speed = zone.speed

    @property
    def t0(self) -> float:
        return self.zone.t0

    def now(self) -> float:
        zone = self.zone
        while True:
            word, min_due = zone.clock_word, zone.min_due
            if zone.clock_word == word:      # the word moves before a hold's due is raised
                return emulated_now(word, self.speed, min_due)

    def real_wait(self, emulated_s: float) -> float:
        """Real seconds to wait before looking again whether ``emulated_s`` has passed. If
        the clock stands meanwhile, the waiter wakes early and waits again; its own due
        holds the clock until it is up, so it is never late for it, and a floor of
        MIN_WAIT_S keeps a waiter a rounding error short of its due from spinning."""
        return max(MIN_WAIT_S, emulated_s / self.speed)

    def real_since(self, t: float) -> float | None:
        """Real seconds since the clock reached emulated time ``t`` (0 if it has not): how
        late, in real time, what was due at ``t`` happens now, when the clock held at ``t``
        for it. None while the clock stands frozen (the real time a freeze takes is nobody's
        lateness: the clock goes on from where it stood, and says so after)."""
        word = self.zone.clock_word
        if word <= 0:
            return None
        return max(0.0, time.monotonic() - (word + t / self.speed))

    def held_since(self) -> float | None:
        """How long (real seconds) the clock has been holding for a late sleeper, or None."""
        word, min_due = self.zone.clock_word, self.zone.min_due
        if word <= 0 or min_due == math.inf or _raw(word, self.speed) <= min_due:
            return None
        return time.monotonic() - (word + min_due / self.speed)

    @contextmanager
    def frozen(self):
        """Emulated time stands still for the whole run while the body runs (real work the
        model says takes no time). The body must not wait for another process."""
        if not self.t0:
            yield                       # before time 0 there is no clock to stop
            return
        zone = self.zone
        with zone.lock():
            held = zone.map[zone.freezes_off + self.slot]
            if held == 255:
                raise RuntimeError(f"clock slot {self.slot}: too many nested freezes")
            if ZONE_HEADER.get(zone.map, "frozen") == 0:
                ZONE_HEADER.set(zone.map, "clock", -self.now())     # one store: frozen where it stands
            ZONE_HEADER.set(zone.map, "frozen", ZONE_HEADER.get(zone.map, "frozen") + 1)
            zone.map[zone.freezes_off + self.slot] = held + 1
        try:
            yield
        finally:
            with zone.lock():
                _give_back(zone, self.slot, everything=False)

    def thaw_start(self) -> None:
        """At the start line: give back the freeze time 0 began with (see the module)."""
        with self.zone.lock():
            _give_back(self.zone, self.slot, everything=False)

    # -- a task holds the clock at its plan whenever it is not waiting ---------------
    def hold(self, at: float) -> float:
        """The clock may not pass ``at`` (no earlier than now) until we wait again: a task
        that runs holds the clock at the time it is at, so that what it does between two
        waits happens at that time however long the machine takes. Returns the time held."""
        with self.zone.lock():
            return _move_due(self.zone, self.slot, at, self.now())

    def let_go(self) -> None:
        """About to block on another process (a lock, mmap_sem) or to idle: time may pass."""
        with self.zone.lock():
            _clear_due(self.zone, self.slot)

    def lower_hold(self, at: float) -> None:
        """Hold the clock at ``at`` (no earlier than now) for this slot's other user, unless
        it holds earlier already: the OOM killer, in the supervisor's main thread, holds
        it at a kill for the oom_reaper thread it wakes."""
        with self.zone.lock():
            _lower_due(self.zone, self.slot, at)

    def sleep_until(self, due: float, sleep, killable: bool = False) -> None:
        """Sleep until emulated time ``due``, and hold the clock there when up (the clock
        holds there for us too, however late the machine wakes us). ``sleep(real_s)`` may
        raise to end the sleep early (then the caller says where it stands: :meth:`hold`).
        ``killable``: an OOM kill meanwhile moves our due to the kill (hold_for_kill)."""
        zone = self.zone
        with zone.lock():
            if killable:
                zone.map[zone.killable_off + self.slot] = 1
            _move_due(zone, self.slot, due, self.now())
        try:
            while (left := due - self.now()) > 0:
                sleep(self.real_wait(left))
        finally:
            if killable:
                with zone.lock():
                    zone.map[zone.killable_off + self.slot] = 0

    def idle(self, wait):
        """Let go and ``wait()`` for a signal, killably (an OOM kill holds the clock at the
        kill until we are up and say where we stand); returns what ``wait`` returns."""
        zone = self.zone
        with zone.lock():
            zone.map[zone.killable_off + self.slot] = 1
            _clear_due(zone, self.slot)
        try:
            return wait()
        finally:
            with zone.lock():
                zone.map[zone.killable_off + self.slot] = 0
