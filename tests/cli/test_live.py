"""By hand, as a user would: a held run in one terminal, ps/inject/stop from another.

Every test drives real processes through the command line. The run is at
--speed 1 so that a hold measured in real seconds lines up with the run's
emulated clock. Times compared are the run's own records (trace events carry
the time each was recorded, in the process where it happened: a worker, the
supervisor, an ``oomemu inject``), never the moment this test process got
round to looking. The OOM is started by ``inject alloc`` once the test has set
the stage, not by a step whose time could come before the stage is set.
"""

import json
import os
import signal
import sys

import psutil
import pytest

from emulator.runtime import names
from emulator.runtime.clock import RunClock
from emulator.runtime.zone import ZONE_HEADER, Zone
from tests.helpers import (HeldRun, check_documented, oomemu, oomemu_args, read_line, started, wait_for,
                           write_scenario)

pytestmark = pytest.mark.timeout(120)

# An idle allocator: `oomemu inject RUN alloc allocator 50` makes the OOM, whose victim
# is the biggest task.
SIMPLE = """
    memory_mb = 128
    min_kills = 1
    [[task]]
    name = "victim"
      [[task.vma]]
      kind = "anon"
      mb = 70
    [[task]]
    name = "bystander"
      [[task.vma]]
      kind = "anon"
      mb = 30
    [[task]]
    name = "allocator"
    oom_score_adj = -1000        # spared: it holds most of its request when the OOM comes
      [[task.vma]]
      kind = "anon"
      mb = 5
"""


def freed_at(events, task):
    """When the victim's memory came back: reaped with something freed, or its exit_mmap done."""
    ts = [e["t"] for e in events if e.get("task") == task and (
        (e["ev"] == "finish_task_reaping" and e["freed_kb"] > 0) or e["ev"] == "exit_mmap_done")]
    return min(ts) if ts else None


def inject_times(events, word):
    return [e["t"] for e in events if e["ev"] == "inject" and word in e["what"]]


def oom_now(run):
    """The allocator asks for 50 MB more than there is: the OOM killer runs."""
    p = oomemu("inject", run.id, "alloc", "allocator", "50")
    assert p.returncode == 0, p.stderr


def run_now(run_id: str) -> float:
    """The run's emulated time now, from its clock (which is not real time scaled: it
    stands while real work is done and holds for late sleepers)."""
    zone = Zone(run_id)
    try:
        return RunClock(zone, zone.supervisor_slot).now()
    finally:
        zone.close()


@pytest.fixture
def simple(tmp_path):
    return write_scenario(tmp_path, SIMPLE, "simple")


def test_runs_and_ps_show_a_held_run(tmp_path, simple):
    with HeldRun(simple, "timeout", trace=str(tmp_path / "t.jsonl")) as run:
        p = oomemu("runs")
        assert p.returncode == 0
        row = next(l.split() for l in p.stdout.splitlines() if l.startswith(run.id + " "))
        assert row[1:4] == ["simple", "timeout", "1"] and row[-1] == "3", p.stdout
        oom_now(run)
        run.wait_event(lambda e: e["ev"] == "oom_kill")
        p = oomemu("ps", run.id)
        assert p.returncode == 0, p.stderr
        rows = {line.split()[1]: line for line in p.stdout.splitlines()[2:]}
        assert set(rows) == {"victim", "bystander", "allocator"}
        assert "VICTIM" in rows["victim"] and "VICTIM" not in rows["bystander"] + rows["allocator"]
        out = run.stop()
    assert out.splitlines()[-1].startswith("oomemu: simple under timeout: resolved, kills 1 (fewest needed 1)")
    assert run.id not in oomemu("runs").stdout and run.id not in names.leftovers()


def test_stop_ends_a_held_run_and_it_prints_its_verdict(simple):
    with HeldRun(simple, "timeout") as run:
        p = oomemu("stop", run.id)
        assert p.returncode == 0, p.stderr
        assert p.stdout == f"oomemu stop: asked run {run.id} (supervisor {run.proc.pid}) to stop\n"
        out = run.wait(timeout=30)                      # exit 0 (checked by wait)
    assert out.splitlines()[-1].startswith("oomemu: simple under timeout: resolved, kills 0 (fewest needed 1)")
    assert run.id not in names.leftovers()


