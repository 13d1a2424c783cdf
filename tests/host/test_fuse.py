"""SlowFs on this machine's kernel: a READ that waits on a gate is a real D state.

What the kernel (6.18) was seen to do, and these tests hold it to:
* a task reading, or faulting on a MAP_PRIVATE page of, a gated file sits in D
  state ("disk-sleep") until the gate opens, then gets zeros;
* a pread of /proc/PID/mem over such a page holds PID's mmap_lock for read
  meanwhile: PID's own mmap (a writer) waits in D state behind it;
* a SIGKILLed reader does NOT die at once: the server has already read its
  request, so the kernel waits the reply out; it dies when the gate opens;
* close() and cleanup_leftovers() leave no mount, no directory, no stuck task.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from emulator.errors import EnvironmentProblem
from emulator.host import fuse
from emulator.host.fuse import SlowFs, cleanup_leftovers, mounts
from emulator.runtime import names
from tests.helpers import end_process, read_line, spawn, wait_for

pytestmark = pytest.mark.timeout(30)

MiB = 1 << 20


def _environment_missing() -> str | None:
    try:
        fuse.check_environment()
    except EnvironmentProblem as e:
        return str(e)
    return None


needs_fuse = pytest.mark.skipif(_environment_missing() is not None, reason=str(_environment_missing()))


def our_mounts() -> list[fuse.Mount]:
    return [m for m in mounts() if m.source.startswith(names.PREFIX + ".")]


@pytest.fixture
def parent(tmp_path):
    """A mount points' parent; after the test: none of our mounts, no entry left in it."""
    before = set(our_mounts())
    yield str(tmp_path)
    left = [m for m in our_mounts() if m not in before]
    for m in left:                                   # fail, but leave the machine clean
        fuse.abort_connection(m.minor, os.path.dirname(m.point), "1-0000")
        fuse._umount_lazy(m.point)
    entries = sorted(os.listdir(tmp_path))
    for e in entries:
        os.rmdir(tmp_path / e)
    assert not left, f"mounts left behind: {left}"
    assert not entries, f"left in the mount points' parent: {entries}"


@pytest.fixture
def fs(parent):
    with SlowFs(parent, names.new_run_id()) as slow:
        yield slow
    assert slow.errors == []


def python(code: str) -> subprocess.Popen:
    """A child python running ``code``, killed with the session; stdout a pipe of bytes."""
    return spawn([sys.executable, "-c", textwrap.dedent(code)], sig=signal.SIGKILL, text=False)


def status(pid: int) -> str | None:
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return None


def in_d_state(pid: int, timeout: float = 3.0) -> bool:
    return wait_for(lambda: status(pid) == psutil.STATUS_DISK_SLEEP, timeout)


READER = """
    import os, sys
    fd = os.open(sys.argv[1], os.O_RDONLY)
    data = os.pread(fd, 4096, 0)
    print(len(data), sum(data), flush=True)
"""


def reader(path: str) -> subprocess.Popen:
    return spawn([sys.executable, "-c", textwrap.dedent(READER), path], sig=signal.SIGKILL, text=False)


@needs_fuse
def test_a_reader_sits_in_d_state_until_the_gate_opens(fs):
    path = fs.add_file("slow", MiB)
    seen = []
    fs.on_read = lambda name, pid: seen.append((name, pid))
    fs.gate("slow", None)
    r = reader(path)
    try:
        assert fs.wait_held(r.pid, 5), "the READ never reached the server"
        assert in_d_state(r.pid), status(r.pid)
        assert r.poll() is None
        fs.open_gate("slow")
        out, _ = r.communicate(timeout=5)
        assert out.split() == [b"4096", b"0"] and r.returncode == 0
        assert ("slow", r.pid) in seen
    finally:
        end_process(r)


@needs_fuse
def test_a_timed_gate_answers_at_its_time(fs):
    path = fs.add_file("timed", 4096)
    start = time.monotonic()
    fs.gate("timed", start + 0.3)
    r = reader(path)
    try:
        out, _ = r.communicate(timeout=5)
        assert out.split() == [b"4096", b"0"]
        assert time.monotonic() - start >= 0.3
    finally:
        end_process(r)


