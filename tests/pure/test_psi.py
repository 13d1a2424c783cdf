"""PSI memory pressure (emulator/kernel/psi.py) driven by a fake clock.

Expected figures are computed here from the kernel's formulas written out again
(include/linux/sched/loadavg.h's calc_load, kernel/sched/psi.c's calc_avgs), or from
plain floating-point exponentials, never from the module's own helpers.
"""

from __future__ import annotations

import math

import pytest

from emulator.kernel.clock import HZ, FakeClock
from emulator.kernel.psi import PsiGroup, format_pressure

pytestmark = pytest.mark.timeout(10)

J = 1.0 / HZ                     # a jiffy, seconds
P = (2 * HZ + 1) * J             # psi_period: PSI_FREQ = 2*HZ+1 jiffies
EXP = (1677, 1981, 2034)         # EXP_10s, EXP_60s, EXP_300s
FIXED_1 = 2048


def work_time(k: int) -> float:
    """When the k-th average update runs for a group first woken at time 0 and kept busy:
    the work is armed PSI_FREQ jiffies after the first change (501 J, on avg_next_update),
    then re-armed nsecs_to_jiffies(avg_next_update - now) + 1 jiffies on (one jiffy late
    on the fixed grid of psi_period)."""
    return (501 * k + (1 if k >= 2 else 0)) * J


def kernel_calc_load(load: int, exp: int, active: int) -> int:
    newload = load * exp + active * (FIXED_1 - exp)
    if active >= load:
        newload += FIXED_1 - 1
    return newload // FIXED_1


def fixed(avgs: list[int]) -> list[str]:
    return [f"{a >> 11}.{((a & 2047) * 100) >> 11:02d}" for a in avgs]


def as_pct(p) -> list[float]:
    return [p.avg10, p.avg60, p.avg300]


def line(name, avgs, total_us):
    a = fixed(avgs)
    return f"{name} avg10={a[0]} avg60={a[1]} avg300={a[2]} total={total_us}\n"


def test_an_idle_system_reads_zero():
    zero = ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    g = PsiGroup()
    assert g.show(0) == zero
    assert g.show(100) == zero
    # busy but never stalled: still zero, and the averaging work keeps running
    g.wake("a", 100)
    assert g.show(130) == zero
    assert len(g.updates) >= 10


def test_pressure_rises_while_a_task_stalls_as_calc_avgs_says():
    clock = FakeClock()
    g = PsiGroup(clock.now())
    g.wake("a", clock.now())
    g.memstall_enter("a", clock.now(), "reclaim")
    clock.advance_to(work_time(5) + 0.004)           # five updates, each of a 100% period
    text = g.show(clock.now())
    assert [round(u / 1e9, 6) for u in g.updates] == [round(work_time(k), 6) for k in range(1, 6)]

    avgs = [0, 0, 0]
    for _ in range(5):
        avgs = [kernel_calc_load(a, e, 100 * FIXED_1) for a, e in zip(avgs, EXP)]
    assert g.avg == [avgs, avgs]                      # SOME and FULL, fixed point, to the bit
    total_us = round(clock.now() * 1e6)
    assert text == line("some", avgs, total_us) + line("full", avgs, total_us)
    # 10 s of a 100% stall: avg10 is about 1 - 1/e of the way, avg60 and avg300 much less
    p = g.pressure(clock.now())["some"]
    assert p.avg10 == pytest.approx(100 * (1 - math.exp(-work_time(5) / 10 * 2 / P)), abs=0.3)
    assert 62.5 < p.avg10 < 64
    assert p.avg60 == pytest.approx(100 * (1 - math.exp(-10 / 60)), abs=0.5)
    assert p.avg300 == pytest.approx(100 * (1 - math.exp(-10 / 300)), abs=0.2)


def test_pressure_decays_by_the_exp_factors_per_period_after_the_stall():
    clock = FakeClock()
    g = PsiGroup()
    g.wake("a", 0)
    g.memstall_enter("a", 0, "swapin")
    clock.advance_to(work_time(5))
    g.memstall_leave("a", clock.now())              # at the 5th update; "a" keeps running
    before = g.pressure(clock.now())["some"]
    total = before.total_us
    assert total == round(work_time(5) * 1e6)
    for k in range(6, 11):
        clock.advance_to(work_time(k) + 0.001)
        p = g.pressure(clock.now())["some"]
        n = k - 5
        for got, was, e in zip(as_pct(p), as_pct(before), EXP):
            # zero samples: each period multiplies by EXP/FIXED_1 (up to the fixed point's rounding)
            assert got == pytest.approx(was * (e / FIXED_1) ** n, abs=0.02 * n + 0.01)
        assert p.total_us == total                    # no stall, no time
    assert g.pressure(clock.now())["some"].avg10 < 0.37 * before.avg10