def test_ps_watch_ends_quietly_when_the_run_ends(simple):
    with HeldRun(simple, "v4.17") as run:
        head = f"run {run.id}: simple under v4.17, t="
        with started(oomemu_args("ps", run.id, "--watch", "--interval", "0.1")) as watch:
            assert read_line(watch).startswith(head)
            while not read_line(watch).startswith(head):     # until it has redrawn once
                pass
            run.stop()
            out, err = watch.communicate(timeout=30)
    assert (watch.returncode, err) == (0, ""), err
    assert out.splitlines()[-1] == f"oomemu ps: run {run.id} has ended"


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")


@pytest.mark.parametrize("how", ["inject", "python example"])
def test_holding_mmap_sem_delays_reaping_until_the_hold_ends(tmp_path, simple, how):
    hold_s = 3.0
    with HeldRun(simple, "timeout", trace=str(tmp_path / "t.jsonl")) as run:
        if how == "inject":
            args = oomemu_args("inject", run.id, "hold-mmap-sem", "victim", "--seconds", f"{hold_s:g}")
        else:                                           # the documented protocol: not oomemu at all
            args = [sys.executable, os.path.join(EXAMPLES, "hold_mmap_sem.py"), run.id, "0", "write", f"{hold_s:g}"]
        with started(args) as holder:
            took_line = read_line(holder)
            assert "holding" in took_line
            oom_now(run)
            kill = run.wait_event(lambda e: e["ev"] == "oom_kill")
            during = run.events()
            # Read while the hold was surely in place (the holder had not let go: it prints
            # and exits when it does), the run had not given the victim's memory back.
            assert holder.poll() is None and "released" not in took_line, "the hold ended too soon"
            assert freed_at(during, "victim") is None, "the victim's memory came back during the hold"
            out, _ = holder.communicate(timeout=30)
            assert holder.returncode == 0 and "released" in out
        run.wait_event(lambda e: e["ev"] == "exited" and e["task"] == "victim", timeout=30)
        run.stop()
    events = run.events()
    free = freed_at(events, "victim")
    assert kill["task"] == "victim" and free is not None and free > kill["t"]
    if how == "inject":                                  # the run's own records of the hold
        took = next(e for e in events if e["ev"] == "inject" and " took " in e["what"])["t"]
        released = next(e for e in events if e["ev"] == "inject" and " released " in e["what"])["t"]
        # taken before the kill; the memory back only after the release, and soon after
        # (1 s: the reaper's next pass is due within 0.1 s)
        assert took < kill["t"] and released <= free <= released + 1.0, (took, kill["t"], free, released)
    assert not any(e["ev"] == "reap_deadline" for e in events)
    assert sum(e["ev"] == "oom_kill" for e in events) == 1
    if how == "inject":
        assert any("oomemu: inject: pid" in l and "released the mmap_sem of victim" in l for l in run.out.splitlines())


def mmap_sem_column(run_id: str, task: str) -> str:
    """ps's MMAP_SEM for a task (the last column; it may hold blanks)."""
    line = next(l for l in oomemu("ps", run_id).stdout.splitlines() if f" {task} " in l)
    head = oomemu("ps", run_id).stdout.splitlines()[1]
    return line[head.index("MMAP_SEM"):].strip()


def c_example(tmp_path) -> list[str]:
    """examples/hold_mmap_sem.c, built as its comment says (skip where no compiler is)."""
    import shutil
    import subprocess
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) on this machine: the C example cannot be built")
    exe = str(tmp_path / "hold_mmap_sem")
    subprocess.run([cc, "-o", exe, os.path.join(EXAMPLES, "hold_mmap_sem.c"), "-lrt", "-pthread"], check=True)
    return [exe]


