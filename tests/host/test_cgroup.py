"""The run's memory cgroups on this machine's kernel: limits that bind, the kernel's OOM
killer inside them, its log lines on the run's clock, and nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from emulator.errors import EnvironmentProblem
from emulator.host import cgroup, kmsg
from emulator.host.cgroup import HostMemcg, HostMemcgs
from emulator.runtime import names
from tests.helpers import end_process, read_line, spawn, wait_for

pytestmark = pytest.mark.timeout(30)

MB = 1024 * 1024
# The interpreter's own anonymous pages, touched before the join and so charged to the
# memcg it started in, count in the rss the kernel prints but not against the limit.
STARTUP_KB = 16 * 1024

# Waits for a line on stdin (the test joins it to a group first), then touches N MB page by
# page; if it survives, holds them until the next line.
TOUCH = textwrap.dedent("""
    import mmap, sys
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    n = int(sys.argv[1]) << 20
    sys.stdin.readline()
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)   # anon, not shmem
    for i in range(0, n, 4096):
        m[i] = 1
    sys.stdout.write("survived\\n"); sys.stdout.flush()
    sys.stdin.readline()                    # holds its memory until told
""")


_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def ended():
    """Every process a test starts is ended (and waited for) after it, whatever happened."""
    yield
    while _started:
        end_process(_started.pop())


def started(args, **kw) -> subprocess.Popen:
    p = spawn(args, sig=signal.SIGKILL, **kw)
    _started.append(p)
    assert read_line(p, 10).strip() == "ready"
    return p


def toucher(mb: int) -> subprocess.Popen:
    return started([sys.executable, "-c", TOUCH, str(mb)], stdin=subprocess.PIPE)


def go(p: subprocess.Popen) -> None:
    p.stdin.write("go\n")
    p.stdin.flush()


def sleeper() -> subprocess.Popen:
    return started([sys.executable, "-c", "import sys, time; print('ready', flush=True); time.sleep(60)"])


@pytest.fixture
def groups():
    made: list[HostMemcgs] = []

    def make(*args, **kw) -> HostMemcgs:
        g = HostMemcgs(names.new_run_id(), *args, **kw)
        made.append(g)
        return g
    yield make
    for g in made:
        assert g.remove() == []


def test_a_task_over_its_limit_is_killed_and_logged(memcg_ok, kmsg_ok, groups):
    """64 MB limit, a task touching 100 MB in it: the kernel kills it (oom_kill 1), and its
    "Killed process" line names its pid and comm, with its anon-rss, at a run time after t0
    and within a second of the moment the test saw it die."""
    t0 = time.monotonic()
    memcgs = groups(64 * MB)
    with kmsg.KernelLog(t0) as log:
        child = toucher(100)
        memcgs.join(child.pid, None)
        with open(f"/proc/{child.pid}/comm") as f:
            comm = f.read().strip()
        go(child)
        assert child.wait(10) == -signal.SIGKILL
        seen_dead = time.monotonic() - t0
        end_process(child)
        assert memcgs.oom_kill_count() == 1
        events: list[kmsg.OomEvent] = []
        wait_for(lambda: events.extend(kmsg.oom_events(log.read(), {child.pid})) or
                 any(isinstance(e.line, kmsg.OomKill) for e in events), timeout=5)
    kills = [e for e in events if isinstance(e.line, kmsg.OomKill)]
    assert len(kills) == 1, events
    kill = kills[0]
    assert (kill.line.pid, kill.line.comm) == (child.pid, comm)
    assert kill.line.memcg and kill.line.message == "Memory cgroup out of memory"
    assert 48 * 1024 <= kill.line.anon_rss_kb <= 64 * 1024 + STARTUP_KB
    assert 0 < kill.time <= seen_dead + 0.05 and seen_dead - kill.time < 1.0
    summary = [e.line for e in events if isinstance(e.line, kmsg.OomSummary)]
    assert summary and summary[0].constraint == "CONSTRAINT_MEMCG"
    assert summary[0].oom_memcg == "/" + os.path.basename(memcgs.path)
    assert [e.pid for e in events if isinstance(e.line, kmsg.OomInvoked)] == [child.pid]


def test_a_nested_group_limit_binds_before_its_parents(memcg_ok, kmsg_ok, groups):
    """inner (48 MB) under outer (128 MB) under the run's 256 MB: a task in inner touching
    100 MB is killed at inner's limit; the kernel's oom_memcg is inner and only inner counts
    the kill."""
    t0 = time.monotonic()
    memcgs = groups(256 * MB, [HostMemcg("outer", 128 * MB), HostMemcg("inner", 48 * MB, "outer")])
    with kmsg.KernelLog(t0) as log:
        child = toucher(100)
        memcgs.join(child.pid, "inner")
        go(child)
        assert child.wait(10) == -signal.SIGKILL
        end_process(child)
        events: list[kmsg.OomEvent] = []
        wait_for(lambda: events.extend(kmsg.oom_events(log.read(), {child.pid})) or
                 any(isinstance(e.line, kmsg.OomKill) for e in events), timeout=5)
    assert memcgs.oom_kill_count() == 1
    counts = {name: e.get("oom_kill", 0) for name, e in memcgs.events().items()}
    assert counts == {None: 0, "outer": 0, "inner": 1}
    kill = next(e.line for e in events if isinstance(e.line, kmsg.OomKill))
    assert 32 * 1024 <= kill.anon_rss_kb <= 48 * 1024 + STARTUP_KB
    summary = next(e.line for e in events if isinstance(e.line, kmsg.OomSummary))
    run_group = "/" + os.path.basename(memcgs.path)
    assert summary.oom_memcg == run_group + "/outer/inner" == summary.task_memcg


def test_a_task_within_its_limit_is_not_killed(memcg_ok, groups):
    """The same 100 MB in a group of 160 MB: no kill, and the group is charged for it."""
    memcgs = groups(160 * MB, [HostMemcg("roomy", 150 * MB)])
    child = toucher(100)
    memcgs.join(child.pid, "roomy")
    go(child)
    assert read_line(child, 10).strip() == "survived"
    assert memcgs.usage_bytes("roomy") >= 100 * MB
    assert memcgs.usage_bytes(None) >= memcgs.usage_bytes("roomy")
    end_process(child)
    assert memcgs.oom_kill_count() == 0


def test_remove_kills_what_is_left_and_removes_every_group(memcg_ok):
    """A stopped task in a child group and a sleeping one in the parent: remove() kills
    both and leaves no group; a second remove() has nothing to do."""
    memcgs = HostMemcgs(names.new_run_id(), 64 * MB, [HostMemcg("a", 32 * MB), HostMemcg("b", 16 * MB, "a")])
    stopped, asleep = sleeper(), sleeper()
    memcgs.join(stopped.pid, "b")
    memcgs.join(asleep.pid, None)
    os.kill(stopped.pid, signal.SIGSTOP)
    assert memcgs.remove() == []
    assert not os.path.exists(memcgs.path)
    assert stopped.wait(5) == asleep.wait(5) == -signal.SIGKILL
    assert memcgs.remove() == []


CREATOR = textwrap.dedent("""
    import sys, time
    from emulator.host.cgroup import HostMemcg, HostMemcgs
    from emulator.runtime import names
    g = HostMemcgs(names.new_run_id(), 64 << 20, [HostMemcg("a", 32 << 20)])
    g.join(int(sys.argv[1]), "a")
    print(g.path, flush=True)
    time.sleep(60)
