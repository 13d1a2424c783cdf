"""By hand, as a user would: a held run in one terminal, ps/inject/stop from another.

Every test drives real processes through the command line. The run is at
--speed 1 so that a hold measured in real seconds lines up with the run's
emulated clock; time windows are wide (a second or more) so a loaded machine
does not change what they show.
"""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from emulator import names
from emulator.trace import KERNEL_EVENTS, OOMEMU_EVENTS
from emulator.zone import Zone
from tests.helpers import HeldRun, oomemu, wait_for, write_scenario

pytestmark = pytest.mark.timeout(120)

# The allocator needs memory at 1.5 s; the victim is the biggest task.
SIMPLE = """
    memory_mb = 128
    min_kills = 1
    [[task]]
    name = "victim"
      [[task.vma]]
      kind = "anon"
      mb = 60
    [[task]]
    name = "bystander"
      [[task.vma]]
      kind = "anon"
      mb = 30
    [[task]]
    name = "allocator"
      [[task.vma]]
      kind = "anon"
      mb = 5
      [[task.step]]
      op = "sleep"
      ms = 1500
      [[task.step]]
      op = "alloc"
      mb = 50
"""


def freed_at(events, task):
    """When the victim's memory came back: reaped with something freed, or its exit_mmap done."""
    ts = [e["t"] for e in events if e.get("task") == task and (
        (e["ev"] == "finish_task_reaping" and e["freed_kb"] > 0) or e["ev"] == "exit_mmap_done")]
    return min(ts) if ts else None


def inject_times(events, word):
    return [e["t"] for e in events if e["ev"] == "inject" and word in e["what"]]


@pytest.fixture
def simple(tmp_path):
    return write_scenario(tmp_path, SIMPLE, "simple")


def test_runs_and_ps_show_a_held_run(tmp_path, simple):
    with HeldRun(simple, "timeout", trace=str(tmp_path / "t.jsonl")) as run:
        p = oomemu("runs")
        assert p.returncode == 0 and run.id in p.stdout and "simple" in p.stdout
        run.wait_event(lambda e: e["ev"] == "oom_kill")
        p = oomemu("ps", run.id)
        assert p.returncode == 0, p.stderr
        rows = {line.split()[1]: line for line in p.stdout.splitlines()[2:]}
        assert set(rows) == {"victim", "bystander", "allocator"}
        assert "VICTIM" in rows["victim"]
        out = run.stop()
    assert "resolved" in out.splitlines()[-1]
    assert run.id not in oomemu("runs").stdout


@pytest.mark.parametrize("how", ["inject", "python one-liner"])
def test_holding_mmap_sem_delays_reaping_until_the_hold_ends(tmp_path, simple, how):
    with HeldRun(simple, "timeout", trace=str(tmp_path / "t.jsonl")) as run:
        sem = names.mmap_sem(run.id, 0)                 # the victim is task 0
        if how == "inject":
            holder = subprocess.Popen([sys.executable, "-m", "emulator", "inject", run.id, "hold-mmap-sem",
                                       "victim", "--seconds", "4"], stdout=subprocess.PIPE, text=True)
        else:                                           # the README's one-liner: not oomemu at all
            holder = subprocess.Popen([sys.executable, "-c", f"import posix_ipc,time; s=posix_ipc.Semaphore("
                                       f"{sem!r}); s.acquire(); print('held', flush=True); time.sleep(4); "
                                       f"s.release(); print('released', flush=True)"],
                                      stdout=subprocess.PIPE, text=True)
        assert ("holding" if how == "inject" else "held") in holder.stdout.readline()
        kill = run.wait_event(lambda e: e["ev"] == "oom_kill")
        t_kill_seen = time.monotonic()                  # at or after the kill (polled)
        assert kill["task"] == "victim"
        holder.communicate(timeout=30)
        t_released = time.monotonic()                   # at or after the release
        run.wait_event(lambda e: e["ev"] == "exited" and e["task"] == "victim", timeout=30)
        run.stop()
    events = run.events()
    start = next(e for e in events if e["ev"] == "run_start")
    free = freed_at(events, "victim")
    # The memory came back only once the hold ended, not at the kill. At speed 1
    # emulated seconds are real ones; 0.3 s covers the holder's exit and our polling.
    assert free is not None
    assert free - kill["t"] >= (t_released - t_kill_seen) - 0.3 > 1.0
    assert not any(e["ev"] == "reap_deadline" for e in events)
    assert sum(e["ev"] == "oom_kill" for e in events) == 1
    if how == "inject":
        assert inject_times(events, "released") and inject_times(events, "released")[0] <= free
        assert any("oomemu: inject: pid" in l and "released the mmap_sem of victim" in l for l in run.out.splitlines())
    assert start["policy"] == "timeout"