@pytest.mark.parametrize("lang", ["python", "c"])
def test_programs_outside_oomemu_take_it_for_read_then_write_and_the_run_reacts_as_to_an_inject(
        tmp_path, simple, lang):
    """The documented protocol (docs/by-hand.md), from a program that imports nothing of
    oomemu: one instance reads the victim's mmap_sem, a second queues for write behind it;
    ps shows both, the reaper's trylock fails because of the queued writer (a reader alone
    would not stop it), and once both are done the victim is reaped or exits."""
    prog = ([sys.executable, os.path.join(EXAMPLES, "hold_mmap_sem.py")] if lang == "python"
            else c_example(tmp_path))
    with HeldRun(simple, "timeout", trace=str(tmp_path / "t.jsonl")) as run:
        with started(prog + [run.id, "0", "read", "3"]) as reader:
            assert read_line(reader).startswith("holding it for read (pid ")
            with started(prog + [run.id, "0", "write", "0.5"]) as writer:
                assert read_line(writer) == f"waiting for it for write (pid {writer.pid})\n"
                assert mmap_sem_column(run.id, "victim") == f"r:{reader.pid} +1w queued"
                oom_now(run)
                kill = run.wait_event(lambda e: e["ev"] == "oom_kill")
                tried = run.wait_event(lambda e: e["ev"] == "skip_task_reaping" and e["task"] == "victim")
                assert tried["reason"] == "mmap_sem" and tried["t"] >= kill["t"]
                assert read_line(writer, 30).startswith("holding it for write (pid ")
                out, _ = writer.communicate(timeout=30)
                assert writer.returncode == 0 and out.startswith("released at ")
            reader.communicate(timeout=30)
            assert reader.returncode == 0
        run.wait_event(lambda e: e["ev"] == "exited" and e["task"] == "victim", timeout=30)
        assert mmap_sem_column(run.id, "victim") == "-"
        run.stop()
    events = run.events()
    assert sum(e["ev"] == "oom_kill" for e in events) == 1
    assert freed_at(events, "victim") is not None


def test_inject_hold_mmap_sem_read_lets_the_reaper_in_but_keeps_the_exit_waiting(tmp_path, simple):
    with HeldRun(simple, "timeout", trace=str(tmp_path / "t.jsonl")) as run:
        with started(oomemu_args("inject", run.id, "hold-mmap-sem", "victim", "--read", "--seconds", "3")) as h:
            line = read_line(h)
            assert "holding the mmap_sem of victim" in line and "for read" in line
            assert mmap_sem_column(run.id, "victim") == f"r:{h.pid}"
            oom_now(run)
            reaped = run.wait_event(lambda e: e["ev"] == "finish_task_reaping" and e["task"] == "victim")
            assert reaped["freed_kb"] == 70 * 1024
            assert run.wait_event(lambda e: e["ev"] == "mmput_wait")["task"] == "victim"
            h.communicate(timeout=30)
            assert h.returncode == 0
        took = run.wait_event(lambda e: e["ev"] == "inject" and " took " in e["what"])["t"]
        start = run.wait_event(lambda e: e["ev"] == "exit_mmap_start" and e["task"] == "victim")["t"]
        run.stop()
    # took is recorded once it holds, and it lets go no sooner than 3 s later
    assert reaped["t"] < took + 3.0 <= start


def test_the_deadline_ends_the_delay_when_it_comes_first(tmp_path, simple):
    """A hold of 6 s against a deadline of 1.5 s: the reaper gives up and the bystander
    dies while the victim's mmap_sem is still held."""
    with HeldRun(simple, "timeout", "--set", "reap_timeout_s=1.5", trace=str(tmp_path / "t.jsonl")) as run:
        with started(oomemu_args("inject", run.id, "hold-mmap-sem", "victim", "--seconds", "6")) as holder:
            assert "holding" in read_line(holder)
            oom_now(run)
            holder.communicate(timeout=30)
            assert holder.returncode == 0
        released = run.wait_event(lambda e: e["ev"] == "inject" and " released " in e["what"])["t"]
        run.stop()
    events = run.events()
    kill, second = [e for e in events if e["ev"] == "oom_kill"]
    gave_up = next(e for e in events if e["ev"] == "reap_deadline")
    took = inject_times(events, " took ")[0]
    assert (kill["task"], gave_up["task"], second["task"]) == ("victim", "victim", "bystander")
    assert took < kill["t"]
    assert 1.5 <= gave_up["t"] - kill["t"] <= 3.0
    assert gave_up["t"] <= second["t"] < took + 6.0 <= released          # all while the hold lasted
    assert any("oom_reaper: unable to reap pid:" in l and "(victim)" in l for l in run.out.splitlines())