def test_some_and_full():
    g = PsiGroup()
    g.wake("a", 0)
    g.wake("b", 0)
    g.memstall_enter("a", 0, "reclaim")              # b still does productive work: SOME only
    assert g.show(1.0).splitlines() == [
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=1000000",
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0"]
    g.sleep("b", 1.0)                                  # b idle: every non-idle task is stalled
    g.memstall_enter("b", 1.5, "refault")             # no difference to FULL, a nested kind of stall
    p = g.pressure(3.0)
    assert (p["some"].total_us, p["full"].total_us) == (3_000_000, 2_000_000)
    g.memstall_leave("b", 3.0)                        # b sleeps in iowait: FULL holds (psi.c's test_state)
    g.sleep("b", 3.0, iowait=True)
    p = g.pressure(4.0)
    assert (p["some"].total_us, p["full"].total_us) == (4_000_000, 3_000_000)
    g.wake("b", 4.0)                                  # runnable again: FULL ends, SOME goes on
    p = g.pressure(5.0)
    assert (p["some"].total_us, p["full"].total_us) == (5_000_000, 3_000_000)
    # the averages: after 8 full periods of SOME and a FULL that held from 1 s to 4 s only
    some, full = g.pressure(work_time(8) + 0.001).values()
    assert some.avg10 > 50 and 0 < full.avg10 < some.avg10


def test_full_is_weighted_by_each_cpus_non_idle_time():
    g = PsiGroup(ncpus=2)
    g.wake("a", 0, cpu=0)
    g.wake("b", 0, cpu=1)
    g.memstall_enter("a", 0, "writeback")
    # cpu0 is FULL all the time, cpu1 never; both busy alike: half of wall time each
    p = g.pressure(2.0)
    assert p["some"].total_us == 1_000_000
    assert p["full"].total_us == 1_000_000


def test_total_counts_microseconds_of_stall_only():
    clock = FakeClock()
    g = PsiGroup()
    g.wake("a", 0)
    clock.advance(0.25)
    g.memstall_enter("a", clock.now(), "reclaim")
    g.memstall_enter("a", clock.now(), "writeback")  # nested: counted once
    clock.advance(1.234567)
    g.memstall_leave("a", clock.now())
    clock.advance(0.5)
    g.memstall_leave("a", clock.now())
    clock.advance(3)
    p = g.pressure(clock.now())["some"]
    assert p.total_us == 1_734_567
    assert g.show(clock.now()).splitlines()[0].endswith(" total=1734567")


def test_the_oom_retry_wait_is_not_a_stall():
    g = PsiGroup()
    g.wake("a", 0)
    with pytest.raises(ValueError, match="not a memory stall"):
        g.memstall_enter("a", 0, "oom_wait")
    with pytest.raises(ValueError, match="unknown memstall reason"):
        g.memstall_enter("a", 0, "lunch")
    g.sleep("a", 0)                                   # how a task waits after out_of_memory
    assert g.pressure(5)["some"].total_us == 0
    with pytest.raises(ValueError, match="backwards"):
        g.wake("a", 4)


def test_missed_periods_are_caught_up_as_decay():
    """After the stall the task sleeps: the work runs once more (a zero sample) and stops.
    Nothing updates for 7 s; the next read decays over the missed periods at once
    (calc_load_n), then samples the last, partial period."""
    g = PsiGroup()
    g.wake("a", 0)
    g.memstall_enter("a", 0, "reclaim")
    g.memstall_leave("a", work_time(5))
    g.sleep("a", work_time(5))
    after6 = as_pct(g.pressure(work_time(6) + 0.001)["some"])
    n_updates = len(g.updates)
    assert n_updates == 6
    assert g.work_due is None                         # the idle system stopped the clock

    now = work_time(6) + 7.0
    p = g.pressure(now)["some"]
    assert len(g.updates) == n_updates + 1            # one update covers them all
    next_grid = 7 * P                                  # avg_next_update after the 6th update
    missed = int((now - next_grid) // P)
    assert missed == 2
    # missed periods decay as zeros, then the last period's zero sample decays once more
    for got, was, e in zip(as_pct(p), after6, EXP):
        assert got == pytest.approx(was * (e / FIXED_1) ** (missed + 1), abs=0.03)
        assert got < was * (e / FIXED_1) ** missed + 0.01
    assert p.total_us == round(work_time(5) * 1e6)


def test_format_is_psi_shows():
    assert format_pressure([1294, 0, 2048 * 100], 5_000_999, [1, 2047, 2048], 999) == (
        "some avg10=0.63 avg60=0.00 avg300=100.00 total=5000\n"
        "full avg10=0.00 avg60=0.99 avg300=1.00 total=0\n")