@needs_fuse
def test_a_fault_on_a_private_mapping_waits_in_d_state(fs):
    path = fs.add_file("mapped", MiB)
    fs.gate("mapped", None)
    m = python(f"""
        import mmap, os
        fd = os.open({path!r}, os.O_RDONLY)
        m = mmap.mmap(fd, {MiB}, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
        print("mapped", flush=True)
        print("touched", m[4096 * 3], flush=True)
    """)
    try:
        assert read_line(m, 5) == "mapped\n"
        assert fs.wait_held(m.pid, 5) and in_d_state(m.pid), status(m.pid)
        fs.open_gate("mapped")
        assert read_line(m, 5) == "touched 0\n"
    finally:
        end_process(m)


@needs_fuse
def test_a_proc_mem_reader_holds_the_mappers_mmap_lock_for_read(fs):
    """The cross-check's read hold: while another task's pread of /proc/M/mem waits on
    a page of M's mapping, M's mmap (which needs mmap_lock for write) waits in D state."""
    path = fs.add_file("held", MiB)
    fs.gate("held", None)
    m = spawn([sys.executable, "-c", textwrap.dedent(f"""
        import mmap, os, sys
        fd = os.open({path!r}, os.O_RDONLY)
        m = mmap.mmap(fd, {MiB}, mmap.MAP_PRIVATE, mmap.PROT_READ)
        line = next(l for l in open("/proc/self/maps").read().splitlines() if l.endswith({path!r}))
        print(int(line.split("-")[0], 16), flush=True)
        sys.stdin.readline()
        anon = mmap.mmap(-1, 4096)                  # needs mmap_lock for write
        print("mmap done", flush=True)
    """)], sig=signal.SIGKILL, text=False, stdin=subprocess.PIPE)
    r = None
    try:
        addr = int(read_line(m, 5))
        r = python(f"""
            import os
            fd = os.open("/proc/{m.pid}/mem", os.O_RDONLY)
            print(len(os.pread(fd, 4096, {addr})), flush=True)
        """)
        assert fs.wait_held(r.pid, 5), "the /proc/PID/mem read never reached the server"
        assert in_d_state(r.pid)
        m.stdin.write(b"go\n")
        m.stdin.flush()
        assert in_d_state(m.pid), f"mmap did not wait for the read hold: {status(m.pid)}"
        assert fs.held() == [r.pid]                 # M itself never read the file
        fs.open_gate("held")
        assert read_line(r, 5) == "4096\n"
        assert read_line(m, 5) == "mmap done\n"
    finally:
        for p in (r, m):
            if p is not None:
                end_process(p)


@needs_fuse
def test_a_sigkilled_reader_dies_when_the_gate_opens(fs):
    """The kernel waits out a request the server has already read, even for a SIGKILLed
    task (request_wait_answer's last, uninterruptible wait): it dies on the reply."""
    path = fs.add_file("victim", MiB)
    fs.gate("victim", None)
    r = reader(path)
    try:
        assert fs.wait_held(r.pid, 5) and in_d_state(r.pid)
        r.kill()
        with pytest.raises(subprocess.TimeoutExpired):
            r.wait(0.3)                             # still there: in D state, SIGKILL pending
        assert status(r.pid) == psutil.STATUS_DISK_SLEEP
        fs.open_gate("victim")
        assert r.wait(5) == -signal.SIGKILL
        assert wait_for(lambda: fs.held() == [], 2)
    finally:
        end_process(r)


