"""runs, ps, inject, stop and cleanup: what they read is checked, what they say is true,
driven through the command line as a user would: zones made by hand, then a held
run at speed 1. (Segments laid out wrong, opened without any process:
tests/ipc/test_live_trust.py.)
"""

import os
import signal
import subprocess
import sys

import psutil
import pytest

from emulator.tools import live

from emulator.runtime import names
from emulator.kernel.mm_types import PAGES_PER_MB
from emulator.runtime.mm import Mm
from tests.helpers import HeldRun, make_zone, oomemu, open_fds, shm, unlink_zone, wait_for, write_scenario

pytestmark = pytest.mark.timeout(120)


def one_line_exit_2(p, says: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert says in p.stderr, p.stderr


def test_runs_points_at_cleanup_for_a_dead_runs_objects(dead_pid):
    run_id = f"{dead_pid}-0e13"
    zone = make_zone(run_id, dead_pid)
    zone.close()
    try:
        p = oomemu("runs")
        assert p.returncode == 0, p.stderr
        assert p.stdout.splitlines() == [
            "oomemu: no live runs",
            f"oomemu: 1 dead run left 1 object in {names.SHM_DIR}: 'oomemu cleanup' removes them"]
        p = oomemu("cleanup")
        assert p.returncode == 0 and f"removed segment {shm(names.zone(run_id))}" in p.stdout, p.stdout
        assert oomemu("runs").stdout.splitlines() == ["oomemu: no live runs"]
    finally:
        unlink_zone(run_id)


# -- a held run, by hand -------------------------------------------------------------

CALM = """
    memory_mb = 64
    [[task]]
    name = "worker"
      [[task.vma]]
      kind = "anon"
      mb = 8
      [[task.step]]
      op = "lock"
      name = "L"
      [[task.step]]
      op = "unlock"
      name = "L"
    [[task]]
    name = "idle"
      [[task.vma]]
      kind = "anon"
      mb = 4
"""


def test_runs_table_and_ps_table_close_everything_they_open(tmp_path):
    with HeldRun(write_scenario(tmp_path, CALM, "calm"), "timeout") as run:
        junk = [shm(names.mm(run.id, 7)), shm(names.mm(run.id, 8))]
        with open(junk[0], "wb") as f:                        # error paths too
            f.write(os.urandom(4096))
        os.mkfifo(junk[1])
        try:
            assert run.id in live.runs_table()               # imports and caches settle
            before = open_fds()
            for _ in range(30):
                text = live.runs_table()
                r = live.open_run(run.id)
                try:
                    live.ps_table(r)
                finally:
                    r.close()
            assert open_fds() == before
            assert f"{run.id}  calm" in text and text.split()[-1] == "2"     # TASKS: the two real ones
        finally:
            for path in junk:
                os.unlink(path)
        run.stop()


def test_mistakes_are_one_line_and_exit_2(tmp_path):
    for args, says in [(("ps", "99999999999-beef"), "is not a run id"),
                       (("ps", "0-beef"), "is not a run id"),
                       (("stop", "nonsense"), "is not a run id"),
                       (("inject", "1-", "crash", "x"), "is not a run id"),
                       (("ps", "4194303-beef"), "no run 4194303-beef")]:
        one_line_exit_2(oomemu(*args), says)
    with HeldRun(write_scenario(tmp_path, CALM, "calm"), "timeout") as run:
        for args, says in [
            (("hold-lock", "../L"), "'../L' is not a lock name"),
            (("hold-lock", "L" * 16), "is not a lock name"),
            (("hold-lock", ""), "is not a lock name"),
            (("hold-lock", "M"), f"run {run.id} has no lock M (locks: L)"),
            (("alloc", "idle", "65"), "task idle (pid"),
            (("alloc", "idle", "1e9"), "can grow by at most 64 MB more"),
            (("alloc", "idle", "0.001"), "less than a page"),
            (("alloc", "idle", "0"), "less than a page"),
            (("alloc", "idle", "-5"), "MB must be from 0 to"),
            (("alloc", "idle", "nan"), "MB must be from 0 to"),
            (("alloc", "idle", "inf"), "MB must be from 0 to"),
            (("alloc", "nosuch", "5"), "has no task 'nosuch' (tasks: worker, idle)"),
            (("hold-lock", "L", "--seconds", "-1"), "--seconds must be from"),
        ]:
            one_line_exit_2(oomemu("inject", run.id, *args), says)
        one_line_exit_2(oomemu("ps", run.id, "--interval", "0"), "--interval must be from")
        run.stop()


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
    name = "immune"
    oom_score_adj = -1000
      [[task.vma]]
      kind = "anon"
      mb = 2
    [[task]]
    name = "allocator"
    oom_score_adj = -1000        # spared: it holds most of its request when the OOM comes
      [[task.vma]]
      kind = "anon"
      mb = 5
      [[task.step]]
      op = "sleep"
      ms = 8000                 # time for the hold, the stop and the ps before the OOM, under load
      [[task.step]]
      op = "alloc"
      mb = 50
"""


def ps_rows(run_id: str) -> dict[str, dict[str, str]]:
    p = oomemu("ps", run_id)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()[1:]
    head = lines[0].split()
    return {cols[1]: dict(zip(head, cols)) for cols in (line.split() for line in lines[1:])}


def test_ps_shows_stopped_tasks_and_what_select_bad_process_sees(tmp_path):
    """The victim's mmap_sem is held from outside, so it keeps its memory and no
    MMF_OOM_SKIP (the deadline is far): every OOM scan aborts on it. Then a bystander
    that was not a victim crashes: its mm stays, and it stays a candidate."""
    path = write_scenario(tmp_path, SIMPLE, "simple")
    with HeldRun(path, "timeout", "--set", "reap_timeout_s=100", trace=str(tmp_path / "t.jsonl")) as run:
        holder = subprocess.Popen([sys.executable, "-m", "emulator", "inject", run.id, "hold-mmap-sem",
                                   "victim", "--seconds", "60"], stdout=subprocess.PIPE, text=True)
        try:
            assert "holding" in holder.stdout.readline()
            assert oomemu("inject", run.id, "stop", "bystander").returncode == 0
            rows = ps_rows(run.id)
            assert rows["bystander"]["STATE"] == "stopped"
            assert rows["immune"]["BADNESS"] == "-"                      # oom_score_adj -1000
            assert int(rows["bystander"]["BADNESS"]) == 30 * PAGES_PER_MB
            assert oomemu("inject", run.id, "cont", "bystander").returncode == 0
            assert ps_rows(run.id)["bystander"]["STATE"] != "stopped"

            run.wait_event(lambda e: e["ev"] == "oom_kill" and e["task"] == "victim")
            run.wait_event(lambda e: e["ev"] == "oom_abort" and e["victim_task"] == "victim")
            rows = ps_rows(run.id)
            assert rows["victim"]["BADNESS"] == "abort" and "MMF_OOM_SKIP" not in rows["victim"]["FLAGS"]

            assert oomemu("inject", run.id, "crash", "bystander").returncode == 0
            run.wait_event(lambda e: e["ev"] == "exited" and e["task"] == "bystander" and e["crashed"])
            rows = ps_rows(run.id)
            assert rows["bystander"]["STATE"] == "crashed"
            assert int(rows["bystander"]["BADNESS"]) == 30 * PAGES_PER_MB   # still a candidate
        finally:
            holder.send_signal(signal.SIGINT)                               # the hold ends
            holder.communicate(timeout=30)
        run.wait_event(lambda e: e["ev"] == "exited" and e["task"] == "victim")
        rows = ps_rows(run.id)
        assert rows["victim"]["STATE"] == "exited" and rows["victim"]["BADNESS"] == "-"
        run.stop()
    kills = [e["task"] for e in run.events() if e["ev"] == "oom_kill"]
    assert kills == ["victim"]


def test_stop_sends_sigint_to_the_proven_supervisor_only(tmp_path):
    with HeldRun(write_scenario(tmp_path, CALM, "calm"), "timeout") as run:
        p = oomemu("stop", run.id)
        assert p.returncode == 0 and f"(supervisor {run.proc.pid})" in p.stdout, p.stderr
        out, err = run.proc.communicate(timeout=60)
        assert run.proc.returncode == 0 and "resolved" in out.splitlines()[-1], err
    assert wait_for(lambda: run.id not in names.leftovers(), 5)
    one_line_exit_2(oomemu("stop", run.id), f"no run {run.id}")


def test_a_run_inside_another_program_is_not_stopped():
    """A zone whose supervisor is this test process (a run started by a library user):
    the process is the owner's and started when the zone says, but not 'oomemu run'."""
    me = psutil.Process()
    run_id = f"{os.getpid()}-0e14"
    zone = make_zone(run_id, os.getpid(), ctime=me.create_time())
    try:
        assert run_id in oomemu("runs").stdout
        one_line_exit_2(oomemu("stop", run_id), "was not started by 'oomemu run'")
    finally:
        zone.close()
        unlink_zone(run_id)


def test_a_pid_that_is_no_longer_the_tasks_is_not_signalled(tmp_path):
    """As after pid reuse: the task's mm names a process that is not its worker (a
    sleep of the same user's). inject must refuse, and the sleep must not notice."""
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        with HeldRun(write_scenario(tmp_path, CALM, "calm"), "timeout") as run:
            mm = Mm(names.mm(run.id, 1))
            real = mm.pid
            try:
                mm.pid = sleeper.pid
                for action in ("stop", "crash", "cont"):
                    one_line_exit_2(oomemu("inject", run.id, action, "idle"),
                                    f"task idle (pid {sleeper.pid}) of run {run.id} is gone")
                assert ps_rows(run.id)["idle"]["STATE"] == "crashed"
                assert psutil.Process(sleeper.pid).status() != psutil.STATUS_STOPPED
                assert sleeper.poll() is None
            finally:
                mm.pid = real
                mm.close()
            run.stop()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_supervisor_pid_started_at_another_time_is_not_the_runs():
    """A zone naming this very process, but another start time (as after pid reuse):
    the run has ended, and stop does not send SIGINT here."""
    run_id = f"{os.getpid()}-0e15"
    zone = make_zone(run_id, os.getpid(), ctime=psutil.Process().create_time() - 3600)
    try:
        assert run_id not in oomemu("runs").stdout
        one_line_exit_2(oomemu("stop", run_id), f"run {run_id} has ended")
    finally:
        zone.close()
        unlink_zone(run_id)