def test_the_deadline_ends_the_delay_when_it_comes_first(tmp_path, simple):
    with HeldRun(simple, "timeout", "--set", "reap_timeout_s=1.5", trace=str(tmp_path / "t.jsonl")) as run:
        holder = subprocess.Popen([sys.executable, "-m", "emulator", "inject", run.id, "hold-mmap-sem",
                                   "victim", "--seconds", "8"], stdout=subprocess.PIPE, text=True)
        assert "holding" in holder.stdout.readline()
        gave_up = run.wait_event(lambda e: e["ev"] == "reap_deadline")
        run.wait_event(lambda e: e["ev"] == "oom_kill" and e["task"] == "bystander")
        holder.send_signal(signal.SIGINT)               # Ctrl-C ends a hold early
        holder.communicate(timeout=30)
        run.stop()
    events = run.events()
    kill = next(e for e in events if e["ev"] == "oom_kill")
    assert gave_up["task"] == "victim"
    assert 1.4 <= gave_up["t"] - kill["t"] <= 3.0
    assert inject_times(events, "released")[0] > gave_up["t"]       # the deadline came first
    assert any("oom_reaper: unable to reap pid:" in l and "(victim)" in l for l in run.out.splitlines())


def test_inject_alloc_makes_an_idle_task_allocate(tmp_path):
    path = write_scenario(tmp_path, SIMPLE.replace("mb = 50", "mb = 10"), "calm")   # no OOM by itself
    with HeldRun(path, "v4.17", trace=str(tmp_path / "t.jsonl")) as run:
        run.wait_event(lambda e: e["ev"] == "alloc_ok")
        p = oomemu("inject", run.id, "alloc", "bystander", "40")
        assert p.returncode == 0, p.stderr
        kill = run.wait_event(lambda e: e["ev"] == "oom_kill")
        assert kill["requester"] == "bystander" and kill["task"] == "victim"
        run.wait_event(lambda e: e["ev"] == "alloc_ok" and e["task"] == "bystander")
        out = run.stop()
    assert "bystander invoked oom-killer" in out


def test_inject_stop_and_cont(simple):
    with HeldRun(simple, "timeout") as run:
        pid = int(next(l.split()[0] for l in oomemu("ps", run.id).stdout.splitlines() if " bystander " in l))
        assert oomemu("inject", run.id, "stop", "bystander").returncode == 0
        assert wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, 5)
        assert oomemu("inject", run.id, "cont", "bystander").returncode == 0
        assert wait_for(lambda: psutil.Process(pid).status() != psutil.STATUS_STOPPED, 5)
        run.stop()


LOCKED = """
    memory_mb = 256
    min_kills = 1
    [[task]]
    name = "holder"
      [[task.vma]]
      kind = "anon"
      mb = 100
      [[task.step]]
      op = "lock"
      name = "L"
      [[task.step]]
      op = "mmap_sem_down"
      [[task.step]]
      op = "busy"
      ms = 8000
    [[task]]
    name = "bystander"
      [[task.vma]]
      kind = "anon"
      mb = 60
    [[task]]
    name = "allocator"
      [[task.vma]]
      kind = "anon"
      mb = 10
      [[task.step]]
      op = "sleep"
      ms = 1000
      [[task.step]]
      op = "alloc"
      mb = 120
      [[task.step]]
      op = "lock"
      name = "L"
"""


@pytest.mark.parametrize("policy", ["v4.17", "timeout"])
def test_a_crashed_victim_keeps_its_locks_and_the_deadline_gets_things_moving(tmp_path, policy):
    """The victim holds lock L and its own mmap_sem and is in D state when the OOM killer picks
    it; then it is SIGKILLed for real, before it can act on the emulated kill: both stay held.
    The reaper's give-up lets the bystander die and the allocation succeed; the allocator then
    waits on L forever (its holder is dead), so the verdict when stopped is 'hung'."""
    path = write_scenario(tmp_path, LOCKED, "locked")
    with HeldRun(path, policy, "--set", "reap_timeout_s=2" if policy == "timeout" else "max_oom_reap_retries=10",
                 trace=str(tmp_path / "t.jsonl")) as run:
        run.wait_event(lambda e: e["ev"] == "oom_kill" and e["task"] == "holder")
        assert oomemu("inject", run.id, "crash", "holder").returncode == 0
        run.wait_event(lambda e: e["ev"] == "exited" and e["task"] == "holder" and e["crashed"])
        run.wait_event(lambda e: e["ev"] == "reap_deadline" and e["task"] == "holder")
        run.wait_event(lambda e: e["ev"] == "alloc_ok" and e["task"] == "allocator")
        out = run.stop()
    lines = out.splitlines()
    assert any("(holder) died without exiting (signal 9); its mm and what it held stay" in l for l in lines)
    assert any("oomemu: inject: real SIGKILL to holder" in l for l in lines)
    assert any("unable to reap pid:" in l and "(holder)" in l for l in lines)
    assert any("Killed process" in l and "(bystander)" in l for l in lines)
    assert "hung" in lines[-1]                          # the allocator waits for L, which the dead holder kept


