"""The runtime's stall accounting (emulator/runtime/stall.py) driven by a fake clock.

Task events and planned stalls go in, as the supervisor hands them over; what a
reader of /proc/pressure/memory sees comes out (the figures published). Expected
figures come from plain exponentials (the averages' meaning), not the module's code.
"""

from __future__ import annotations

import math

import pytest

from emulator.kernel.clock import HZ
from emulator.runtime.protocol import Event
from emulator.runtime.stall import Segment, StallAccounting

pytestmark = pytest.mark.timeout(10)

P = (2 * HZ + 1) / HZ            # psi_period, seconds


def pct(fixed: int) -> float:
    """A fixed-point average (FSHIFT 11) as the percentage psi_show prints."""
    return (fixed >> 11) + (((fixed & 2047) * 100) >> 11) / 100


class Reader:
    """What a daemon polling the zone would have seen: every publish, in order."""

    def __init__(self):
        self.seen: list[tuple[float, tuple]] = []

    def __call__(self, figures, at):
        self.seen.append((at, figures))

    def some_avg10(self) -> list[tuple[float, float]]:
        return [(at, pct(f[0])) for at, f in self.seen]

    def last(self, field: int = 0):
        return self.seen[-1][1][field]


def drive(acct: StallAccounting, events: list, until: float) -> None:
    """Run the supervisor's loop on a fake clock: wake at each event's time or at
    next_due(), whichever comes first; hand the event over; flush."""
    events = sorted(events, key=lambda e: e[0])
    now = 0.0
    while now < until:
        due = acct.next_due()
        nxt = events[0][0] if events else math.inf
        now = min(until, nxt, due if due is not None else math.inf)
        while events and events[0][0] <= now:
            _, fn = events.pop(0)
            fn()
        acct.flush(now)


def test_pressure_rises_while_a_task_stalls_and_decays_after():
    """One task stalls on writeback for 10 s (asleep, in a memstall) from t=1: avg10
    climbs towards 1 - 1/e of the way in 10 s, then each averaging period after the
    stall multiplies it by about exp(-2 s/10 s); total counts the 10 s in us."""
    r = Reader()
    acct = StallAccounting(nr_cpus=1, publish=r)
    acct.start(0, 0.0)
    events = [
        (1.0, lambda: acct.on_event(0, Event.OOM, 1.0)),
        (1.0, lambda: acct.plan(0, 1.0, [Segment(11.0, "writeback", asleep=True)])),
        (11.5, lambda: acct.on_event(0, Event.ALLOC_OK, 11.5)),
        (11.5, lambda: acct.on_event(0, Event.STEPS_DONE, 11.5)),     # idle from here
    ]
    drive(acct, events, 40.0)
    series = r.some_avg10()
    during = [v for at, v in series if at <= 11.0]
    after = [(at, v) for at, v in series if at > 12.5]
    peak = max(v for _, v in series)
    # the stall's 10 s, from a start 1 s into the first period: about 1 - e^-1 (63.2%)
    assert 55.0 <= peak <= 66.0, series
    assert during == sorted(during), "avg10 only rises while the task stalls"
    # after: decays period by period, as exp(-P/10) (the kernel's EXP_10s 1677/2048)
    assert len(after) >= 10, "a publish at every averaging period, idle or not"
    for (t0, a), (t1, b) in zip(after, after[1:]):
        periods = round((t1 - t0) / P)
        assert periods >= 1
        assert b == pytest.approx(a * math.exp(-P / 10) ** periods, abs=0.02 + 0.003 * a), (t0, a, t1, b)
    assert after[-1][1] < 5.0
    # total: the 10 s in us (collections count whole jiffies of non-idle time)
    assert r.last(3) == pytest.approx(10_000_000, abs=10_000)
    assert r.last(7) == r.last(3), "alone on its CPU: every stall is a full stall"


def test_the_emulated_sigkill_cuts_a_planned_stall():
    """A task throttled until t=5 is killed at t=2: its next event (EXITING) ends the
    stall there, and the exit leaves PSI; 1 s of stall, not 4."""
    r = Reader()
    acct = StallAccounting(nr_cpus=1, publish=r)
    acct.start(0, 0.0)
    acct.on_event(0, Event.OOM, 1.0)
    acct.plan(0, 1.0, [Segment(5.0, "writeback", asleep=True)])
    acct.on_event(0, Event.EXITING, 2.0)
    acct.on_event(0, Event.EXITED, 2.1)
    acct.flush(10.0)
    assert r.last(3) == pytest.approx(1_000_000, abs=5_000)


def test_the_oom_retry_wait_is_no_stall_and_reclaim_runs_stalled():
    """The OOM killer's retry wait is a sleep outside any memstall; direct reclaim's time
    is a stall the task runs through (SOME and, alone, FULL)."""
    r = Reader()
    acct = StallAccounting(nr_cpus=1, publish=r)
    acct.start(0, 0.0)
    acct.plan(0, 1.0, [Segment(1.004, asleep=True)])                 # a jiffy's retry wait
    acct.flush(1.5)
    assert r.last(3) == 0
    acct.plan(0, 2.0, [Segment(2.5, "reclaim")])                     # 0.5 s of reclaim
    acct.flush(3.0)
    assert r.last(3) == pytest.approx(500_000, abs=5_000)
    assert r.last(7) == r.last(3)


