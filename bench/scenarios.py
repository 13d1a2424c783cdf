"""The scenarios the benchmarks run, built in memory at the size asked for."""

from __future__ import annotations

from emulator.kernel.mm_types import MAX_MEMCGS
from emulator.scenario import Scenario, parse_scenario

IDLE_MB = 1                      # each idle task's anon memory


def idle(tasks: int) -> Scenario:
    """``tasks`` tasks that do nothing, each with IDLE_MB of anon memory: the run is ready,
    resolves at once (nobody has a step) and is torn down."""
    return parse_scenario({"name": f"idle_{tasks}", "memory_mb": 64 + tasks * IDLE_MB,
                           "task": [{"name": "idle", "count": tasks, "vma": [{"kind": "anon", "mb": IDLE_MB}]}]},
                          source="<bench>")


def oom_storm(tasks: int, kills: int) -> Scenario:
    """``tasks - 1`` idle tasks of IDLE_MB each fill the zone; an allocator the OOM killer
    never chooses (oom_score_adj -1000) then needs ``kills`` MB more than is free: every MB
    of it takes one OOM kill, each after a full select_bad_process over every task."""
    if not 0 < kills < tasks:
        raise ValueError("kills must be between 0 and the number of idle tasks")
    free_mb = 8
    return parse_scenario({
        "name": f"oom_storm_{tasks}", "min_kills": kills, "memory_mb": (tasks - 1) * IDLE_MB + free_mb, "run_deadline_s": 600,
        "task": [{"name": "idle", "count": tasks - 1, "vma": [{"kind": "anon", "mb": IDLE_MB}]},
                 {"name": "allocator", "oom_score_adj": -1000,
                  "step": [{"op": "alloc", "mb": free_mb + kills * IDLE_MB}]}]}, source="<bench>")


def reaper_queue(victims: int, gap_ms: float, busy_ms: float, retrying: int = 0) -> Scenario:
    """``victims`` tasks the reaper cannot reap (a blockable mmu notifier, in D state for
    ``busy_ms`` from time 0), spread over as many memory cgroups as a run has (each with
    memory.oom.group set), with one allocator each. Memcg k's allocator goes over its limit
    at k * ``gap_ms``: its OOM kills the whole group. So every victim is queued on the
    reaper at once, each group's under one deadline (the kill + reap_timeout_s), the
    groups' ``gap_ms`` apart. The allocators of the first ``retrying`` memcgs are at
    oom_score_adj -1000 (the group kill spares them): they retry their charge every jiffy
    until the group's memory is free, keeping the supervisor busy meanwhile; the others die
    with their group."""
    groups = min(MAX_MEMCGS - 1, victims)
    memcgs, tasks = [], []
    for k in range(groups):
        hogs = victims // groups + (k < victims % groups)
        name = f"g{k}"
        memcgs.append({"name": name, "limit_mb": hogs * 2 + 1, "oom_group": True})
        tasks.append({"name": f"hog{k}", "count": hogs, "memcg": name, "mmu_notifier": "blockable",
                      "vma": [{"kind": "anon", "mb": 2}], "step": [{"op": "busy", "ms": busy_ms}]})
        tasks.append({"name": f"alloc{k}", "memcg": name, "oom_score_adj": -1000 if k < retrying else 0,
                      "step": [{"op": "sleep", "ms": 1 + k * gap_ms}, {"op": "alloc", "mb": 2}]})
    return parse_scenario({"name": f"reaper_queue_{victims}", "memory_mb": 64 + victims * 2 + groups * 3,
                           "min_kills": victims + groups - min(retrying, groups),
                           "run_deadline_s": 600, "memcg": memcgs, "task": tasks}, source="<bench>")
