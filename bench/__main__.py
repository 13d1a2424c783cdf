"""Benchmarks: figures, not assertions. ``make bench`` prints them.

    python -m bench [--quick]

1. Deadline lateness: how late, past its stated time, the reaper gives up on
   an mm (timeout policy: the per-mm 10 s deadline; v4.17: 10 tries x 100 ms),
   in emulated milliseconds, at several speeds, on an idle and a busy machine.
   The run clock waits for a late sleeper (emulator/runtime/clock.py), so its
   floor is 0; beside it, what that waiting cost in real time (held_ms: in
   all, and the longest hold) and the worst lag the clock did not absorb.
2. Start-up cost: wall time from Run() to verdict for a run whose tasks do
   nothing, by number of tasks (each task is a real Python process).
"""

from __future__ import annotations

import argparse
import statistics
import time

import emulator
from emulator.scenario import parse_scenario
from tests.helpers import CpuBurner


def lateness(policy: str, scenario: str, patience: float, speed: float, runs: int):
    """Emulated seconds between the kill + patience and the reaper's give-up; and per run,
    the real seconds the clock held in all, its longest hold, and its lag."""
    s = emulator.load_scenario(scenario)
    out, held, longest, lag = [], [], [], []
    for _ in range(runs):
        r = emulator.run_scenario(s, policy=policy, speed=speed)
        first = r.victims[0]
        gave_up = first.oom_skip_at_s if first.unable_to_reap else None
        if gave_up is not None:
            out.append(gave_up - first.killed_at_s - patience)
        held.append(r.held_ms / 1000)
        longest.append(r.held_max_ms / 1000)
        lag.append(r.lag_ms / 1000)
    return out, held, longest, lag


def idle_run_seconds(tasks: int) -> float:
    s = parse_scenario({"memory_mb": 64 + tasks, "task": [{"name": "t", "count": tasks,
                        "vma": [{"kind": "anon", "mb": 1}]}, {"name": "stepper",
                        "step": [{"op": "sleep", "ms": 10}]}]}, source="<bench>")
    t = time.monotonic()
    emulator.run_scenario(s, policy="timeout", speed=10)
    return time.monotonic() - t


def fmt(xs: list[float], scale: float) -> str:
    if not xs:
        return "no give-ups measured"
    xs = [x * scale for x in xs]
    return (f"median {statistics.median(xs):7.2f}  max {max(xs):7.2f}  min {min(xs):7.2f}  "
            f"(n={len(xs)})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--quick", action="store_true", help="fewer runs")
    a = p.parse_args(argv)
    runs = 2 if a.quick else 5
    print("1. How late the reaper gives up, past its stated time (ms)")
    for load in (False, True):
        for policy, scenario, patience in (("v4.17", "mmap_sem_held", 1.0), ("timeout", "livelock", 10.0)):
            for speed in (1, 10):
                if policy == "timeout" and speed == 1 and a.quick:
                    continue
                if load:
                    with CpuBurner():
                        xs, held, longest, lag = lateness(policy, scenario, patience, speed, runs)
                else:
                    xs, held, longest, lag = lateness(policy, scenario, patience, speed, runs)
                where = "both cores busy" if load else "idle machine   "
                blank = f"   {'':8} {'':14} {'':8}  {'':15}"
                print(f"   {policy:8} {scenario:14} speed {speed:>2}  {where}  late (emulated, floor 0) {fmt(xs, 1000)}")
                print(f"{blank}  held in all (real)        {fmt(held, 1000)}")
                print(f"{blank}  longest hold (real)       {fmt(longest, 1000)}")
                print(f"{blank}  lag (real, tolerance {max(5 / speed, 2):g}) {fmt(lag, 1000)}")
    print("2. Wall time of a run whose tasks do nothing, by number of tasks (s)")
    for n in ((5, 25, 50) if a.quick else (5, 25, 50, 100, 200)):
        print(f"   {n:4} tasks: {idle_run_seconds(n):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