def test_full_needs_every_runnable_task_of_a_cpu_stalled():
    """Two tasks on one CPU: while one stalls and the other runs, that is SOME, not FULL;
    on two CPUs, the stalled one is alone on its own and the stall is FULL there, weighted
    by the CPUs' non-idle time (both busy: half)."""
    for cpus, full in ((1, 0), (2, 1_000_000)):
        r = Reader()
        acct = StallAccounting(nr_cpus=cpus, publish=r)
        acct.start(0, 0.0)
        acct.start(1, 0.0)
        acct.plan(0, 1.0, [Segment(3.0, "refault", asleep=True, iowait=True)])
        acct.flush(4.0)
        some = 2_000_000 if cpus == 1 else 1_000_000   # two busy CPUs: each weighs half
        assert r.last(3) == pytest.approx(some, abs=10_000), cpus
        assert r.last(7) == pytest.approx(full, abs=10_000), cpus


def test_sleeping_tasks_do_not_dilute_and_events_wake_them():
    """A sleep step (Event.SLEEP with its end) and D state are idle for PSI: a stalled task
    beside them on its CPU is a full stall; a task's event wakes it early."""
    r = Reader()
    acct = StallAccounting(nr_cpus=1, publish=r)
    acct.start(0, 0.0)
    acct.start(1, 0.0)
    acct.on_event(1, Event.SLEEP, 0.5, {"until": 100.0})
    acct.plan(0, 1.0, [Segment(2.0, "swapin", asleep=True, iowait=True)])
    acct.flush(3.0)
    assert r.last(7) == pytest.approx(1_000_000, abs=5_000)
    acct.on_event(1, Event.MMAP_LOCK, 3.0)                    # it runs again (woken early)
    acct.on_event(1, Event.STATE, 3.0, {"state": "D"})        # and blocks in D state
    acct.plan(0, 4.0, [Segment(5.0, "reclaim")])
    acct.flush(6.0)
    assert r.last(7) == pytest.approx(2_000_000, abs=10_000)


def test_events_out_of_time_order_are_clamped_and_ends_run_in_order():
    """Tasks report at their own plans, so events may come a little out of order: time
    never goes back. Planned ends run in time order whatever order they were planned in."""
    r = Reader()
    acct = StallAccounting(nr_cpus=2, publish=r)
    acct.start(0, 0.0)
    acct.start(1, 0.0)
    acct.plan(0, 1.0, [Segment(3.0, "reclaim"), Segment(4.0, "writeback", asleep=True)])
    acct.plan(1, 1.0, [Segment(2.0, "reclaim")])
    acct.on_event(1, Event.ALLOC_OK, 0.9)                     # late news: clamped to 1.0
    assert not acct.psi.stalled(1), "task 1's stall was cut at its event"
    assert acct.psi.stalled(0)
    acct.advance(3.5)                                         # task 0: reclaim over, writeback on
    assert acct.psi.stalled(0) and acct.psi.tasks[0].reason == "writeback"
    assert not acct.psi.tasks[0].runnable
    acct.advance(4.0)
    assert not acct.psi.stalled(0) and acct.psi.tasks[0].runnable
    acct.on_event(0, Event.LATE, 3.9)                         # an event from the past changes nothing
    assert acct.psi._now == 4_000_000_000
    with pytest.raises(ValueError, match="not a memory stall"):
        acct.plan(0, 6.0, [Segment(7.0, "oom_wait")])


def test_publishes_only_what_changed():
    r = Reader()
    acct = StallAccounting(nr_cpus=1, publish=r)
    acct.flush(0.0)
    acct.flush(0.5)
    acct.start(0, 1.0)
    acct.flush(1.0)
    assert len(r.seen) == 1, "an idle system's figures do not change: published once"


def test_who_reclaim_may_swap_out_without_racing_a_fault():
    """Quiet past a time: never ran, idle, or asleep in a plan ending after it; not a task
    that runs, waits in D state (what it waits for may come at any moment), or wakes by then."""
    acct = StallAccounting(nr_cpus=1)
    assert acct.quiet_until_after(7, 1.0), "a task with no steps never runs"
    acct.start(0, 0.0)
    assert not acct.quiet_until_after(0, 1.0)
    acct.on_event(0, Event.SLEEP, 0.5, {"until": 3.0})
    assert acct.quiet_until_after(0, 1.0) and not acct.quiet_until_after(0, 3.0)
    acct.on_event(0, Event.STATE, 3.0, {"state": "D"})
    assert not acct.quiet_until_after(0, 3.5)
    acct.on_event(0, Event.STATE, 3.6, {"state": "R"})
    acct.plan(0, 3.6, [Segment(3.7, "writeback", asleep=True)])
    assert acct.quiet_until_after(0, 3.65) and not acct.quiet_until_after(0, 3.7)
    acct.on_event(0, Event.STEPS_DONE, 4.0)
    assert acct.quiet_until_after(0, 100.0), "idle after its steps"


def test_an_idle_system_still_publishes_at_every_averaging_period():
    """A reader sees figures of the time it reads: each averaging period is published,
    changed or not (the zone's psi_at moves on)."""
    r = Reader()
    acct = StallAccounting(nr_cpus=1, publish=r)
    drive(acct, [], 10 * P + 0.1)
    times = [at for at, _ in r.seen]
    assert len(times) >= 10 and times[-1] >= 10 * P, times


def test_a_plan_cut_by_exit_never_comes_back_for_the_same_index():
    acct = StallAccounting(nr_cpus=1)
    acct.start(0, 0.0)
    acct.plan(0, 1.0, [Segment(5.0, "writeback", asleep=True)])
    acct.exit(0, 2.0)
    acct.running(0, 3.0)                       # the index again (news after its exit)
    acct.plan(0, 3.0, [Segment(10.0, "refault", asleep=True, iowait=True)])
    acct.advance(6.0)                          # the old plan's end (5.0) ends nothing now
    assert acct.psi.stalled(0) and acct.psi.tasks[0].reason == "refault"
    acct.advance(10.0)
    assert not acct.psi.stalled(0)
