"""The door, as the author of a daemon of their own would use it: a held run started
with the command line in one process, its /proc as files, and ``oomemu kill`` and
``oomemu mrelease`` from others; the example daemon (examples/door_daemon.py) run
as a separate program that knows only the door's path and how to call oomemu.

Every wait is bounded and for a condition; the door is refreshed every 20 ms of
real time, so what a command did shows there shortly after it returns.
"""

import os
import re
import selectors
import signal
import sys
import time

import psutil
import pytest

from emulator.runtime import names
from emulator.runtime.cleanup import door_writer_alive, is_door_writer, remove_dead_doors
from tests.helpers import HeldRun, oomemu, oomemu_args, read_line, started, wait_for, write_scenario

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAEMON = os.path.join(ROOT, "examples", "door_daemon.py")
MB = 1024

# Two idle tasks: 60 MB of 128 used, MemAvailable 53%.
IDLE = """
    memory_mb = 128
    min_kills = 0
    [[task]]
    name = "victim"
    vma = [{ kind = "anon", mb = 40 }]
    [[task]]
    name = "bystander"
    vma = [{ kind = "anon", mb = 20 }]
"""

# stuck is in D state (uninterruptible work) for 10 minutes: killed, it cannot exit meanwhile.
STUCK = """
    memory_mb = 128
    min_kills = 0
    [[task]]
    name = "stuck"
    vma = [{ kind = "anon", mb = 40 }]
    step = [{ op = "busy", ms = 600000 }]
    [[task]]
    name = "idle"
    vma = [{ kind = "anon", mb = 20 }]
"""


@pytest.fixture
def doors(tmp_path, monkeypatch):
    """Where this test's runs put their doors (the runs inherit OOMEMU_DOOR_DIR)."""
    base = str(tmp_path / "doors")
    monkeypatch.setenv("OOMEMU_DOOR_DIR", base)
    return base


def door_from_banner(run: HeldRun) -> str:
    """The door's path, from the held run's banner, as a user reads it there."""
    while True:
        line = read_line(run.proc, 30)
        assert line, "the banner ended without naming the door"
        if "its door" in line:
            return line.rsplit(": ", 1)[1].strip()


def read_err_line(proc, timeout: float = 30.0) -> str:
    """The next line of ``proc``'s stderr, read from the pipe itself (as helpers.read_line
    reads stdout), so that ``communicate`` later gets the rest."""
    fd, data, deadline = proc.stderr.fileno(), b"", time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"no line on the stderr of pid {proc.pid} within {timeout}s (got {data!r})")
            chunk = os.read(fd, 1)
            if not chunk:
                break
            data += chunk
    return data.decode()


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def meminfo(door: str) -> dict[str, int]:
    return {k: int(v.split()[0]) for k, _, v in (l.partition(":") for l in read(f"{door}/meminfo").splitlines())}


def pid_of(door: str, name: str) -> int:
    rows = [l.split("\t") for l in read(f"{door}/tasks").splitlines()[1:]]
    return next(int(r[0]) for r in rows if r[-1] == name)


def test_a_daemon_of_ones_own_kills_through_the_door_and_sees_the_memory_come_back(tmp_path, doors):
    with HeldRun(write_scenario(tmp_path, IDLE, "idle")) as run:
        door = door_from_banner(run)
        assert door == names.door(run.id, doors)
        assert wait_for(lambda: os.path.exists(f"{door}/tasks"), 10)
        victim = pid_of(door, "victim")
        before = meminfo(door)
        assert read(f"{door}/{victim}/status").startswith("Name:\tvictim\nState:\tR (running)\n")
        assert f"; door {door}" in oomemu("ps", run.id).stdout.splitlines()[0]
        env = {"PATH": os.environ["PATH"], "OOMEMU_PREFIX": os.environ["OOMEMU_PREFIX"]}
        with started([sys.executable, DAEMON, door, "--min-available-percent", "60", "--once",
                      "--oomemu", f"{sys.executable} -m emulator"], env=env, cwd=ROOT) as daemon:
            out, err = daemon.communicate(timeout=60)
        assert daemon.returncode == 0, err
        assert f"killing victim (pid {victim}, oom_score " in out, out
        assert f"oomemu kill: SIGKILL sent to victim (pid {victim}) of run {run.id}" in out
        gone = re.search(r"victim \(pid \d+\) is gone: MemAvailable (\d+) kB -> (\d+) kB .* MemFree (\d+) kB -> "
                         r"(\d+) kB", out)
        assert gone, out
        avail_before, avail_after, free_before, free_after = map(int, gone.groups())
        assert avail_after - avail_before == free_after - free_before == 40 * MB     # its rss, all anon
        assert not os.path.exists(f"{door}/{victim}")
        after = meminfo(door)
        assert after["MemFree"] - before["MemFree"] == 40 * MB and after["AnonPages"] == 20 * MB
        assert oomemu("kill", run.id, "bystander").returncode == 0
        p = oomemu("mrelease", run.id, "bystander")            # v4.17 predates process_mrelease
        assert (p.returncode, p.stderr) == (4, "oomemu mrelease: process_mrelease(bystander) failed: ENOSYS: "
                                               "the run's kernel (v4.17) has no process_mrelease (Linux 5.15+)\n")
        out = run.stop()
    assert "oomemu[" in out and f"] sent SIGKILL to pid {victim} (victim)" in out
    assert not os.path.exists(door) and os.listdir(doors) == []


