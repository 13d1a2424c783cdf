"""Benchmarks: figures beside their floors, not assertions. ``make bench`` prints them.

    python -m bench [--quick]

Every figure is printed beside its *floor*, what the operating system and
Python charge for the same thing at least (``bench.floors``), measured in
the same run on the same machine, and the ratio of the two; then issue 13's
target and whether the figure meets it. The machine's load is printed
first: on a shared machine, the figures move with it.

1. Start-up: N idle tasks (1 MB of anon memory each): tasks ready per second
   and real time to the verdict (RunResult.ready_real_s, .verdict_real_s).
   Floor: fork + exit + wait of a Python process, N times.
2. USS per idle task (psutil's ``memory_full_info().uss`` of every worker of
   a running run). Floor: a forked idle Python process's.
3. The OOM round trip with 1000 tasks, hundreds of kills: real time from an
   allocation's failed charge to its victim's signal (the ``oom_kill`` trace
   event's ``stall_monotonic`` and ``signal_monotonic``). Floor: a round trip
   between two processes over two POSIX semaphores.
4. The reaper with 256 victims queued (timeout policy; victims it cannot
   reap): how late, in real time, it acts past each reap deadline (the
   ``reap_deadline`` event's ``late_real_ms``), with the GIL switch interval a
   run sets and with Python's default. Floor: how late a timed wait on a
   POSIX semaphore returns.
5. The reaper's deadlines in emulated time: how late it gives up past its
   stated time (floor 0: the run clock waits for a late sleeper), and the
   real time that waiting cost.
6. The supervisor's PSI feed (emulator.runtime.stall): real time per task event
   (an OOM request with its planned stall, an allocation done, a sleep step)
   with 10 and 1000 tasks: the same with both, as the work per event must be.
   Floor: the bare PsiGroup calls of the same state changes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time

import psutil

import emulator
from emulator.runtime import supervisor
from emulator.runtime.supervisor import Run
from tests.helpers import CpuBurner

from . import floors, scenarios
from .stats import Dist, ratio, verdict

MIB = 1 << 20


def _header(quick: bool) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"oomemu {emulator.__version__} bench{' --quick' if quick else ''}: {os.cpu_count()} cores, "
          f"load average {load}; Python {platform.python_version()}, GIL switch interval "
          f"{sys.getswitchinterval() * 1000:g} ms (a run sets {supervisor.GIL_SWITCH_S * 1000:g} ms)")
    print("Each figure beside its floor, measured now on this machine, and figure/floor.\n")


# -- 1. start-up ----------------------------------------------------------------------------

def startup(counts: tuple[int, ...]) -> None:
    few = Dist(floors.fork_exit_wait(100))
    print("1. Start-up: N idle tasks of 1 MB anon each, real time (floor: N x fork+exit+wait of a Python "
          f"process, {few.median * 1000:.2f} ms each, median of {few.n})")
    print(f"   {'tasks':>5}  {'ready':>8} {'floor':>8} {'ratio':>6}  {'ready/s':>8} {'floor/s':>8}   "
          f"{'verdict':>8} {'floor':>8} {'ratio':>6}   {'wall':>7}  target")
    for n in counts:
        began = time.monotonic()
        r = emulator.run_scenario(scenarios.idle(n), policy="timeout", speed=10)
        wall = time.monotonic() - began
        floor = n * few.median
        ready, done = r.ready_real_s, r.verdict_real_s
        if ready is None or done is None:
            print(f"   {n:5}  the run broke: {r.error}")
            continue
        target = ""
        if n == 1000:
            target = f"ready < 2 s {verdict(ready < 2)}, verdict < 4 s {verdict(done < 4)}"
        print(f"   {n:5}  {ready:7.2f}s {floor:7.2f}s {ratio(ready, floor)}  {n / ready:8.0f} {n / floor:8.0f}   "
              f"{done:7.2f}s {floor:7.2f}s {ratio(done, floor)}   {wall:6.2f}s  {target}")
    print("   (ready: Run.execute to every task faulted in and ready; verdict: to the run's verdict; wall: "
          "run_scenario, its teardown included)")


# -- 2. USS ---------------------------------------------------------------------------------

def uss(n: int) -> None:
    seen: list[int] = []

    def measure(run) -> None:
        for t in run.tasks:
            try:
                seen.append(psutil.Process(t.pid).memory_full_info().uss)
            except psutil.Error:
                pass

    Run(scenarios.idle(n), policy="timeout", speed=10, on_start=measure).execute()
    floor = floors.forked_idle_uss()
    d = Dist([x / MIB for x in seen])
    print(f"\n2. USS per idle task (1 MB anon each; every worker of a running run of {n}): "
          f"median {d.median:.2f} MiB, max {d.max:.2f} (n={d.n}); floor (a forked idle Python process) "
          f"{floor / MIB:.2f} MiB; ratio {ratio(d.median, floor / MIB).strip()}; "
          f"target <= 4 MiB {verdict(d.median <= 4)}")


# -- 3. the OOM round trip -------------------------------------------------------------------

def oom_round_trip(tasks: int, kills: int) -> None:
    run = Run(scenarios.oom_storm(tasks, kills), policy="v6.6", speed=10)
    r = run.execute()
    rt = Dist([(e["signal_monotonic"] - e["stall_monotonic"]) * 1000 for e in run.tracer.events
               if e["ev"] == "oom_kill" and e.get("stall_monotonic") and e.get("signal_monotonic")])
    pp = Dist([x * 1000 for x in floors.sem_ping_pong(2000)])
    print(f"\n3. OOM round trip with {tasks} tasks ({tasks - 1} idle, an allocator that needs {kills} kills; "
          f"v6.6, speed 10; {r.kills} kills, verdict {r.verdict}):")
    print("   allocation stall (failed charge) to victim signalled, real ms; floor: a POSIX semaphore "
          "ping-pong between two processes")
    print(f"   median {rt.median:7.3f}  floor {pp.median:7.3f}  ratio {ratio(rt.median, pp.median)}   "
          f"target <= 1 ms {verdict(rt.median <= 1)}")
    print(f"   p99    {rt.p99:7.3f}  floor {pp.p99:7.3f}  ratio {ratio(rt.p99, pp.p99)}   "
          f"target <= 5 ms {verdict(rt.p99 <= 5)}   (max {rt.max:.3f}, n={rt.n})")


# -- 4. the reaper's real lateness, many victims queued ----------------------------------------

def reaper_lateness(victims: int, retrying: tuple[int, ...]) -> None:
    timed = Dist([x * 1000 for x in floors.timed_wait_lateness(500)])
    groups = min(victims, len(scenarios.reaper_queue(victims, 10, 1500).memcgs))
    print(f"\n4. The reaper past its deadlines, {victims} victims queued at once (timeout, reap_timeout_s=1, "
          f"speed 1): {groups} memcgs with memory.oom.group OOM 10 ms apart, each kills its group (tasks in "
          f"D state with a blockable mmu notifier, which the reaper cannot reap) and, but where it retries, "
          f"its allocator")
    print(f"   real ms past each deadline; floor: a timed POSIX semaphore wait returns "
          f"median {timed.median:.3f}, p99 {timed.p99:.3f} ms late (n={timed.n}); target p99 <= 2 ms")
    run_switch = supervisor.GIL_SWITCH_S
    for busy in retrying:
        for switch in (run_switch, sys.getswitchinterval()):
            supervisor.GIL_SWITCH_S = switch
            try:
                run = Run(scenarios.reaper_queue(victims, 10, 1500, retrying=busy), policy="timeout", speed=1,
                          overrides={"reap_timeout_s": 1.0})
                r = run.execute()
            finally:
                supervisor.GIL_SWITCH_S = run_switch
            late = Dist([e["late_real_ms"] for e in run.tracer.events
                         if e["ev"] == "reap_deadline" and "late_real_ms" in e])
            main = f"{busy} allocators retrying" if busy else "main thread idle"
            what = "the run's" if switch == run_switch else "default"
            print(f"   {main:22}, GIL switch {switch * 1000:3g} ms ({what:9}): median {late.median:6.3f} "
                  f"{ratio(late.median, timed.median)}  p99 {late.p99:6.3f} {ratio(late.p99, timed.p99)}  "
                  f"max {late.max:7.3f} (n={late.n}){'  ' + verdict(late.p99 <= 2) if switch == run_switch else ''}"
                  f"{'' if r.verdict == 'resolved' else '  verdict ' + r.verdict}")


# -- 5. emulated lateness (the clock holds) --------------------------------------------------

def emulated_lateness(runs: int, loads: tuple[bool, ...]) -> None:
    print("\n5. How late the reaper gives up, past its stated time, in emulated ms (floor 0: the run clock "
          "waits for a late sleeper); what that waiting cost, in real ms")
    for load in loads:
        for policy, name, patience in (("v4.17", "mmap_sem_held", 1.0), ("timeout", "livelock", 10.0)):
            late, held, longest = [], [], []
            with (CpuBurner() if load else contextlib.nullcontext()):
                for _ in range(runs):
                    r = emulator.run_scenario(emulator.load_scenario(name), policy=policy, speed=10)
                    first = r.victims[0]
                    if first.unable_to_reap and first.oom_skip_at_s is not None:
                        late.append((first.oom_skip_at_s - first.killed_at_s - patience) * 1000)
                    held.append(r.held_ms)
                    longest.append(r.held_max_ms)
            late_d, held_d, long_d = Dist(late), Dist(held), Dist(longest)
            where = "both cores busy" if load else "idle machine"
            print(f"   {policy:8} {name:14} speed 10, {where:15}: late median {late_d.median:6.2f} "
                  f"max {late_d.max:6.2f} (n={late_d.n}); clock held {held_d.median:7.1f} in all, "
                  f"longest {long_d.max:6.1f}")


def psi_feed(events: int, counts: tuple[int, ...]) -> None:
    from emulator.kernel.psi import PsiGroup
    from emulator.runtime.protocol import Event
    from emulator.runtime.stall import Segment, StallAccounting
    print(f"\n6. PSI feed: real us per task event, {events} events (floor: the bare PsiGroup calls of the "
          "same state changes)")
    for n in counts:
        acct, psi = StallAccounting(4), PsiGroup(ncpus=4)
        for i in range(n):
            acct.start(i, 0.0)
            psi.wake(i, 0.0, cpu=i % 4)
        began = time.perf_counter()
        for k in range(events):
            at, i = k * 1e-4, k % n
            if k % 3 == 0:
                acct.on_event(i, Event.OOM, at)
                acct.plan(i, at, [Segment(at + 0.01, "writeback", asleep=True)])
            elif k % 3 == 1:
                acct.on_event(i, Event.ALLOC_OK, at)
            else:
                acct.on_event(i, Event.SLEEP, at, {"until": at + 0.05})
        feed = (time.perf_counter() - began) / events
        stalled: set[int] = set()
        began = time.perf_counter()
        for k in range(events):
            at, i = k * 1e-4, k % n
            if i in stalled:                           # the event ends the planned stall
                psi.memstall_leave(i, at)
                stalled.discard(i)
            if k % 3 == 0:
                psi.wake(i, at)
                psi.memstall_enter(i, at, "writeback")
                psi.sleep(i, at)
                stalled.add(i)
            elif k % 3 == 1:
                psi.wake(i, at)
            else:
                psi.sleep(i, at)
        bare = (time.perf_counter() - began) / events
        print(f"   {n:5} tasks  {feed * 1e6:6.1f} us  floor {bare * 1e6:6.1f} us  ratio {ratio(feed, bare)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="figures beside their floors")
    p.add_argument("--quick", action="store_true", help="smaller runs (no 1000-task ones), fewer repeats")
    a = p.parse_args(argv)
    _header(a.quick)
    startup((10, 100) if a.quick else (10, 100, 1000))
    uss(20 if a.quick else 100)
    if a.quick:
        oom_round_trip(200, 100)
    else:
        oom_round_trip(1000, 300)
    reaper_lateness(64 if a.quick else 256, (4,) if a.quick else (0, 8))
    emulated_lateness(1 if a.quick else 3, (False,) if a.quick else (False, True))
    psi_feed(30_000 if a.quick else 300_000, (10, 1000))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