def test_inject_alloc_makes_an_idle_task_allocate(tmp_path, simple):
    with HeldRun(simple, "v4.17", trace=str(tmp_path / "t.jsonl")) as run:
        p = oomemu("inject", run.id, "alloc", "bystander", "40")
        assert p.returncode == 0, p.stderr
        kill = run.wait_event(lambda e: e["ev"] == "oom_kill")
        assert kill["requester"] == "bystander" and kill["task"] == "victim"
        run.wait_event(lambda e: e["ev"] == "alloc_ok" and e["task"] == "bystander")
        out = run.stop()
    assert "bystander invoked oom-killer" in out
    assert out.splitlines()[-1].startswith("oomemu: simple under v4.17: resolved, kills 1")


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
    oom_score_adj = -1000        # spared: it holds most of its request when the OOM comes
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
    # the allocator waits for L, which the dead holder kept
    assert lines[-1].startswith(f"oomemu: locked under {policy}: hung, kills 2 (fewest needed 1, 1 extra)")


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


def test_a_zone_whose_uid_field_lies_about_its_owner_is_not_oomemus():
    """The owner of a run is the owner of its zone file; a zone whose uid field says
    otherwise was not written by oomemu (a real second user: tests/cli/test_forgery.py)."""
    run_id = f"{os.getpid()}-beef"
    zone = Zone(run_id, create={"supervisor_pid": os.getpid(),
                                "supervisor_ctime": psutil.Process().create_time(), "speed": 1.0,
                                "total_pages": 256, "scenario": "s", "policy": "v4.17"})
    try:
        ZONE_HEADER.set(zone.map, "uid", os.getuid() + 4242)
        p = oomemu("inject", run_id, "crash", "x")
        assert p.returncode == 2 and f"run {run_id} is not oomemu's" in p.stderr, p.stderr
        assert p.stderr.count("\n") == 1
    finally:
        zone.close()
        import posix_ipc
        posix_ipc.unlink_shared_memory(names.zone(run_id))


def test_trace_events_are_the_documented_ones(tmp_path):
    """Names and fields as the README's tables of trace events state them (an event
    renamed or added in the code, or a field, and not in the README, fails here)."""
    trace = tmp_path / "t.jsonl"
    p = oomemu("run", "mmap_sem_held", "--speed", "10", "--trace", str(trace), "--quiet")
    assert p.returncode == 0, p.stderr
    events = [json.loads(l) for l in trace.read_text().splitlines()]
    check_documented(events)
    # (whether the reaper or the bystander's own exit frees the bystander is a race;
    # start/finish_task_reaping are checked on mlocked in test_trace_output)
    assert {"mark_victim", "wake_reaper", "skip_task_reaping", "oom_kill", "reap_deadline", "oom_skip_set",
            "exit_mmap_start", "exit_mmap_done", "alloc_stall", "alloc_ok", "run_start", "run_end",
            "task_state", "exited"} <= {e["ev"] for e in events}


def test_hold_lock_keeps_a_task_in_d_state_until_released(tmp_path):
    """The worker wants L at 2 s; the hold (until Ctrl-C) is in place before that, which
    the run's own records must show, or the test says the stage was not set."""
    path = write_scenario(tmp_path, """
        memory_mb = 64
        [[task]]
        name = "worker"
          [[task.vma]]
          kind = "anon"
          mb = 8
          [[task.step]]
          op = "sleep"
          ms = 2000
          [[task.step]]
          op = "lock"
          name = "L"
          [[task.step]]
          op = "unlock"
          name = "L"
    """, "lockstep")
    with HeldRun(path, "timeout", trace=str(tmp_path / "t.jsonl")) as run:
        with started(oomemu_args("inject", run.id, "hold-lock", "L")) as holder:
            assert "holding lock L until Ctrl-C" in read_line(holder)
            d = run.wait_event(lambda e: e["ev"] == "task_state" and e["state"] == "D")
            took = run.wait_event(lambda e: e["ev"] == "inject" and "took lock L" in e["what"])
            assert took["t"] < d["t"], "the hold came after the worker took L: the stage was not set"
            assert " D " in next(l for l in oomemu("ps", run.id).stdout.splitlines() if " worker " in l)
            ctrl_c = run_now(run.id)                    # read before the signal: a lower bound
            holder.send_signal(signal.SIGINT)
            out, _ = holder.communicate(timeout=30)
            assert holder.returncode == 0 and "released lock L" in out
        back = run.wait_event(lambda e: e["ev"] == "task_state" and e["state"] == "R" and e["t"] > d["t"])
        out = run.stop()
    assert back["t"] >= ctrl_c                          # it ran again only once the lock was let go
    assert out.splitlines()[-1].startswith("oomemu: lockstep under timeout: resolved, kills 0")