@needs_fuse
def test_close_with_readers_still_waiting_leaves_nothing(parent):
    fs = SlowFs(parent, names.new_run_id())
    readers = []
    try:
        for i in range(3):
            path = fs.add_file(f"f{i}", MiB)
            fs.gate(f"f{i}", None)
            readers.append(reader(path))
        killed = readers[0]
        for r in readers:
            assert fs.wait_held(r.pid, 5)
        killed.kill()
        fs.close()
        assert killed.wait(5) == -signal.SIGKILL
        for r in readers[1:]:
            r.communicate(timeout=5)                # answered, or failed: either way gone
        assert not any(m.point == fs.path for m in mounts())
        assert not os.path.exists(fs.path)
        fs.close()                                  # idempotent
    finally:
        fs.close()
        for r in readers:
            end_process(r)


@needs_fuse
def test_cleanup_leftovers_after_the_owner_was_sigkilled(parent):
    owner = python(f"""
        import os, sys, time
        from emulator.host.fuse import SlowFs
        from emulator.runtime import names
        fs = SlowFs({parent!r}, names.new_run_id())
        path = fs.add_file("slow", {MiB})
        fs.gate("slow", None)
        print(path, flush=True)
        time.sleep(60)
    """)
    r = None
    with SlowFs(parent, names.new_run_id()) as alive:       # a live run's mount: not touched
        try:
            path = read_line(owner, 10).strip()
            r = reader(path)
            assert wait_for(lambda: status(r.pid) == psutil.STATUS_DISK_SLEEP, 5)
            owner.kill()
            owner.wait(5)
            # The owner's death closed its /dev/fuse fd: the connection is aborted, the reader freed.
            r.wait(5)
            point = os.path.dirname(path)
            assert any(m.point == point for m in mounts())
            done = cleanup_leftovers(parents=(parent,))
            assert any("unmounted " + point in line for line in done), done
            assert not any(m.point == point for m in mounts())
            assert not os.path.exists(point)
            assert os.path.ismount(alive.path)
            assert cleanup_leftovers(parents=(parent,)) == []
        finally:
            end_process(owner)
            if r is not None:
                end_process(r)


@needs_fuse
def test_cleanup_removes_a_mount_point_left_unmounted(parent):
    dead = subprocess.Popen(["true"])
    dead.wait()
    point = os.path.join(parent, fuse.mountpoint_name(f"{dead.pid}-abcd"))
    os.mkdir(point)
    assert cleanup_leftovers(parents=(parent,)) == [f"fuse: removed {point}"]
    assert not os.path.exists(point)


def test_a_user_without_root_is_told_in_one_line(tmp_path):
    if os.geteuid() != 0:
        with pytest.raises(EnvironmentProblem, match="needs root"):
            SlowFs(str(tmp_path), names.new_run_id())
        return
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os
        from emulator.errors import EnvironmentProblem
        from emulator.host.fuse import SlowFs
        os.setgid(65534); os.setuid(65534)          # after the imports: nobody may not read them
        try:
            SlowFs(%r, "1-abcd")
        except EnvironmentProblem as e:
            print(e)
    """ % str(tmp_path))], capture_output=True, text=True, timeout=20, cwd=os.getcwd())
    assert out.stdout.count("\n") == 1 and "needs root" in out.stdout, out
    assert os.listdir(tmp_path) == []


@needs_fuse
def test_close_aborts_the_connection_when_the_server_is_wedged(parent):
    """A server that cannot answer (here: stuck in a caller's on_read) must not leave a task
    in D state: close() aborts the connection through fusectl, and the reader gets an error."""
    release = threading.Event()
    fs = SlowFs(parent, names.new_run_id(), on_read=lambda name, pid: release.wait(10))
    fs.stop_timeout = 0.2
    r = None
    try:
        path = fs.add_file("wedged", MiB)
        fs.gate("wedged", None)
        r = reader(path)
        assert fs.wait_held(r.pid, 5) and in_d_state(r.pid)
        fs.close()
        out, _ = r.communicate(timeout=5)
        assert r.returncode != 0 and out == b""     # ENOTCONN, not data
        assert not any(m.point == fs.path for m in mounts()) and not os.path.exists(fs.path)
    finally:
        release.set()
        fs._thread.join(5)
        assert not fs._thread.is_alive()
        fs.close()
        if r is not None:
            end_process(r)
