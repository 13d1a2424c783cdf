"""When a victim's own exit_mmap sets MMF_OOM_SKIP, under each policy (real runs, traced).

v4.17 sets it before munlock and unmap_vmas; v6.6 after unmap_vmas, before
free_pgtables; the timeout patch after free_pgtables; handover too, once it has
taken MMF_OOM_SKIP over from the reaper. The worker records each step of its
exit_mmap in order (unmapping and free_pgtables are D-state stretches, a
``task_state`` D then R each; waits for its own mmap_sem are left out), so the
place of ``oom_skip_set`` among them says where it was set.

The victim has a blockable mmu notifier and mlocked memory, and each policy's
patience is stretched (``--set``) far past the victim's exit (0.3 s): the reaper
can never set MMF_OOM_SKIP first, so it is exit_mmap's to set under every policy.
"""

import dataclasses
import json

import pytest

import emulator
from emulator.policies import POLICIES, V417, OomSkipAt, get_policy, register
from tests.helpers import write_scenario

pytestmark = pytest.mark.timeout(60)

SCENARIO = """
    memory_mb = 64
    min_kills = 1
    [[task]]
    name = "victim"
    mmu_notifier = "blockable"
    pgtables_mb = 4
    exit_unmap_ms_per_mb = 10
    exit_free_pgtables_ms = 100
      [[task.vma]]
      kind = "anon"
      mb = 30
      mlocked = true
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
      mb = 30
"""

# the reaper's patience, far past the victim's exit
PATIENCE = {"v4.17": {"blockable_notifier_sleep_s": 30}, "timeout": {},
            "handover": {"max_oom_reap_retries": 300}, "v6.6": {"oom_reaper_delay_s": 30}}

# the victim's exit_mmap, step by step: D/R around unmapping, then around free_pgtables
EXIT_MMAP = {
    "v4.17": ["exit_mmap_start", "oom_skip_set", "D", "R", "D", "R", "exit_mmap_done"],
    "v6.6": ["exit_mmap_start", "D", "R", "oom_skip_set", "D", "R", "exit_mmap_done"],
    "timeout": ["exit_mmap_start", "D", "R", "D", "R", "oom_skip_set", "exit_mmap_done"],
    "handover": ["exit_mmap_start", "handover", "D", "R", "D", "R", "oom_skip_set", "exit_mmap_done"],
}
# v4.17 hides the victim before its memory is unmapped: the allocator's next try finds
# nobody else to kill but itself (it has 25 of its 30 MB by then, charged page by page:
# 30 MB of rss against the victim's 34 with page tables, so the victim goes first)
KILLS = {"v4.17": ["victim", "allocator"], "v6.6": ["victim"], "timeout": ["victim"], "handover": ["victim"]}
WHERE = {"v4.17": "before_unmap", "v6.6": "after_unmap", "timeout": "after_free_pgtables",
         "handover": "after_free_pgtables"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("exit_mmap")
    path = write_scenario(d, SCENARIO, "exit_mmap")
    out = {}
    for policy in EXIT_MMAP:
        trace = d / f"{policy}.jsonl"
        r = emulator.run_scenario(path, policy=policy, speed=10, overrides=PATIENCE[policy], trace=str(trace))
        out[policy] = r, [json.loads(line) for line in trace.read_text().splitlines()]
    return out


def exit_steps(events):
    """The victim's own exit_mmap events, in the order its worker sent them. A wait for
    its mmap_sem (the reaper may hold it for read a moment) is D state too: those D/R,
    between an mmap_lock_start_locking and its mmap_lock_acquire_returned, are left out."""
    mine = [e for e in events if e["task"] == "victim" and e["ev"] in
            ("exit_mmap_start", "handover", "task_state", "oom_skip_set", "exit_mmap_done",
             "mmap_lock_start_locking", "mmap_lock_acquire_returned")]
    start = next(i for i, e in enumerate(mine) if e["ev"] == "exit_mmap_start")
    out, locking = [], False
    for e in mine[start:]:
        if e["ev"].startswith("mmap_lock_"):
            locking = e["ev"] == "mmap_lock_start_locking"
        elif not (locking and e["ev"] == "task_state"):
            out.append(e)
    return out


@pytest.mark.parametrize("policy", list(EXIT_MMAP))
def test_exit_mmap_sets_mmf_oom_skip_where_the_policy_says(runs, policy):
    r, events = runs[policy]
    assert r.verdict == "resolved" and [v.name for v in r.victims] == KILLS[policy], r.summary()
    assert r.victims[0].oom_skip_by == "exit_mmap" and not r.victims[0].unable_to_reap
    skips = [e for e in events if e["ev"] == "oom_skip_set" and e["task"] == "victim"]
    assert [e["by"] for e in skips] == ["exit_mmap"]
    steps = exit_steps(events)
    assert [e["state"] if e["ev"] == "task_state" else e["ev"] for e in steps] == EXIT_MMAP[policy]
    assert steps == sorted(steps, key=lambda e: e["t"])          # the worker's own clock agrees
    assert get_policy(policy).EXIT_MMAP.oom_skip.value == WHERE[policy]


@pytest.mark.parametrize("policy", list(EXIT_MMAP))
def test_the_oom_skip_set_event_says_where_exit_mmap_set_it(runs, policy):
    _, events = runs[policy]
    skip = next(e for e in events if e["ev"] == "oom_skip_set" and e["task"] == "victim")
    assert (skip["by"], skip.get("where")) == ("exit_mmap", WHERE[policy])


# -- a new policy is one class: no change to the worker or the runtime -------------------

class LateSkipV417(V417):
    """v4.17's reaper, with the 2018 timeout patch's exit_mmap rule: MMF_OOM_SKIP only once
    the page tables are freed. The whole policy is this class; nothing else changes."""
    name = "v4.17-late-skip"
    summary = "v4.17, but exit_mmap sets MMF_OOM_SKIP after free_pgtables"
    EXIT_MMAP = dataclasses.replace(V417.EXIT_MMAP, oom_skip=OomSkipAt.AFTER_FREE_PGTABLES)


@pytest.fixture
def late_skip():
    register(LateSkipV417)
    try:
        yield LateSkipV417.name
    finally:
        POLICIES.pop(LateSkipV417.name, None)


def test_a_policy_that_moves_mmf_oom_skip_takes_effect_in_a_real_run(tmp_path, late_skip):
    """Registered by name and run like a built-in one: the worker's exit_mmap sets
    MMF_OOM_SKIP where the new class says, so v4.17's second kill goes away."""
    trace = tmp_path / "late.jsonl"
    r = emulator.run_scenario(write_scenario(tmp_path, SCENARIO, "exit_mmap"), policy=late_skip, speed=10,
                              overrides=PATIENCE["v4.17"], trace=str(trace))
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert r.policy == late_skip and r.verdict == "resolved", r.summary()
    assert [v.name for v in r.victims] == ["victim"]              # v4.17 itself kills the allocator too
    skip = next(e for e in events if e["ev"] == "oom_skip_set" and e["task"] == "victim")
    assert (skip["by"], skip["where"]) == ("exit_mmap", "after_free_pgtables")
    assert [e["state"] if e["ev"] == "task_state" else e["ev"] for e in exit_steps(events)] == EXIT_MMAP["timeout"]