""")


def test_cleanup_removes_the_groups_of_a_creator_that_was_sigkilled(memcg_ok):
    """A process makes its groups and puts a task in one, then is SIGKILLed:
    cleanup_leftovers() leaves them alone while it lives, then kills the task and removes
    them all once it is dead."""
    task = sleeper()
    creator = spawn([sys.executable, "-c", CREATOR, str(task.pid)], sig=signal.SIGKILL)
    _started.append(creator)
    path = read_line(creator, 10).strip()
    assert os.path.isdir(os.path.join(path, "a"))
    assert cgroup.cleanup_leftovers(names.PREFIX) == []        # its creator lives
    assert os.path.isdir(path)
    creator.kill()
    creator.wait(5)
    assert cgroup.cleanup_leftovers(names.PREFIX) == [path]
    assert not os.path.exists(path)
    assert task.wait(5) == -signal.SIGKILL


def test_oom_group_is_refused_on_cgroup_v1_before_anything_is_made(memcg_ok):
    if cgroup.find_memory_hierarchy().version != 1:
        pytest.skip("cgroup v2: memory.oom.group exists")
    before = cgroup.leftover_groups(names.PREFIX)
    with pytest.raises(EnvironmentProblem, match=r"memcg g: oom_group needs cgroup v2"):
        HostMemcgs(names.new_run_id(), 64 * MB, [HostMemcg("g", 32 * MB, None, True)])
    assert cgroup.leftover_groups(names.PREFIX) == before


def test_a_limit_that_cannot_be_set_is_one_line_and_leaves_nothing(memcg_ok):
    """A child limit above what v1 accepts (more than the parent's is fine; a negative one
    is not): EnvironmentProblem naming the knob, and the part made is removed."""
    before = cgroup.leftover_groups(names.PREFIX)
    with pytest.raises(EnvironmentProblem, match=r"cannot set memory\.(limit_in_bytes|max) of .*/a to -5"):
        HostMemcgs(names.new_run_id(), 64 * MB, [HostMemcg("a", -5)])
    assert cgroup.leftover_groups(names.PREFIX) == before


def test_no_memory_controller_is_one_line(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("25 1 0:22 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n")
    with pytest.raises(EnvironmentProblem, match="no memory cgroup controller is mounted"):
        cgroup.find_memory_hierarchy(str(mountinfo))


def test_a_line_written_to_the_log_is_read_on_the_runs_clock(kmsg_ok):
    """KernelLog reads only what comes after it opened, and puts it on the run's clock
    (the printk clock's offset from CLOCK_MONOTONIC measured at start)."""
    t0 = time.monotonic() - 10.0
    with kmsg.KernelLog(t0) as log:
        assert log.clock_checked and abs(log.printk_offset_s) < 0.05
        fd = os.open("/dev/kmsg", os.O_WRONLY)
        tag = f"{names.PREFIX}: test line {os.getpid()}"
        before = time.monotonic() - t0
        os.write(fd, f"<14>{tag}\n".encode())
        after = time.monotonic() - t0
        os.close(fd)
        got = []
        wait_for(lambda: got.extend(r for r in log.read() if r.text.endswith(tag)) or got, timeout=2)
    assert len(got) == 1 and got[0].facility == 1 and got[0].level == 6
    assert before - 0.005 <= got[0].time <= after + 0.005


def test_a_log_that_cannot_be_opened_is_one_line(tmp_path):
    with pytest.raises(EnvironmentProblem, match=r"cannot read the kernel log .*/kmsg: No such file"):
        kmsg.KernelLog(0.0, path=str(tmp_path / "kmsg"))


def test_a_group_that_is_there_already_is_refused_and_left_alone(memcg_ok):
    """A run id whose group exists (not made by this object): one line, and that group and
    its task are not touched."""
    first = HostMemcgs(names.new_run_id(), 64 * MB)
    try:
        task = sleeper()
        first.join(task.pid)
        with pytest.raises(EnvironmentProblem, match="cannot create the memory cgroup .*: File exists"):
            HostMemcgs(first.run_id, 64 * MB)
        assert os.path.isdir(first.path) and task.poll() is None
    finally:
        assert first.remove() == []
