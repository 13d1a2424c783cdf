"""Real runs: real processes, real memory, real semaphores, at --speed 10.

Times are emulated seconds. A run at speed 10 that is late by 50 ms of real
time (a busy 2-core machine) is late by 0.5 emulated seconds, so the time
windows below are lower-bounded by what the kernel logic guarantees and
upper-bounded generously; the exact figures belong in benchmarks.
"""

import re

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
      ms = 50
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
      [[task.vma]]
      kind = "anon"
      mb = 5
      [[task.step]]
      op = "lock"
      name = "L"
      [[task.step]]
      op = "sleep"
      ms = 100
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
def test_mlocked_v417_kills_more_than_needed(tmp_path, case):
    r = run(scenario_for(tmp_path, MLOCKED, MLOCKED_CASES[case], "mlocked"), "v4.17")
    assert r.verdict == "panic" or r.extra_kills >= 1, r.summary()
    if r.verdict == "panic":
        assert r.log[-1].endswith("Kernel panic - not syncing: Out of memory and no killable processes...")


@pytest.mark.parametrize("case", MLOCKED_CASES)
def test_mlocked_timeout_waits_for_the_victim_to_exit(tmp_path, case):
    r = run(scenario_for(tmp_path, MLOCKED, MLOCKED_CASES[case], "mlocked"), "timeout")
    assert (r.verdict, r.kills, r.extra_kills) == ("resolved", 1, 0), r.summary()
    v = r.victims[0]
    assert v.oom_skip_by == "exit_mmap" and v.exit_freed_kb > 0 and not v.unable_to_reap
    assert_accounting(r)


@pytest.mark.parametrize("case", MMAP_SEM_CASES)
def test_mmap_sem_held_v417_gives_up_after_a_second_and_kills_again(tmp_path, case):
    r = run(scenario_for(tmp_path, MMAP_SEM_HELD, MMAP_SEM_CASES[case], "mmap_sem_held"), "v4.17")
    assert r.verdict == "resolved" and r.kills == 2, r.summary()
    first = r.victims[0]
    unable = [l for l in r.log if f"oom_reaper: unable to reap pid:{first.pid} ({first.name})" in l]
    assert len(unable) == 1
    gave_up_at = float(re.match(r"\[\s*([\d.]+)\]", unable[0]).group(1))
    assert 0.95 <= gave_up_at - first.killed_at_s <= 2.0          # 10 tries, HZ/10 apart
    assert r.victims[1].killed_at_s >= gave_up_at
    assert_accounting(r)


@pytest.mark.parametrize("case", MMAP_SEM_CASES)
def test_mmap_sem_held_timeout_kills_nobody_else(tmp_path, case):
    params = MMAP_SEM_CASES[case]
    hold_s = 3.0 if params is None else params["hold_ms"] / 1000
    r = run(scenario_for(tmp_path, MMAP_SEM_HELD, params, "mmap_sem_held"), "timeout")
    assert (r.verdict, r.kills) == ("resolved", 1), r.summary()
    assert not any("unable to reap" in l for l in r.log)
    assert hold_s <= r.resolved_at_s <= hold_s + 2.0                # soon after the hold ends
    assert r.victims[0].reaped_kb > 0 or r.victims[0].exit_freed_kb > 0
    assert_accounting(r)


@pytest.mark.parametrize("case", LIVELOCK_CASES)
@pytest.mark.parametrize("policy, patience", [("v4.17", 1.0), ("timeout", 10.0)])
def test_livelock_resolves_with_a_second_kill_after_the_reapers_patience(tmp_path, case, policy, patience):
    r = run(scenario_for(tmp_path, LIVELOCK, LIVELOCK_CASES[case], "livelock"), policy)
    assert (r.verdict, r.kills, r.extra_kills) == ("resolved", 2, 0), r.summary()
    first, second = kill_times(r)
    assert patience - 0.05 <= second - first <= patience + 1.5
    assert r.victims[0].unable_to_reap
    assert_accounting(r)


def test_result_fields_match_the_documented_json():
    r = run("mlocked", "timeout")
    d = r.to_dict()
    for key in ("scenario", "policy", "speed", "verdict", "kills", "min_kills", "extra_kills",
                "time_to_resolve_s", "victims", "log"):
        assert key in d
    assert set(d["victims"][0]) >= {"name", "pid", "killed_at_s", "reaped_kb", "exit_freed_kb",
                                    "oom_skip_at_s", "exited_at_s", "unable_to_reap"}
    assert d["time_to_resolve_s"] > 0 and d["speed"] == SPEED
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
