"""A run's user space, for real: a daemon model in its own process kills through the
door (runtime/door.py), calls process_mrelease() in its own context, and the run
counts, logs and traces what it did; the OOM killer marks a task a user-space
killer is killing as its victim without a kill of its own (task_will_free_mem).

The daemons are scripted (tests/daemons.py): what they do and when is fixed, so
each assertion is about what the run made of it."""

import json

import pytest

import emulator
from emulator.policies import DAEMONS, register_daemon
from emulator.scenario import load_scenario
from tests.daemons import Broken, KillVictim, Scripted, TermAll, TermApp
from tests.helpers import check_documented, write_scenario

pytestmark = pytest.mark.timeout(120)
SPEED = 10
DAEMONS_HERE = (Scripted, TermAll, TermApp, KillVictim, Broken)


@pytest.fixture(autouse=True, scope="module")
def scripted_daemons():
    """The test daemons, known by name for this module's tests only (a run's user-space
    process imports them itself: runtime/userspace.py's --daemon-class)."""
    for cls in DAEMONS_HERE:
        register_daemon(cls)
    yield
    for cls in DAEMONS_HERE:
        DAEMONS.pop(cls.name, None)


def run(scenario, policy, **kw):
    if isinstance(scenario, str) and not scenario.endswith(".toml"):
        scenario = load_scenario(scenario)
    return emulator.run_scenario(scenario, policy=policy, speed=SPEED, **kw)


def test_a_daemons_kill_counts_and_process_mrelease_reaps_a_task_in_d_state():
    """d_state_exit: the daemon kills the NFS client (in D state until 5.1 s) at 0.15 s and
    reaps its 100 MB with process_mrelease at once: the builder's allocation fits, the
    kernel's OOM killer is never called, one kill."""
    r = run("d_state_exit", "v6.6+scripted", overrides={"mrelease": 1})
    assert r.verdict == "resolved", r.log
    assert r.kills == 1 and r.first_oom_at_s is None, r.log
    (v,) = r.victims
    assert v.name == "nfs-client" and v.killed_by.startswith("scripted[") and not v.oom_victim
    assert v.mreleased_kb == 100 * 1024 and v.exited_at_s >= 5.1, v
    assert any("process_mrelease(pid %d (nfs-client)): reaped 102400kB" % v.pid in line for line in r.log)
    assert any("scripted: mrelease %d: ok" % v.pid in line for line in r.log), r.log


def test_the_oom_killer_marks_a_dying_task_its_victim_without_a_kill(tmp_path):
    """Killed by the daemon without process_mrelease, the NFS client cannot exit before
    5.1 s; the builder's allocations fail from about 0.7 s and the OOM killer chooses the
    dying client: task_will_free_mem, so it marks it a victim and queues the reaper, and
    prints nothing (no "Killed process"). v6.6's reaper reaps it 2 s later: still one
    kill. The trace says so, in events the docs list."""
    trace = tmp_path / "t.jsonl"
    r = run("d_state_exit", "v6.6+scripted", trace=str(trace))
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    check_documented(events)
    assert [e["ev"] for e in events if e["task"] == "nfs-client" and e["ev"] in ("user_kill", "mark_victim")] \
        == ["user_kill", "mark_victim"]
    assert next(e for e in events if e["ev"] == "mark_victim")["dying"] is True
    assert any(e["ev"] == "daemon_log" and e["line"] == "scripted: started" for e in events)
    assert r.verdict == "resolved" and r.kills == 1, r.log
    (v,) = r.victims
    assert v.name == "nfs-client" and v.oom_victim and v.reaped_kb == 100 * 1024, v
    assert not any("Killed process" in line or "invoked oom-killer" in line for line in r.log), r.log
    assert any("oom_reaper: reaped process %d (nfs-client)" % v.pid in line for line in r.log), r.log


SIGTERM_SCENARIO = """
    name = "sigterm"
    memory_mb = 64
    min_kills = 0
    run_deadline_s = 10

    [[task]]
    name = "default"
      [[task.vma]]
      kind = "anon"
      mb = 4

    [[task]]
    name = "ignorer"
    sigterm = "ignore"
      [[task.vma]]
      kind = "anon"
      mb = 4

    [[task]]
    name = "handler"
    sigterm = 500
      [[task.vma]]
      kind = "anon"
      mb = 4

    [[task]]
    name = "worker"
      [[task.step]]
      op = "sleep"
      ms = 1000
"""


