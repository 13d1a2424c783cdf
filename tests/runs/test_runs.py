"""Real runs: real processes, real memory, real semaphores, at --speed 10.

Times are emulated seconds. The run clock waits for a task that is late
(emulator/runtime/clock.py), so a busy machine makes a run slower, not later;
what still follows real time (a task woken by another, the supervisor's news
of an exit) can be a few ms of real time late, tens of emulated ms at speed 10.
So a time is compared with another time the run recorded itself (trace events
carry the time each was recorded, in the process where it happened), and a
claim such as "after the hold ended" or "before the deadline" is checked
against the run's own record of that moment. Where a bound on lateness is
asserted, its margin is stated; the exact figures belong in benchmarks (make
bench).
"""

import json
import re
import statistics

import pytest

import emulator
from emulator.scenario import load_scenario
from tests.helpers import write_scenario

pytestmark = pytest.mark.timeout(120)
SPEED = 10


def run(scenario, policy, **kw):
    if isinstance(scenario, str) and not scenario.endswith(".toml"):
        scenario = load_scenario(scenario)
    return emulator.run_scenario(scenario, policy=policy, speed=SPEED, **kw)


def traced(tmp_path, scenario, policy, **kw):
    """A run and its trace events."""
    path = tmp_path / f"trace-{policy}.jsonl"
    r = run(scenario, policy, trace=str(path), **kw)
    return r, [json.loads(line) for line in path.read_text().splitlines()]


def hold_ended_at(events, task):
    """When the task's busy step (D state) ended, as its worker recorded it."""
    return next(e["t"] for e in events if e["ev"] == "task_state" and e["task"] == task and e["state"] == "R")


def freed_at(events, task):
    """When the task's memory came back: a reap that freed something, or its exit_mmap done."""
    return min(e["t"] for e in events if e["task"] == task and (
        (e["ev"] == "finish_task_reaping" and e["freed_kb"] > 0) or e["ev"] == "exit_mmap_done"))


def assert_gave_up_after_ten_tries(events, victim):
    """v4.17: MAX_OOM_REAP_RETRIES (10) failed trylocks at least HZ/10 apart, then
    'unable to reap' no sooner than HZ/10 after the last. The median gap is at most
    0.2 s: twice the interval, so that a few late wake-ups on a busy machine pass
    but a wrong interval does not. Returns when the reaper gave up."""
    tries = [e["t"] for e in events if e["ev"] == "skip_task_reaping" and e["task"] == victim]
    gave_up = [e for e in events if e["ev"] == "reap_deadline" and e["task"] == victim]
    assert len(tries) == 10 and len(gave_up) == 1, (tries, gave_up)
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert min(gaps) >= 0.1 - 1e-3 and statistics.median(gaps) <= 0.2, gaps
    assert gave_up[0]["t"] - tries[-1] >= 0.1 - 1e-3 and gave_up[0]["reason"] == "MAX_OOM_REAP_RETRIES"
    return gave_up[0]["t"]


def kill_times(r):
    return [v.killed_at_s for v in r.victims]


def assert_accounting(r):
    """pages charged == sum of resident pages over live mms == what the segments hold."""
    a = r.accounting
    assert a is not None, "a resolved run ends quiet and checks its accounting"
    assert a["charged_pages"] == a["rss_pages"] == a["segment_pages"], a


# -- the scenario files, with sizes as parameters (issue: "other sizes and counts") --

MLOCKED = """
    memory_mb = {zone}
    min_kills = 1
    [[task]]
    name = "locked"
    count = {n}
    exit_unmap_ms_per_mb = {unmap}
      [[task.vma]]
      kind = "anon"
      mb = {locked}
      mlocked = true
    [[task]]
    name = "antagonist"
    oom_score_adj = -1000
      [[task.vma]]
      kind = "anon"
      mb = 20
      [[task.step]]
      op = "sleep"
      ms = 100
      [[task.step]]
      op = "alloc"
      mb = {alloc}
"""

MMAP_SEM_HELD = """
    memory_mb = {zone}
    min_kills = 1
    [[task]]
    name = "holder"
      [[task.vma]]
      kind = "anon"
      mb = {holder}
      [[task.step]]
      op = "mmap_sem_down"
      [[task.step]]
      op = "busy"
      ms = {hold_ms}
      [[task.step]]
      op = "mmap_sem_up"
    [[task]]
    name = "bystander"
    count = {bystanders}
      [[task.vma]]
      kind = "anon"
      mb = {bystander}
    [[task]]
    name = "allocator"
    oom_score_adj = -1000        # spared: it holds most of its request when the OOM comes
      [[task.vma]]
      kind = "anon"
      mb = 5
      [[task.step]]
      op = "sleep"
      ms = 100
      [[task.step]]
      op = "alloc"
      mb = {alloc}
"""