def test_mrelease_reaps_a_dying_task_in_the_callers_context(tmp_path, doors):
    with HeldRun(write_scenario(tmp_path, STUCK, "stuck"), "v6.6") as run:
        door = door_from_banner(run)
        assert wait_for(lambda: os.path.exists(f"{door}/tasks"), 10)
        stuck = pid_of(door, "stuck")
        p = oomemu("mrelease", run.id, "idle")                      # not dying
        assert (p.returncode, p.stdout) == (4, "")
        assert re.fullmatch(r"oomemu mrelease: process_mrelease\(idle\) failed: EINVAL: task idle \(pid \d+\) "
                            r"is not dying\n", p.stderr), p.stderr
        p = oomemu("kill", run.id, str(stuck))                     # by pid
        assert (p.returncode, p.stdout) == (0, f"oomemu kill: SIGKILL sent to stuck (pid {stuck}) of run {run.id}\n")
        free = meminfo(door)["MemFree"]
        p = oomemu("mrelease", run.id, "stuck")
        assert (p.returncode, p.stdout) == (0, f"oomemu mrelease: stuck (pid {stuck}) of run {run.id}: "
                                               f"reaped {40 * MB}kB\n"), p.stderr
        # its memory is back while it is still in D state: the door shows both
        assert wait_for(lambda: meminfo(door)["MemFree"] == free + 40 * MB, 10)
        status = read(f"{door}/{stuck}/status")
        assert "State:\tD (disk sleep)\n" in status and re.search(r"VmRSS:\s+0 kB", status)
        out = run.stop()
    assert f"process_mrelease(pid {stuck} (stuck)): reaped {40 * MB}kB" in out
    assert "process_mrelease(pid" in out and "(idle)): -EINVAL" in out


def test_kill_and_mrelease_errors(tmp_path, doors):
    with HeldRun(write_scenario(tmp_path, IDLE, "idle"), "v6.6") as run:
        door = door_from_banner(run)
        assert wait_for(lambda: os.path.exists(f"{door}/tasks"), 10)
        for cmd in ("kill", "mrelease"):                            # a user's mistake: one line, exit 2
            p = oomemu(cmd, run.id, "nosuch")
            assert (p.returncode, p.stdout) == (2, "")
            assert p.stderr == f"oomemu: error: run {run.id} has no task 'nosuch' (tasks: victim, bystander)\n"
        p = oomemu("kill", run.id, "victim", "--signal", "SIGSTOP")
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1
        p = oomemu("kill", "1-abcd", "victim")
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1
        bystander = pid_of(door, "bystander")
        assert oomemu("kill", run.id, "bystander").returncode == 0
        assert wait_for(lambda: not os.path.exists(f"{door}/{bystander}"), 10)
        p = oomemu("kill", run.id, "bystander")                    # it has exited
        assert (p.returncode, p.stdout) == (4, "")
        assert p.stderr.startswith("oomemu kill: kill(bystander, SIGKILL) failed: ESRCH: task bystander ")
        p = oomemu("mrelease", run.id, "bystander")
        assert (p.returncode, p.stderr) == (4, "oomemu mrelease: process_mrelease(bystander) failed: ESRCH: "
                                               "task bystander has no mm\n")
        run.stop()


def test_ctrl_c_while_mrelease_waits_for_the_mmap_sem_is_eintr(tmp_path, doors):
    with HeldRun(write_scenario(tmp_path, IDLE, "idle"), "v6.6") as run:
        door_from_banner(run)
        with started(oomemu_args("inject", run.id, "hold-mmap-sem", "victim", "--seconds", "600")) as holder:
            assert "holding the mmap_sem of victim" in read_line(holder)
            assert oomemu("kill", run.id, "victim").returncode == 0   # it waits for the holder in mmput
            with started(oomemu_args("mrelease", run.id, "victim")) as mrelease:
                line = read_err_line(mrelease)
                assert line == "oomemu mrelease: waiting for the mmap_sem of victim (Ctrl-C: EINTR) ...\n"
                mrelease.send_signal(signal.SIGINT)
                out, err = mrelease.communicate(timeout=30)
            assert (mrelease.returncode, out) == (4, "")
            assert err == ("oomemu mrelease: process_mrelease(victim) failed: EINTR: interrupted waiting for "
                           "its mmap_sem\n")
            holder.send_signal(signal.SIGINT)
            holder.communicate(timeout=30)
        out = run.stop()
    assert "(victim)): -EINTR" in out