def test_sigterm_is_answered_as_each_task_says(tmp_path):
    """SIGTERM at 0.1 s: the default action kills at once (the kernel makes it SIGKILL),
    "ignore" lives on (no kill), a 500 ms handler exits at 0.6 s (a kill)."""
    r = run(write_scenario(tmp_path, SIGTERM_SCENARIO), "v6.6+term-all")
    assert r.verdict == "resolved", r.log
    by_name = {v.name: v for v in r.victims}
    assert set(by_name) == {"default", "handler"} and r.kills == 2, r.victims
    assert all(v.signal == "SIGTERM" for v in r.victims)
    assert by_name["default"].exited_at_s == pytest.approx(0.1, abs=0.05)
    assert by_name["handler"].exited_at_s == pytest.approx(0.6, abs=0.05)
    assert any("sent SIGTERM to pid" in line and "(ignorer) (it ignores SIGTERM)" in line for line in r.log)


def test_a_daemon_that_fails_ends_the_run_with_its_line():
    r = run("d_state_exit", "v6.6+broken")
    assert r.verdict == "error" and r.error_kind == "fault", r.summary()
    assert "the user-space daemon broken" in r.error and "ZeroDivisionError: the model divided by zero" in r.error


def test_process_mrelease_is_enosys_on_a_kernel_older_than_5_15():
    """v4.17 has no process_mrelease: the call fails with ENOSYS and frees nothing; the
    kill stands, and the v4.17 OOM killer (no reaper delay) marks the dying client its
    victim and reaps it at once."""
    r = run("d_state_exit", "v4.17+scripted", overrides={"mrelease": 1})
    assert r.verdict == "resolved" and r.kills == 1, r.log
    (v,) = r.victims
    assert v.mreleased_kb == 0 and v.oom_victim and v.reaped_kb == 100 * 1024, v
    assert any("process_mrelease(pid %d (nfs-client)): -ENOSYS" % v.pid in line for line in r.log), r.log


HANDLER_THEN_OOM = """
    name = "handler_then_oom"
    memory_mb = 128
    min_kills = 1
    run_deadline_s = 20

    [[task]]
    name = "app"
    sigterm = 3000
      [[task.vma]]
      kind = "anon"
      mb = 80

    [[task]]
    name = "allocator"
    oom_score_adj = -1000
      [[task.vma]]
      kind = "anon"
      mb = 4
      [[task.step]]
      op = "sleep"
      ms = 500
      [[task.step]]
      op = "alloc"
      mb = 60
"""


def test_a_task_answering_sigterm_and_then_oom_killed_is_one_kill(tmp_path):
    """The daemon's SIGTERM at 0.1 s starts the app's 3 s handler (not a fatal signal: the
    app is not dying); the allocator's OOM at 0.5 s chooses the app and kills it. One
    task died: one kill, one record saying both."""
    r = run(write_scenario(tmp_path, HANDLER_THEN_OOM), "v6.6+term-app")
    assert r.verdict == "resolved" and r.kills == 1, r.log
    (v,) = r.victims
    assert v.name == "app" and v.signal == "SIGTERM" and v.killed_by.startswith("term-app[") and v.oom_victim
    assert v.exited_at_s < 3.1, v
    assert sum("Killed process" in line for line in r.log) == 1, r.log


SWAPPED_VICTIM = """
    name = "swapped_victim"
    memory_mb = 64
    swap_mb = 32
    min_kills = 1
    run_deadline_s = 10

    [[task]]
    name = "victim"
      [[task.vma]]
      kind = "anon"
      mb = 40

    [[task]]
    name = "allocator"
    oom_score_adj = -1000
      [[task.vma]]
      kind = "anon"
      mb = 4
      [[task.step]]
      op = "sleep"
      ms = 100
      [[task.step]]
      op = "alloc"
      mb = 30
      [[task.step]]
      op = "sleep"
      ms = 1000
"""


def test_process_mrelease_frees_the_swap_entries_of_the_mm_it_reaps(tmp_path):
    """Reclaim swaps 10 MB of the victim out for the allocator; the daemon's kill and
    process_mrelease at 0.5 s free its pages and its swap entries alike: the next look
    finds the swap device empty again."""
    r = run(write_scenario(tmp_path, SWAPPED_VICTIM), "v6.6+kill-victim")
    assert r.verdict == "resolved" and r.kills == 1, r.log
    swap = [line.split("SwapFree ")[1] for line in r.log if "scripted: SwapFree" in line]
    assert swap[0] != "32768 kB of 32768 kB", r.log            # some of the victim on swap, before
    assert swap[-1] == "32768 kB of 32768 kB", r.log           # none after its mm was reaped
    (v,) = r.victims
    assert v.mreleased_kb > 0 and r.accounting["swap_pages"] == 0, (v, r.accounting)