# As the built-in livelock: the allocator takes L at once, the holder wants it at 0.3 s
# (30 ms of real time later), the allocator allocates at 1 s, with the holder in D state on L.
LIVELOCK = """
    memory_mb = {zone}
    min_kills = 2
    [[task]]
    name = "holder"
      [[task.vma]]
      kind = "anon"
      mb = {holder}
      [[task.step]]
      op = "mmap_sem_down"
      [[task.step]]
      op = "sleep"
      ms = 300
      [[task.step]]
      op = "lock"
      name = "L"
    [[task]]
    name = "bystander"
      [[task.vma]]
      kind = "anon"
      mb = {bystander}
    [[task]]
    name = "allocator"
    oom_score_adj = -1000        # spared: it holds most of its request when the OOM comes
      [[task.vma]]
      kind = "anon"
      mb = 5
      [[task.step]]
      op = "lock"
      name = "L"
      [[task.step]]
      op = "sleep"
      ms = 1000
      [[task.step]]
      op = "alloc"
      mb = {alloc}
      [[task.step]]
      op = "unlock"
      name = "L"
"""

MLOCKED_CASES = {
    "builtin": None,
    "2x40MB": dict(zone=128, n=2, locked=40, unmap=25, alloc=50),
    "5x30MB": dict(zone=256, n=5, locked=30, unmap=30, alloc=100),
}
MMAP_SEM_CASES = {
    "builtin": None,
    "2s-hold": dict(zone=128, holder=50, bystander=30, bystanders=1, hold_ms=2000, alloc=70),
    "4s-hold-3-bystanders": dict(zone=256, holder=80, bystander=40, bystanders=3, hold_ms=4000, alloc=80),
}
LIVELOCK_CASES = {
    "builtin": None,
    "small": dict(zone=160, holder=80, bystander=40, alloc=60),
}


def scenario_for(tmp_path, template, params, builtin):
    return builtin if params is None else write_scenario(tmp_path, template.format(**params))


@pytest.mark.parametrize("case", MLOCKED_CASES)
def test_mlocked_v417_kills_every_locked_task_then_panics(tmp_path, case):
    params = MLOCKED_CASES[case]
    r = run(scenario_for(tmp_path, MLOCKED, params, "mlocked"), "v4.17")
    n = 3 if params is None else params["n"]
    assert (r.verdict, r.kills) == ("panic", n), r.summary()
    assert sorted(v.name for v in r.victims) == [f"locked-{i}" for i in range(n)]
    assert r.log[-1].endswith("Kernel panic - not syncing: Out of memory and no killable processes...")


@pytest.mark.parametrize("case", MLOCKED_CASES)
def test_mlocked_timeout_waits_for_the_victim_to_exit(tmp_path, case):
    r = run(scenario_for(tmp_path, MLOCKED, MLOCKED_CASES[case], "mlocked"), "timeout")
    assert (r.verdict, r.kills, r.extra_kills) == ("resolved", 1, 0), r.summary()
    v = r.victims[0]
    locked_mb = 60 if MLOCKED_CASES[case] is None else MLOCKED_CASES[case]["locked"]
    # the reaper frees nothing of VM_LOCKED memory: the exit frees all of it
    assert (v.oom_skip_by, v.reaped_kb, v.exit_freed_kb, v.unable_to_reap) == ("exit_mmap", 0, locked_mb * 1024, False)
    assert_accounting(r)


@pytest.mark.parametrize("case", MMAP_SEM_CASES)
def test_mmap_sem_held_v417_gives_up_after_a_second_and_kills_again(tmp_path, case):
    r, events = traced(tmp_path, scenario_for(tmp_path, MMAP_SEM_HELD, MMAP_SEM_CASES[case], "mmap_sem_held"),
                       "v4.17")
    assert (r.verdict, r.kills) == ("resolved", 2), r.summary()
    first = r.victims[0]
    assert first.name == "holder" and r.victims[1].name.startswith("bystander")
    unable = [l for l in r.log if f"oom_reaper: unable to reap pid:{first.pid} ({first.name})" in l]
    assert len(unable) == 1
    gave_up = assert_gave_up_after_ten_tries(events, "holder")
    # the second kill follows the give-up, while the holder still held its mmap_sem
    assert gave_up <= r.victims[1].killed_at_s < hold_ended_at(events, "holder")
    assert_accounting(r)


