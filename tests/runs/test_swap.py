"""A swap device in real runs: reclaim swaps anon pages out before any OOM, swapped
pages count in oom_badness (MM_SWAPENTS), go with their mm, and come back on a touch
(a swap-in: a memory stall). The accounting check of every run still holds: a swapped
page is neither charged, nor counted resident, nor held by the mm's segment; the zone's
swap_used is the sum of every mm's swap entries."""

import json

import pytest

import emulator
from tests.helpers import check_documented, write_scenario

pytestmark = pytest.mark.timeout(120)

# An idle app holds 60 MB of anon; the allocator needs 100 MB where 68 are free.
IDLE = """
    memory_mb = 128
    swap_mb = {swap_mb}
    swap_mb_per_s = 200
    [[task]]
    name = "app"
      [[task.vma]]
      kind = "anon"
      mb = 60
    [[task]]
    name = "allocator"
    oom_score_adj = -1000
      [[task.step]]
      op = "alloc"
      mb = 100
"""


def run(tmp_path, text, **kw):
    trace = tmp_path / "t.jsonl"
    r = emulator.run_scenario(write_scenario(tmp_path, text), policy="v6.6", speed=10, trace=str(trace), **kw)
    assert r.error is None, r.error
    a = r.accounting
    assert a["charged_pages"] == a["rss_pages"] == a["segment_pages"], a
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    check_documented(events)
    return r, events


def test_reclaim_swaps_an_idle_tasks_anon_out_instead_of_killing_it(tmp_path):
    r, events = run(tmp_path, IDLE.format(swap_mb=64))
    assert (r.verdict, r.kills) == ("resolved", 0)
    out = [e for e in events if e["ev"] == "swap_out"]
    assert out and {e["task"] for e in out} == {"app"}, out
    swapped = sum(e["nr_pages"] for e in out)
    assert 32 * 256 <= swapped <= 34 * 256, swapped        # what did not fit, about a MB at a time
    assert r.accounting["swap_pages"] == swapped
    assert any("(allocator) direct reclaim" in line and "swapped out" in line for line in r.log), r.log


def test_without_swap_the_same_story_is_an_oom_kill(tmp_path):
    r, events = run(tmp_path, IDLE.format(swap_mb=0))
    assert (r.verdict, r.kills) == ("resolved", 1)
    assert not [e for e in events if e["ev"] == "swap_out"]


# The swap is too small: once full, the OOM killer must choose between "app" (20 MB left
# resident, 40 MB on swap: 60 MB of badness) and "big" (50 MB resident).
FULL = """
    memory_mb = 128
    swap_mb = 40
    [[task]]
    name = "app"
      [[task.vma]]
      kind = "anon"
      mb = 60
    [[task]]
    name = "big"
      [[task.vma]]
      kind = "anon"
      mb = 50
      [[task.step]]
      op = "sleep"
      ms = 100000
    [[task]]
    name = "allocator"
    oom_score_adj = -1000
      [[task.step]]
      op = "alloc"
      mb = 60
"""


def test_swapped_pages_count_in_oom_badness_and_go_with_their_mm(tmp_path):
    r, events = run(tmp_path, FULL)
    assert r.victims[0].name == "app", [v.name for v in r.victims]
    kill = next(e for e in events if e["ev"] == "oom_kill")
    assert kill["task"] == "app" and kill["points"] >= 60 * 256 - 256, kill
    assert r.accounting["swap_pages"] == 0, "its exit freed its swap entries"


TOUCH = """
    memory_mb = 128
    swap_mb = 64
    swap_mb_per_s = 100
    [[task]]
    name = "app"
      [[task.vma]]
      kind = "anon"
      mb = 60
      [[task.step]]
      op = "sleep"
      ms = 1000
      [[task.step]]
      op = "touch"
      vma = "anon"
    [[task]]
    name = "allocator"
    oom_score_adj = -1000
      [[task.step]]
      op = "alloc"
      mb = 90
"""


def test_a_touch_swaps_pages_back_in_and_stalls_for_it(tmp_path):
    """The app sleeps while the allocator's reclaim swaps 30 MB of it out, then touches
    all of its memory: it swaps back in what fits (the allocator, idle by then, is
    swapped out in turn), each MB costing 1/swap_mb_per_s."""
    r, events = run(tmp_path, TOUCH)
    assert (r.verdict, r.kills) == ("resolved", 0)
    ins = [e for e in events if e["ev"] == "swap_in"]
    assert ins and all(e["task"] == "app" for e in ins), ins
    back = sum(e["nr_pages"] for e in ins)
    assert back >= 20 * 256, ins
    for e in ins:
        assert e["usec_delayed"] >= round(e["nr_pages"] / 256 * 10_000) - 1, e
    out = [e for e in events if e["ev"] == "swap_out"]
    assert {e["task"] for e in out} == {"app", "allocator"}, out
