"""What PSI counts in a run: task events in, a PsiGroup fed, /proc/pressure/memory out.

The supervisor tells :class:`StallAccounting` what its tasks do, at the emulated
times they do it: an event a task sent (:meth:`StallAccounting.on_event`, by kind),
or a stall it decided for one (:meth:`StallAccounting.plan`: direct reclaim's time,
the writeback throttle, the OOM retry wait, a refault's read). It turns them into
the calls of ``emulator.kernel.psi.PsiGroup`` (wake, sleep, memstall_enter/leave,
exit) in time order, and hands the figures a reader of /proc/pressure/memory would
see to ``publish`` whenever they change, and at every averaging period (the
supervisor wakes for :meth:`StallAccounting.next_due`).

Task states (docs/psi.md says how each step maps):

* runnable: doing its steps (an ``alloc``'s faults, a ``touch``), exiting, and
  whenever it sent an event: a task sends only while it runs;
* asleep: a ``sleep`` step (``Event.SLEEP``), idle after its steps
  (``Event.STEPS_DONE``), D state (``Event.STATE`` "D": ``busy``, mmap_sem and lock
  waits, mmput), the OOM killer's retry wait (asleep, outside any memstall);
* in a memstall: direct reclaim (runnable), waiting for writeback under reclaim
  (asleep), a refault's read (asleep in iowait), a swap-in (asleep in iowait).

A planned state (a sleep or a stall with an end) ends at its end, or earlier at the
task's next event (the emulated SIGKILL woke it). Times are clamped to never go
backwards: events of different tasks may arrive a little out of time order (each
task reports at its own plan), and PSI's clock only goes forward.

Pure: no process, no clock of its own; every call takes the emulated time, so a
test drives it with a fake clock. Work per call is O(1) in the number of tasks
(a heap of planned ends, dropped lazily when stale), but for publishing, which
reads every CPU (``nr_cpus``).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ..kernel.psi import FULL, MEMSTALL_REASONS, NSEC_PER_SEC, NSEC_PER_USEC, SOME, PsiGroup, to_ns
from .protocol import Event

#: How many CPUs a scenario's machine has (``nr_cpus``) unless it says: a small
#: machine's (a laptop's or a phone's cluster); tasks are placed on them by index.
NR_CPUS = 4

RUNNING, ASLEEP, GONE = "R", "S", "X"

# Events after which the task is asleep until an event, not runnable (the rest: runnable).
_SLEEPS_AFTER = {Event.STEPS_DONE}


@dataclass(frozen=True)
class Segment:
    """A planned stretch of a task's time: from the previous segment's end (or the plan's
    start) until ``until``; ``reason`` a memstall reason or "" (no stall), ``asleep``
    (and ``iowait``) or runnable."""
    until: float
    reason: str = ""
    asleep: bool = False
    iowait: bool = False


@dataclass
class _Task:
    state: str = GONE               # RUNNING, ASLEEP or GONE (never woken, or exited)
    stalled: bool = False           # inside a memstall section we opened
    reason: str = ""                # its reason
    plan: deque = field(default_factory=deque)   # Segments still to run, the current first
    gen: int = 0                    # renewed when the plan is cut: older heap entries are stale
    idle: bool = False              # asleep until an event, idle (not in D state)


class StallAccounting:
    """One run's PSI (the system's memory pressure) fed from its tasks' states.

    Contract: ``publish(figures, at)`` gets zone.PSI_FIELDS' figures (averages in the
    kernel's fixed point, totals in us) as :meth:`PsiGroup.show` would give them at ``at``;
    it is called from :meth:`flush` only. Times never go backwards inside (clamped)."""

    def __init__(self, nr_cpus: int = NR_CPUS, publish: Callable[[tuple, float], None] | None = None,
                 now: float = 0.0):
        self.psi = PsiGroup(now, ncpus=nr_cpus)
        self.nr_cpus = nr_cpus
        self._publish = publish
        self._now = now
        self._tasks: dict[int, _Task] = {}
        self._heap: list[tuple[float, int, int, int]] = []     # (segment end, seq, task, gen)
        self._seq = 0
        self._gens = itertools.count(1)        # plan generations, unique across tasks (an index seen
                                               # again after its exit never matches an old entry)
        self._dirty = True
        self._published_period = None          # avg_next_update at the last publish
        self._published: tuple | None = None   # the figures last published

    # -- time --------------------------------------------------------------------
    def _clamp(self, at: float) -> float:
        return at if at > self._now else self._now

    def advance(self, now: float) -> None:
        """Run every planned end up to ``now``, in time order (ties: in the order planned)."""
        now = self._clamp(now)
        while self._heap and self._heap[0][0] <= now:
            at, _, index, gen = heapq.heappop(self._heap)
            t = self._tasks.get(index)
            if t is None or t.gen != gen or not t.plan:
                continue                                  # stale: the plan was cut
            self._now = max(self._now, at)
            t.plan.popleft()
            self._next_segment(index, t, self._now)
        self._now = now

    def next_due(self) -> float | None:
        """The emulated time of the next planned end, averaging work or averaging period
        (a reader then sees the averages decay, even on a system gone idle)."""
        while self._heap and self._stale(self._heap[0]):
            heapq.heappop(self._heap)
        due = self.psi.avg_next_update
        if self.psi.work_due is not None:
            due = min(due, self.psi.work_due)
        due /= NSEC_PER_SEC
        return min(due, self._heap[0][0]) if self._heap else due

    def _stale(self, entry) -> bool:
        t = self._tasks.get(entry[2])
        return t is None or t.gen != entry[3] or not t.plan

    # -- what tasks do -------------------------------------------------------------
    def start(self, index: int, at: float) -> None:
        """The task begins its steps (time 0): runnable, on CPU ``index % nr_cpus``."""
        self.advance(at)
        t = self._task(index)
        self._set(index, t, self._now, RUNNING, False)

    def running(self, index: int, at: float) -> None:
        """The task runs at ``at`` (it sent an event): whatever was planned ends here."""
        self.advance(at)
        t = self._task(index)
        self._cut(t)
        self._set(index, t, self._now, RUNNING, False)

    def sleep(self, index: int, at: float, until: float | None = None, idle: bool = True) -> None:
        """The task sleeps from ``at`` (not a memory stall) until ``until``, or until its
        next event (None): ``idle`` (nothing to do) or not (D state: it waits for another)."""
        if until is not None:
            self.plan(index, at, [Segment(until, asleep=True)])
            return
        self.advance(at)
        t = self._task(index)
        self._cut(t)
        self._set(index, t, self._now, ASLEEP, False)
        t.idle = idle

    def quiet_until_after(self, index: int, at: float) -> bool:
        """Will the task not run before emulated time ``at`` has passed, but by an event the
        supervisor itself causes (a kill) or a command (``oomemu inject``)? True if it never
        ran (no steps), is idle, or is asleep in a plan ending after ``at``; False if it
        runs, is in D state (what it waits for may come any moment), or wakes by ``at``."""
        t = self._tasks.get(index)
        if t is None:
            return True
        if t.plan:
            s = t.plan[0]
            return s.asleep and s.until > at
        return t.state == ASLEEP and t.idle

    def plan(self, index: int, at: float, segments: list[Segment]) -> None:
        """From ``at``, the task goes through ``segments`` one after the other (each ending
        at its ``until``), then runs. Cuts whatever was planned before."""
        for s in segments:
            if s.reason and s.reason not in MEMSTALL_REASONS:
                raise ValueError(f"{s.reason!r} is not a memory stall (one of {MEMSTALL_REASONS})")
        self.advance(at)
        t = self._task(index)
        self._cut(t)
        t.plan.extend(s for s in segments if s.until > self._now)
        self._next_segment(index, t, self._now)

    def exit(self, index: int, at: float) -> None:
        """The task is gone: its stall, if any, ends with it."""
        self.advance(at)
        t = self._tasks.pop(index, None)
        if t is not None and t.state != GONE:
            self.psi.exit(index, self._now)
            self._dirty = True

    def on_event(self, index: int, kind: Event, at: float, fields: dict | None = None) -> None:
        """A task's event, as the supervisor got it: the state it says the task is in."""
        fields = fields or {}
        if kind is Event.EXITED:
            self.exit(index, at)
        elif kind is Event.SLEEP:
            until = fields.get("until", -1)
            self.sleep(index, at, None if until is None or until < 0 else float(until))
        elif kind is Event.STATE and fields.get("state") == "D":
            self.sleep(index, at, idle=False)
        elif kind in _SLEEPS_AFTER:
            self.sleep(index, at)
        elif kind is not Event.INJECT and kind is not Event.FAULT:
            self.running(index, at)

    # -- inside --------------------------------------------------------------------
    def _task(self, index: int) -> _Task:
        t = self._tasks.get(index)
        if t is None:
            t = self._tasks[index] = _Task(gen=next(self._gens))
        return t

    def _cut(self, t: _Task) -> None:
        if t.plan:
            t.plan.clear()
            t.gen = next(self._gens)

    def _next_segment(self, index: int, t: _Task, now: float) -> None:
        """Enter the plan's first segment at ``now`` (or run, if the plan is done)."""
        if not t.plan:
            self._set(index, t, now, RUNNING, False)
            return
        s = t.plan[0]
        self._set(index, t, now, ASLEEP if s.asleep else RUNNING, bool(s.reason), s.reason, s.iowait)
        self._seq += 1
        heapq.heappush(self._heap, (s.until, self._seq, index, t.gen))

    def _set(self, index: int, t: _Task, now: float, state: str, stalled: bool, reason: str = "",
             iowait: bool = False) -> None:
        """Move the task's PSI state to (state, stalled) at ``now``: stall changes first while
        runnable, so that a stall entered asleep is one entered where the task ran."""
        psi = self.psi
        if t.state == GONE:
            psi.wake(index, now, cpu=index % self.nr_cpus)
            t.state = RUNNING
            self._dirty = True
        if t.stalled and (not stalled or reason != t.reason):      # over, or another reason now
            psi.memstall_leave(index, now)
            t.stalled = False
            self._dirty = True
        if state == RUNNING and t.state != RUNNING:
            psi.wake(index, now)
            t.state = RUNNING
            self._dirty = True
        if stalled and not t.stalled:
            psi.memstall_enter(index, now, reason)
            t.stalled, t.reason = True, reason
            self._dirty = True
        if state == ASLEEP and t.state != ASLEEP:
            psi.sleep(index, now, iowait=iowait)
            t.state = ASLEEP
            self._dirty = True
        t.idle = False

    # -- reading ---------------------------------------------------------------------
    def figures(self, now: float) -> tuple[int, ...]:
        """/proc/pressure/memory read at ``now``, as zone.PSI_FIELDS: some avg10, avg60,
        avg300 (fixed point, FSHIFT), total us; then full's."""
        self.advance(now)
        psi = self.psi
        psi.read(self._now)
        return (*psi.avg[SOME], psi.total[SOME] // NSEC_PER_USEC, *psi.avg[FULL], psi.total[FULL] // NSEC_PER_USEC)

    def flush(self, now: float) -> bool:
        """Publish the figures at ``now``, read as psi_show reads them (catching missed
        periods up): at every averaging period, and when a task's state changed if they
        differ from those last published. Returns whether it published."""
        self.advance(now)
        psi = self.psi
        if to_ns(self._now) >= psi.avg_next_update or (psi.work_due is not None
                                                      and psi.work_due <= to_ns(self._now)):
            psi.read(self._now)
        period_ended = psi.avg_next_update != self._published_period
        if not self._dirty and not period_ended:
            return False
        figs = self.figures(self._now)
        self._dirty, self._published_period = False, psi.avg_next_update
        if figs == self._published and not period_ended:
            return False                            # what a reader sees has not changed
        self._published = figs
        if self._publish is not None:
            self._publish(figs, self._now)
        return True
