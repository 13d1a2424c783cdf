"""The run clock, shared through the zone: frozen while real work is done, holding at a
due time until the sleeper is up, starting when the last task is at the start line.

Real zones, real processes, the real monotonic clock at speed 1000 (a real
millisecond is an emulated second), so every wait below is milliseconds.
Margins: an assertion that time *stood* compares exact values (a frozen or
held clock returns the same float); one that time *moved on* only needs it
to be larger.
"""

import math
import os
import time

import posix_ipc
import pytest

from emulator.runtime import names
from emulator.runtime.clock import (RunClock, hold_for_kill, holding_for, release_slot, stop_holding,
                                    tolerance_ms)
from emulator.runtime.zone import Zone
from tests.helpers import tie_to_parent

pytestmark = pytest.mark.timeout(60)
SPEED = 1000.0


@pytest.fixture
def zone():
    rid = names.new_run_id()
    z = Zone(rid, create={"supervisor_pid": os.getpid(), "supervisor_ctime": 0.0, "speed": SPEED,
                          "total_pages": 100, "scenario": "s", "policy": "p", "tasks": [0, 0]})
    yield z
    z.close()
    try:
        posix_ipc.unlink_shared_memory(names.zone(rid))
    except posix_ipc.ExistentialError:
        pass


def started(z):
    """Time 0 now, and both tasks at the start line: the clock runs."""
    z.set_t0(time.monotonic())
    for slot in (0, 1):
        RunClock(z, slot).thaw_start()
    return RunClock(z, 0), RunClock(z, 1), RunClock(z, z.supervisor_slot)


def wait_real(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.0005)


def test_time_0_is_when_the_last_task_reaches_the_start_line(zone):
    zone.set_t0(time.monotonic())
    a, b = RunClock(zone, 0), RunClock(zone, 1)
    time.sleep(0.01)                                     # 10 emulated seconds, if it ran
    assert a.now() == 0.0
    a.thaw_start()
    time.sleep(0.01)
    assert a.now() == 0.0                                # task 1 is not there yet
    b.thaw_start()
    wait_real(lambda: a.now() > 1.0)
    assert b.now() > 1.0


def test_a_freeze_stops_the_clock_for_every_process_and_it_goes_on_from_where_it_stood(zone):
    a, b, _ = started(zone)
    wait_real(lambda: a.now() > 1.0)
    with a.frozen():
        stood = b.now()
        time.sleep(0.02)                                 # 20 emulated seconds of real work
        assert b.now() == stood and a.now() == stood
        with b.frozen():                                 # another slot's freeze nests with ours
            pass
        assert b.now() == stood
    after = b.now()
    assert stood <= after < stood + 15                   # went on from there: not 20 s later
    wait_real(lambda: b.now() > after)


def test_the_clock_holds_at_a_due_time_until_the_sleeper_is_up(zone):
    a, b, sup = started(zone)
    due = a.now() + 5.0                                  # 5 ms of real time from now
    woke = []

    def late_sleeper(real_s):
        time.sleep(real_s + 0.03)                        # a busy machine: 30 emulated s late
        woke.append(b.now())

    a.sleep_until(due, late_sleeper)
    assert a.now() == due and b.now() == due             # stood at the due for everyone
    assert woke == [due]
    assert holding_for(zone) == [0] and a.held_since() > 0
    time.sleep(0.005)
    assert b.now() == due                                # ... until we have acted
    a.let_go()
    resumed = b.now()
    assert due <= resumed < due + 10                     # on from the due, not from real time
    total, longest = zone.held()
    assert longest >= 0.02 and total >= longest          # what the holding cost, in real seconds


def test_a_due_already_past_does_not_turn_the_clock_back(zone):
    a, b, _ = started(zone)
    wait_real(lambda: a.now() > 2.0)
    a.sleep_until(1.0, time.sleep)                       # a sleep that is over before it starts
    assert b.now() > 2.0
    assert a.hold(1.0) > 2.0 and b.now() > 2.0           # nor does a hold in the past
    a.let_go()
    assert zone.min_due == math.inf