@pytest.mark.parametrize("case", MMAP_SEM_CASES)
def test_mmap_sem_held_timeout_kills_nobody_else(tmp_path, case):
    params = MMAP_SEM_CASES[case]
    hold_s = 3.0 if params is None else params["hold_ms"] / 1000
    holder_mb = 100 if params is None else params["holder"]
    r, events = traced(tmp_path, scenario_for(tmp_path, MMAP_SEM_HELD, params, "mmap_sem_held"), "timeout")
    assert (r.verdict, r.kills) == ("resolved", 1), r.summary()
    assert not any("unable to reap" in l for l in r.log)
    victim = r.victims[0]
    # All from the run's own records: the hold (the busy step) lasted hold_s; the
    # memory came back only after it ended, and that resolved the run before the
    # victim's 10 s deadline could.
    hold_end = hold_ended_at(events, "holder")
    assert hold_end >= hold_s
    assert hold_end <= freed_at(events, "holder") <= r.resolved_at_s < victim.killed_at_s + 10.0
    assert victim.reaped_kb + victim.exit_freed_kb == holder_mb * 1024    # by the reaper or its exit
    assert_accounting(r)


@pytest.mark.parametrize("case", LIVELOCK_CASES)
@pytest.mark.parametrize("policy", ["v4.17", "timeout"])
def test_livelock_resolves_with_a_second_kill_after_the_reapers_patience(tmp_path, case, policy):
    r, events = traced(tmp_path, scenario_for(tmp_path, LIVELOCK, LIVELOCK_CASES[case], "livelock"), policy)
    assert (r.verdict, r.kills, r.extra_kills) == ("resolved", 2, 0), r.summary()
    assert [v.name for v in r.victims] == ["holder", "bystander"]
    first, second = kill_times(r)
    if policy == "v4.17":
        gave_up = assert_gave_up_after_ten_tries(events, "holder")
    else:
        # the deadline is one timer: 10 s after the kill, late by one wake-up at most
        # (1 s emulated is 100 ms of real time at speed 10, enough on a busy machine)
        gave_up = next(e["t"] for e in events if e["ev"] == "reap_deadline" and e["task"] == "holder")
        assert 10.0 <= gave_up - first <= 11.0
    assert gave_up <= second
    assert r.victims[0].unable_to_reap and not r.victims[1].unable_to_reap
    assert_accounting(r)


def test_result_fields_match_the_documented_json():
    r = run("mlocked", "timeout")
    d = r.to_dict()
    for key in ("scenario", "policy", "speed", "verdict", "kills", "min_kills", "extra_kills",
                "time_to_resolve_s", "victims", "log"):
        assert key in d
    assert set(d["victims"][0]) >= {"name", "pid", "killed_at_s", "reaped_kb", "exit_freed_kb",
                                    "oom_skip_at_s", "exited_at_s", "unable_to_reap"}
    assert d["speed"] == SPEED and (d["verdict"], d["kills"], d["extra_kills"]) == ("resolved", 1, 0)
    # from the first failed allocation to resolution, as the run recorded both
    assert d["time_to_resolve_s"] == pytest.approx(d["resolved_at_s"] - d["first_oom_at_s"], abs=2e-6)
    assert 0 < d["first_oom_at_s"] <= d["victims"][0]["killed_at_s"] <= d["resolved_at_s"]
    killed = [l for l in r.log if " Killed process " in l]
    assert re.fullmatch(r"\[\s*\d+\.\d{6}\] Killed process \d+ \(locked-\d\) total-vm:\d+kB, "
                        r"anon-rss:61440kB, file-rss:0kB, shmem-rss:0kB", killed[0])


def test_accounting_holds_with_page_tables_and_a_task_that_holds_its_own_mmap_sem(tmp_path):
    """A survivor with page tables; a task that allocates while holding its own mmap_sem."""
    path = write_scenario(tmp_path, """
        memory_mb = 64
        [[task]]
        name = "sparse"
        pgtables_mb = 8
          [[task.vma]]
          kind = "anon"
          mb = 4
        [[task]]
        name = "mapper"
          [[task.vma]]
          kind = "file_shared"
          mb = 2
          [[task.step]]
          op = "mmap_sem_down"
          [[task.step]]
          op = "alloc"
          mb = 6
          [[task.step]]
          op = "mmap_sem_up"
    """)
    r = run(path, "timeout")
    assert (r.verdict, r.kills) == ("resolved", 0), r.summary()
    assert_accounting(r)
    assert r.accounting["charged_pages"] == (8 + 4 + 2 + 6) * 256
