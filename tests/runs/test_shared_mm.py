"""Shared mms with real processes (issue 11 part 4): a task with ``mm = "OTHER"`` is a
process of its own using OTHER's mm (CLONE_VM without CLONE_THREAD).

The OOM killer kills the chosen task and every process sharing its mm, as
__oom_kill_process does: one "Killed process" line, one kill. exit_mmap runs once,
in whichever user of the mm exits last, when it exits; a /proc reader's reference
(``mm_pin``) delays it, while the oom_reaper, which needs no reference, reaps.

Times are the run clock's (the tasks hold it at their plans), so a lower bound is
exact; an upper bound allows 0.5 s for the one thing the clock does not hold: the
exiting task waking from mmput when the last reference goes (a real wake-up, late
by what the machine's load makes it).
"""

import json

import pytest

import emulator
from tests.helpers import check_documented, write_scenario

pytestmark = pytest.mark.timeout(120)
WAKE_MARGIN_S = 0.5

SHARED = """
    memory_mb = 100
    [[task]]
    name = "owner"
    vma = [{{ kind = "anon", mb = 30 }}]
    step = [{{ op = "sleep", ms = 5000 }}]
    [[task]]
    name = "sharer"
    mm = "owner"
    step = [{{ op = "sleep", ms = 50 }}, {{ op = "alloc", mb = 10 }}, {{ op = "busy", ms = {busy} }}]
    [[task]]
    name = "hog"
    oom_score_adj = -1000
    step = [{{ op = "sleep", ms = 100 }}, {{ op = "alloc", mb = 70 }}]
"""


def events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def first(evs, ev, task=None):
    return next(e for e in evs if e["ev"] == ev and (task is None or e["task"] == task))


def run(tmp_path, text, policy="v6.6"):
    trace = tmp_path / "t.jsonl"
    r = emulator.run_scenario(write_scenario(tmp_path, text), policy=policy, speed=1, trace=str(trace))
    assert r.verdict == "resolved", r.summary()           # the accounting check held, too
    evs = events(trace)
    check_documented(evs)
    return r, evs


def test_one_kill_takes_every_process_of_the_mm_and_exit_mmap_follows_the_last(tmp_path):
    r, evs = run(tmp_path, SHARED.format(busy=600))
    # equal badness (one mm): for_each_process keeps the later, the sharer
    assert [v.name for v in r.victims] == ["sharer"] and r.kills == 1, r.summary()
    assert sum(" Killed process " in line for line in r.log) == 1
    kill = first(evs, "oom_kill")
    assert kill["anon_rss"] == 40 * 1024                   # the mm's: the owner's 30 MB + the sharer's 10
    also = first(evs, "mm_sharer_killed")
    assert (also["task"], also["victim"], also["t"]) == ("owner", "sharer", kill["t"])
    owner_exit = first(evs, "exited", "owner")
    assert owner_exit["t"] == pytest.approx(kill["t"])     # sleeping: it dies at the kill
    # the sharer was busy (D state) from 0.05 to 0.65 s: it is the last user, and its exit tears the mm down
    start = first(evs, "exit_mmap_start")
    assert start["task"] == "sharer" and start["victim"] is True
    assert 0.65 - 1e-6 <= start["t"] <= 0.65 + WAKE_MARGIN_S
    assert sum(e["ev"] == "exit_mmap_start" for e in evs) == 1
    assert r.victims[0].exit_freed_kb is not None


def test_two_processes_fault_into_one_mm_at_once(tmp_path):
    """Both allocate 30 MB at the same time into the mm's one anon VMA: each page is
    faulted once and counted once (the run's accounting check holds)."""
    r, evs = run(tmp_path, """
        memory_mb = 100
        [[task]]
        name = "owner"
        step = [{ op = "alloc", mb = 30 }, { op = "sleep", ms = 100 }, { op = "exit" }]
        [[task]]
        name = "sharer"
        mm = "owner"
        count = 2
        step = [{ op = "alloc", mb = 30 }, { op = "sleep", ms = 100 }, { op = "exit" }]
    """)
    assert r.kills == 0 and r.accounting["charged_pages"] == 0      # exited: all freed
    oks = [e for e in evs if e["ev"] == "alloc_ok"]
    assert len(oks) == 3 and all(e["pages"] == 30 * 256 for e in oks)
    done = first(evs, "exit_mmap_done")
    assert done["freed_kb"] == 90 * 1024                   # one mm, every page of the three


PINNED = """
    memory_mb = 100
    [[task]]
    name = "victim"
    vma = [{ kind = "anon", mb = 50 }, { kind = "file_shared", mb = 10 }]
    step = [{ op = "sleep", ms = 5000 }]
    [[task]]
    name = "reader"
    oom_score_adj = -1000
    step = [{ op = "sleep", ms = 50 }, { op = "mm_pin", task = "victim", ms = 1000 }]
    [[task]]
    name = "hog"
    oom_score_adj = -1000
    step = [{ op = "sleep", ms = 100 }, { op = "alloc", mb = 60 }]
"""


def test_mm_pin_delays_the_victims_exit_mmap_while_the_reaper_reaps(tmp_path):
    r, evs = run(tmp_path, PINNED, policy="v4.17")
    assert [v.name for v in r.victims] == ["victim"], r.summary()
    kill, unpin = first(evs, "oom_kill"), first(evs, "mm_unpin")
    assert first(evs, "mm_pin")["success"] is True and unpin["t"] == pytest.approx(1.05)
    assert first(evs, "mmput_wait", "victim")["t"] == pytest.approx(kill["t"])
    reaped = first(evs, "finish_task_reaping")
    assert reaped["t"] < unpin["t"] and reaped["freed_kb"] == 50 * 1024   # anon: the file page cache stays
    start = first(evs, "exit_mmap_start", "victim")
    assert unpin["t"] - 1e-6 <= start["t"] <= unpin["t"] + WAKE_MARGIN_S
