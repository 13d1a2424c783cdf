"""When a victim's own exit_mmap sets MMF_OOM_SKIP, under each policy (real runs, traced).

v4.17 sets it before munlock and unmap_vmas; v6.6 after unmap_vmas, before
free_pgtables; the timeout patch after free_pgtables; handover too, once it has
taken MMF_OOM_SKIP over from the reaper. The worker records each step of its
exit_mmap in order (unmapping and free_pgtables are D-state stretches, a
``task_state`` D then R each), so the place of ``oom_skip_set`` among them says
where it was set.

The victim has a blockable mmu notifier and mlocked memory, and each policy's
patience is stretched (``--set``) far past the victim's exit (0.3 s): the reaper
can never set MMF_OOM_SKIP first, so it is exit_mmap's to set under every policy.
"""

import json

import pytest

import emulator
from emulator.policies import get_policy
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
      mb = 20
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
      mb = 40
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
# nobody else to kill but itself
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
    """The victim's own exit_mmap events, in the order its worker sent them."""
    mine = [e for e in events if e["task"] == "victim" and e["ev"] in
            ("exit_mmap_start", "handover", "task_state", "oom_skip_set", "exit_mmap_done")]
    start = next(i for i, e in enumerate(mine) if e["ev"] == "exit_mmap_start")
    return mine[start:]


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
    assert get_policy(policy).exit_mmap_spec()["oom_skip"] == WHERE[policy]


@pytest.mark.parametrize("policy", list(EXIT_MMAP))
def test_the_oom_skip_set_event_says_where_exit_mmap_set_it(runs, policy):
    _, events = runs[policy]
    skip = next(e for e in events if e["ev"] == "oom_skip_set" and e["task"] == "victim")
    assert (skip["by"], skip.get("where")) == ("exit_mmap", WHERE[policy])