DEAD = """
    memory_mb = 64
    [[task]]
    name = "owner"
    vma = [{ kind = "anon", mb = 4 }]
    step = [{ op = "mmap_sem_down" }, { op = "sleep", ms = 600000 }]
    [[task]]
    name = "reader"
    vma = [{ kind = "anon", mb = 1 }]
    step = [{ op = "sleep", ms = 100 }, { op = "mmap_sem_down", task = "owner", mode = "read" }]
    [[task]]
    name = "selfread"
    vma = [{ kind = "anon", mb = 1 }]
    step = [{ op = "mmap_sem_down", mode = "read" }]
    [[task]]
    name = "gone"
    step = [{ op = "exit" }]
"""


def test_dead_holders_and_waiters_keep_what_they_had_and_show_it(tmp_path):
    """inject crash of a task queued on another's mmap_sem, then of the holder: each keeps
    its place or its hold; ps marks them, the run's log says so in one line each."""
    with HeldRun(write_scenario(tmp_path, DEAD, "dead"), "v4.17") as run:
        pid = {l.split()[1]: int(l.split()[0]) for l in oomemu("ps", run.id).stdout.splitlines()[2:]}
        assert wait_for(lambda: mmap_sem_column(run.id, "owner") == f"w:{pid['owner']} +1r queued", 10)
        assert oomemu("inject", run.id, "crash", "reader").returncode == 0
        assert wait_for(lambda: mmap_sem_column(run.id, "owner").endswith("+1r queued (1 dead)"), 10)
        assert oomemu("inject", run.id, "crash", "owner").returncode == 0
        assert wait_for(lambda: mmap_sem_column(run.id, "owner") ==
                        f"w:{pid['owner']}(dead) +1r queued (1 dead)", 10)
        assert mmap_sem_column(run.id, "selfread") == f"r:{pid['selfread']}"
        # refusals, one line each, exit 2
        p = oomemu("inject", run.id, "alloc", "selfread", "1")
        assert p.returncode == 2 and "holds its own mmap_sem for read" in p.stderr and "deadlock" in p.stderr
        p = oomemu("inject", run.id, "hold-mmap-sem", "owner", "--read", "--write")
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
        assert wait_for(lambda: "exited" in next(l for l in oomemu("ps", run.id).stdout.splitlines()
                                                 if " gone " in l), 10)
        p = oomemu("inject", run.id, "hold-mmap-sem", "gone", "--seconds", "1")
        assert p.returncode == 2 and p.stderr.strip().endswith("the mm is gone (its task has exited)"), p.stderr
        out = run.stop()
    assert (f"oomemu: task {pid['reader']} (reader) died queued for read on the mmap_sem of {pid['owner']} "
            f"(owner): it keeps its place") in out
    assert f"oomemu: task {pid['owner']} (owner) died holding its own mmap_sem for write: it stays held" in out


def test_ps_shows_page_cache_and_shmem_apart_from_anon(tmp_path):
    text = """
        memory_mb = 256
        [[task]]
        name = "db"
        vma = [{ kind = "shmem", mb = 30, object = "pool" }, { kind = "file_shared", mb = 20, dirty_mb = 5 },
               { kind = "anon", mb = 10 }]
    """
    with HeldRun(write_scenario(tmp_path, text, "cache"), "v6.6", trace=str(tmp_path / "t.jsonl")) as run:
        run.wait_event(lambda e: e["ev"] == "run_start")
        p = oomemu("ps", run.id)
        assert p.returncode == 0, p.stderr
        head, _, row = p.stdout.splitlines()[:3]
        assert "; page cache 20480kB (5120kB dirty), shmem 30720kB; door " in head, head
        assert row.split()[1:8] == ["db", "/", "running", "10240k", "20480k", "30720k", "0k"], row
        run.stop()