def test_a_task_that_runs_holds_the_clock_at_its_time_until_it_waits(zone):
    a, b, _ = started(zone)
    at = a.hold(a.now() + 1.0)                           # a task's plan: 1 ms of real time ahead
    time.sleep(0.02)                                     # its real work takes 20 emulated s
    assert b.now() == at                                 # ... and takes no emulated time
    a.sleep_until(at + 2.0, time.sleep)                  # it sleeps: the clock runs to its due ...
    assert b.now() == at + 2.0                           # ... and holds there: it is up, acting
    a.let_go()                                           # it blocks on another process
    wait_real(lambda: b.now() > at + 2.0)


def test_a_kill_holds_the_clock_for_a_killable_sleeper_only(zone):
    a, b, sup = started(zone)
    running = a.hold(a.now())                            # task 0 runs: its own hold is all there is
    with a.frozen():                                     # the OOM call: the clock stands at the kill
        kill_at = sup.now()
        hold_for_kill(zone, 0, kill_at)
        assert zone.min_due == running
    a.let_go()
    kill_at = []

    class Killed(Exception):
        pass

    def woken_by_the_kill(real_s):              # task 1 sleeps killably, 60 s ahead; it is killed
        with a.frozen():                        # the OOM call: the clock stands at the kill
            kill_at.append(sup.now())
            hold_for_kill(zone, 1, kill_at[0])
        time.sleep(0.02)                        # the signal takes 20 emulated s to wake it
        assert a.now() == kill_at[0]            # held at the kill
        raise Killed

    with pytest.raises(Killed):
        b.sleep_until(b.now() + 60.0, woken_by_the_kill, killable=True)
    assert a.now() == kill_at[0]
    assert b.hold(kill_at[0]) == kill_at[0]     # up: its exit starts at the kill
    assert a.now() == kill_at[0]
    b.let_go()
    wait_real(lambda: a.now() > kill_at[0])


def test_moving_a_hold_never_lets_the_clock_run_past_it(zone):
    """A task that moves its hold (to sleep, or to say where it stands) must not lift the
    cap for an instant: another process reading the clock then would see the future."""
    a, b, _ = started(zone)
    parent = os.getpid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                 # a reader of the clock, as every task is
        try:
            tie_to_parent(parent, 9)
            os.close(r)
            reader = RunClock(Zone(zone.run_id), 1)
            worst, end = 0.0, time.monotonic() + 1.0
            while time.monotonic() < end:
                cap = reader.zone.min_due
                now = reader.now()
                if cap != math.inf and now > cap + 1e-9 and reader.zone.min_due == cap:
                    worst = max(worst, now - cap)
            os.write(w, repr(worst).encode())
        finally:
            os._exit(0)
    os.close(w)
    at = a.hold(a.now())
    end = time.monotonic() + 1.0
    while time.monotonic() < end:                # re-hold at the same time, over and over
        at = a.hold(at)
    worst = float(os.read(r, 64).decode())
    os.close(r)
    os.waitpid(pid, 0)
    a.let_go()
    assert worst == 0.0, f"the clock ran {worst} emulated s past a hold"


def test_a_dead_or_stopped_slot_gives_back_its_freezes_and_its_due(zone):
    a, b, sup = started(zone)
    r, w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:                                         # a task that freezes, says so, and dies
        try:
            tie_to_parent(parent, 9)
            os.close(r)
            child = RunClock(Zone(zone.run_id), 1)
            with child.frozen():
                os.write(w, b"x")
                time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    stood = a.now()
    time.sleep(0.01)
    assert a.now() == stood                              # its freeze stops us too
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert a.now() == stood                              # a dead process's freeze stays ...
    release_slot(zone, 1)                                # ... until the supervisor gives it back
    wait_real(lambda: a.now() > stood)


def test_the_clock_stops_waiting_for_a_sleeper_that_does_not_wake(zone):
    a, b, sup = started(zone)
    due = a.now() + 1.0
    a.sleep_until(due, lambda real_s: (time.sleep(real_s + 0.02), stop_holding(zone, 0, due)))
    assert b.now() > due                                 # the watchdog let it go: the clock ran on
    assert zone.min_due == math.inf
    assert not stop_holding(zone, 0, due)                # only the due it was late for


def test_tolerance_is_5_ms_emulated_or_2_ms_real_whichever_is_larger():
    assert tolerance_ms(1.0) == pytest.approx(5.0)
    assert tolerance_ms(2.5) == pytest.approx(2.0)
    assert tolerance_ms(10.0) == pytest.approx(2.0)