def test_the_door_goes_with_its_run_and_cleanup_removes_one_a_killed_run_left(tmp_path, doors):
    scenario = write_scenario(tmp_path, IDLE, "idle")
    mine = str(tmp_path / "mydoor")
    p = oomemu("run", scenario, "--door", str(tmp_path), "--quiet")     # exists already
    assert p.returncode == 2 and "exists already" in p.stderr and len(p.stderr.splitlines()) == 1
    p = oomemu("run", scenario, "--door", mine)
    assert p.returncode == 0 and f"door (its /proc as files, see docs/door.md): {mine}" in p.stdout
    assert not os.path.exists(mine)
    with HeldRun(scenario) as run:                        # the supervisor SIGKILLed: its door writer
        door = door_from_banner(run)                      # (PDEATHSIG: SIGTERM) removes the door itself
        assert wait_for(lambda: os.path.exists(f"{door}/tasks"), 10)
        run.proc.kill()
        run.proc.wait(30)
        assert wait_for(lambda: not door_writer_alive(run.id, os.getuid()), 10)
        assert wait_for(lambda: not os.path.exists(door), 10)
        oomemu("cleanup")
    with HeldRun(scenario) as run:                        # both SIGKILLed (the machine's OOM killer,
        door = door_from_banner(run)                      # say): the door stays, for cleanup
        assert wait_for(lambda: os.path.exists(f"{door}/tasks"), 10)
        writer = next(p for p in psutil.process_iter(["cmdline"])
                      if is_door_writer(p.info["cmdline"] or [], run.id))
        writer.kill()
        assert wait_for(lambda: not door_writer_alive(run.id, os.getuid()), 10)
        run.proc.kill()                                   # SIGKILL: the supervisor tears nothing down
        run.proc.wait(30)
        assert os.path.exists(f"{door}/meminfo")
        p = oomemu("cleanup")
        assert p.returncode == 0 and f"oomemu cleanup: removed door {door}\n" in p.stdout, p.stdout
        assert not os.path.exists(door) and os.listdir(doors) == []
        assert run.id not in names.leftovers()


def _dead_run_id() -> str:
    pid = next(p for p in range(4_000_000, 4_100_000) if not psutil.pid_exists(p))
    return f"{pid}-abcd"


def test_cleanup_leaves_alone_what_is_not_laid_out_as_a_door(tmp_path):
    base = tmp_path / "doors"
    base.mkdir()
    target = tmp_path / "precious"
    target.mkdir()
    (target / "meminfo").write_text("keep me\n")
    odd = base / f"{names.PREFIX}.{_dead_run_id()}"
    odd.mkdir()
    (odd / "meminfo").write_text("x\n")
    (odd / "notes.txt").write_text("not a door's\n")
    link = base / f"{names.PREFIX}.{_dead_run_id().replace('abcd', 'abce')}"
    link.symlink_to(target)
    inner = base / f"{names.PREFIX}.{_dead_run_id().replace('abcd', 'abcf')}"
    (inner / "pressure").mkdir(parents=True)
    (inner / "123").mkdir()
    (inner / "123" / "status").symlink_to(target / "meminfo")     # a symlink where a file should be
    done = remove_dead_doors(str(base))
    assert done == [f"left alone {odd}: not laid out as a door (notes.txt in it)",
                    f"left alone {inner}: not laid out as a door (status in it)"]
    assert (target / "meminfo").read_text() == "keep me\n" and link.is_symlink()
    good = base / f"{names.PREFIX}.{_dead_run_id().replace('abcd', 'abc0')}"
    (good / "pressure").mkdir(parents=True)
    (good / "77").mkdir()
    for rel in ("run", "meminfo", "tasks", "pressure/memory", "77/status", "77/oom_score", "77/.oom_score.new"):
        (good / rel).write_text("x\n")
    assert sorted(remove_dead_doors(str(base))) == sorted(done + [f"removed door {good}"])
    assert not good.exists()


# main and its thread share one mm (CLONE_VM): the mm is freed only when both are dying.
SHARED = """
    memory_mb = 128
    min_kills = 0
    [[task]]
    name = "main"
    vma = [{ kind = "anon", mb = 40 }]
    step = [{ op = "busy", ms = 600000 }]
    [[task]]
    name = "thread"
    mm = "main"
    step = [{ op = "busy", ms = 600000 }]
"""


def test_mrelease_needs_every_user_of_the_mm_dying(tmp_path, doors):
    with HeldRun(write_scenario(tmp_path, SHARED, "shared"), "v6.6") as run:
        door_from_banner(run)
        assert oomemu("kill", run.id, "main").returncode == 0
        p = oomemu("mrelease", run.id, "main")
        assert p.returncode == 4 and re.fullmatch(r"oomemu mrelease: process_mrelease\(main\) failed: EINVAL: task "
                                                  r"main \(pid \d+\) shares its mm with a task that is not dying\n",
                                                  p.stderr), p.stderr
        assert oomemu("kill", run.id, "thread").returncode == 0
        p = oomemu("mrelease", run.id, "thread")                    # through the thread: the same mm
        assert p.returncode == 0 and p.stdout.endswith(f": reaped {40 * MB}kB\n"), p.stderr
        run.stop()