def test_wrong_run_task_or_owner_is_one_line_and_exit_2(simple):
    for args, says in [(("ps", "nonsense"), "is not a run id"),
                       (("ps", "99999-beef"), "no run 99999-beef"),
                       (("inject", "99999-beef", "crash", "x"), "no run 99999-beef")]:
        p = oomemu(*args)
        assert p.returncode == 2 and says in p.stderr and p.stderr.count("\n") == 1, p.stderr
    with HeldRun(simple, "timeout") as run:
        p = oomemu("inject", run.id, "alloc", "nosuch", "5")
        assert p.returncode == 2 and "has no task 'nosuch' (tasks: victim, bystander, allocator)" in p.stderr
        p = oomemu("inject", run.id, "hold-lock", "nolock", "--seconds", "1")
        assert p.returncode == 2 and "has no lock nolock" in p.stderr
        run.stop()
    p = oomemu("inject", run.id, "crash", "victim")
    assert p.returncode == 2 and "no run" in p.stderr


def test_another_users_run_is_refused():
    """A zone that says another uid owns the run (its 'supervisor' is this live process)."""
    run_id = f"{os.getpid()}-beef"
    zone = Zone(run_id, create={"supervisor_pid": os.getpid(),
                                "supervisor_ctime": psutil.Process().create_time(), "speed": 1.0,
                                "total_pages": 256, "scenario": "s", "policy": "v4.17"})
    try:
        import struct
        struct.pack_into("=i", zone.map, 8, os.getuid() + 4242)     # the owner's uid field
        p = oomemu("inject", run_id, "crash", "x")
        assert p.returncode == 2 and "only its owner may inject into it" in p.stderr, p.stderr
        assert p.stderr.count("\n") == 1
    finally:
        zone.close()
        import posix_ipc
        posix_ipc.unlink_shared_memory(names.zone(run_id))
        posix_ipc.unlink_semaphore(names.zone_lock(run_id))


def test_trace_event_names_follow_the_kernel(tmp_path):
    trace = tmp_path / "t.jsonl"
    p = oomemu("run", "mmap_sem_held", "--speed", "10", "--trace", str(trace), "--quiet")
    assert p.returncode == 0, p.stderr
    import json
    events = [json.loads(l) for l in trace.read_text().splitlines()]
    kinds = {e["ev"] for e in events}
    assert kinds <= set(KERNEL_EVENTS) | set(OOMEMU_EVENTS)
    # (whether the reaper or the bystander's own exit frees the bystander is a race;
    # start/finish_task_reaping are checked on mlocked in test_trace_output)
    assert {"mark_victim", "wake_reaper", "skip_task_reaping", "oom_kill", "reap_deadline", "oom_skip_set",
            "exit_mmap_start", "exit_mmap_done", "alloc_stall", "alloc_ok", "run_start", "run_end"} <= kinds
    assert all({"t", "ev", "pid", "task", "free_kb"} <= set(e) for e in events)


def test_hold_lock_keeps_a_task_in_d_state_until_released(tmp_path):
    path = write_scenario(tmp_path, """
        memory_mb = 64
        [[task]]
        name = "worker"
          [[task.vma]]
          kind = "anon"
          mb = 8
          [[task.step]]
          op = "sleep"
          ms = 500
          [[task.step]]
          op = "lock"
          name = "L"
          [[task.step]]
          op = "unlock"
          name = "L"
    """, "lockstep")
    with HeldRun(path, "timeout", trace=str(tmp_path / "t.jsonl")) as run:
        holder = subprocess.Popen([sys.executable, "-m", "emulator", "inject", run.id, "hold-lock", "L",
                                   "--seconds", "3"], stdout=subprocess.PIPE, text=True)
        assert "holding lock L" in holder.stdout.readline()
        run.wait_event(lambda e: e["ev"] == "task_state" and e["state"] == "D")
        assert " D " in next(l for l in oomemu("ps", run.id).stdout.splitlines() if " worker " in l)
        holder.communicate(timeout=30)
        back = run.wait_event(lambda e: e["ev"] == "task_state" and e["state"] == "R")
        out = run.stop()
    released = inject_times(run.events(), "released lock L")[0]
    assert back["t"] >= released - 0.05                 # it ran again only once the lock was let go
    assert "resolved" in out.splitlines()[-1]
