"""The two read-hold rows of the kernel crosscheck, as scenarios, under v6.6.

docs/kernel-crosscheck.md measured them on kernel 6.18: a victim
whose mmap_sem another task holds for read for 5 s is reaped 2 s after the
kill (1 kill); with a writer queued behind the reader, "unable to reap" comes
3 s after the kill and a second task dies. Times are the run's own records,
in emulated seconds. The run clock waits for the reaper's delay and tries
however late the machine wakes it (emulator/runtime/clock.py), so they are
the policy's to the jiffy: 50 ms of room is for floating point and a jiffy.
"""

import json
import os

import pytest

import emulator

pytestmark = pytest.mark.timeout(120)
SPEED = 4
HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scenarios")


def traced(tmp_path, name):
    path = tmp_path / f"{name}.jsonl"
    r = emulator.run_scenario(os.path.join(HERE, f"{name}.toml"), policy="v6.6", speed=SPEED, trace=str(path))
    return r, [json.loads(line) for line in path.read_text().splitlines()]


def at(events, ev, task, **fields):
    return [e for e in events if e["ev"] == ev and e["task"] == task
            and all(e.get(k) == v for k, v in fields.items())]


def test_a_read_hold_without_a_queued_writer_lets_the_reaper_reap_2s_after_the_kill(tmp_path):
    r, events = traced(tmp_path, "read_hold")
    # the victim leaves the task list while the reader holds its mm: the next OOM (a jiffy
    # later) kills the bystander, as Linux 6.18 does with a separate reader (host mode)
    assert (r.verdict, r.kills, [v.name for v in r.victims]) == ("resolved", 2, ["victim", "bystander"]), \
        r.summary()
    assert r.victims[1].killed_at_s - r.victims[0].killed_at_s < 0.05
    kill = r.victims[0].killed_at_s
    reaped = at(events, "finish_task_reaping", "victim")
    assert len(reaped) == 1 and reaped[0]["freed_kb"] == 100 * 1024
    assert reaped[0]["t"] - kill == pytest.approx(2.0, abs=0.05), (kill, reaped)
    assert any("] oom_reaper: reaped process " in line and "(victim), now anon-rss:0kB" in line
               for line in r.log), r.log
    assert not any("unable to reap" in line for line in r.log)
    # the reaper worked while the reader held it; the victim's exit waited for the reader
    released = at(events, "mmap_lock_released", "reader", mm="victim", write=False)[0]["t"]
    assert reaped[0]["t"] < released
    assert at(events, "mmput_wait", "victim")[0]["t"] < released <= at(events, "exit_mmap_start", "victim")[0]["t"]
    a = r.accounting
    assert a["charged_pages"] == a["rss_pages"] == a["segment_pages"], a


def test_a_read_hold_with_a_writer_queued_behind_it_makes_the_reaper_give_up_3s_after_the_kill(tmp_path):
    r, events = traced(tmp_path, "read_hold_writer_queued")
    assert (r.verdict, r.kills, [v.name for v in r.victims]) == ("resolved", 2, ["victim", "bystander"]), \
        r.summary()
    kill = r.victims[0].killed_at_s
    queued = at(events, "mmap_lock_start_locking", "writer", mm="victim", write=True)[0]["t"]
    tries = [e["t"] for e in at(events, "skip_task_reaping", "victim", reason="mmap_sem")]
    gave_up = at(events, "reap_deadline", "victim")
    assert queued < kill and len(tries) == 10 and tries[0] - kill >= 2.0 - 1e-9      # (floating point)
    assert len(gave_up) == 1 and gave_up[0]["t"] - kill == pytest.approx(3.0, abs=0.05), (kill, gave_up)
    assert any(line.endswith(f"] oom_reaper: unable to reap pid:{r.victims[0].pid} (victim)")
               for line in r.log), r.log
    # the queued writer stands for a thread of the victim's (mbind): the victim cannot finish
    # exiting, stays on the task list, and the OOM killer waits for it until MMF_OOM_SKIP
    assert r.victims[1].killed_at_s >= gave_up[0]["t"]
    # the writer got it once the reader let go, and the victim's exit came after both
    got = at(events, "mmap_lock_acquire_returned", "writer", mm="victim")[0]["t"]
    released = at(events, "mmap_lock_released", "reader", mm="victim")[0]["t"]
    assert released <= got <= at(events, "exit_mmap_start", "victim")[0]["t"]
    a = r.accounting
    assert a["charged_pages"] == a["rss_pages"] == a["segment_pages"], a
