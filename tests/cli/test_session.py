"""The suite's own promise: nothing a test starts outlives the session, a dead
session's leftovers are swept at the next start, and a leak is a failure.

Each test here runs a small pytest session of its own (the suite's conftest as
a plugin, the suite's pytest configuration) and looks at what it leaves.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import (REPO, end_process, oomemu_args, read_line, session_processes, spawn,
                           started, sweep_dead_sessions, wait_for, write_scenario)

pytestmark = pytest.mark.timeout(90)

IDLE = """
    memory_mb = 64
    [[task]]
    name = "victim"
      [[task.vma]]
      kind = "anon"
      mb = 8
    [[task]]
    name = "other"
      [[task.vma]]
      kind = "anon"
      mb = 4
"""


def shm_of(prefix):
    return [e for e in os.listdir("/dev/shm") if e.startswith((prefix + ".", "sem." + prefix + "."))]


def start_session(tmp_path, body: str) -> subprocess.Popen:
    """``pytest`` on one test file, with this suite's conftest and configuration."""
    test = tmp_path / "test_inner.py"
    test.write_text(textwrap.dedent(body))
    return spawn([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", os.path.join(REPO, "pyproject.toml"),
                  "--rootdir", REPO, "-p", "no:cacheprovider", "-q", "-s", str(test)], cwd=REPO)


def test_a_session_killed_by_its_timeout_takes_its_runs_along(tmp_path):
    """pytest-timeout ends the session with os._exit: no finally, no fixture teardown.
    The held run's supervisor (SIGTERM: it tears down), its workers and an
    `oomemu inject` hold must still go, and the run's /dev/shm objects with them."""
    scenario = write_scenario(tmp_path, IDLE, "idle")
    session = start_session(tmp_path, f"""
        import threading
        import pytest
        from tests.helpers import HeldRun, oomemu_args, read_line, spawn

        @pytest.mark.timeout(6)
        def test_hangs():
            run = HeldRun({scenario!r}, "timeout")
            holder = spawn(oomemu_args("inject", run.id, "hold-mmap-sem", "victim"))
            assert "holding" in read_line(holder)
            print("READY", flush=True)
            threading.Event().wait(120)              # until pytest-timeout ends the session
    """)
    try:
        prefix = f"oomemu_test{session.pid}"
        assert "READY" in read_line(session, 60)
        procs = session_processes(prefix)
        kinds = [" ".join(p.cmdline()) for p in procs]
        assert sum("workers.task" in k for k in kinds) == 2, kinds
        assert sum(" run " in k and "--hold" in k for k in kinds) == 1, kinds
        assert sum(" inject " in k for k in kinds) == 1, kinds
        assert shm_of(prefix)
        out, err = session.communicate(timeout=60)
        assert session.returncode == 1 and "Timeout" in out + err, out + err
        assert wait_for(lambda: not session_processes(prefix), timeout=15), \
            [" ".join(p.cmdline()) for p in session_processes(prefix)]
        assert wait_for(lambda: not shm_of(prefix), timeout=15), shm_of(prefix)
    finally:
        end_process(session)
        sweep_dead_sessions()


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_the_next_session_sweeps_what_a_dead_one_left(tmp_path):
    """A held run of a dead session with no tie to it (as an older suite left them)
    and a /dev/shm object of its own are swept; a live session's are left alone."""
    scenario = write_scenario(tmp_path, IDLE, "idle")
    dead = f"oomemu_test{dead_pid()}"
    stray = f"/dev/shm/{dead}.{os.getpid()}-beef.zone"
    with started(["sleep", "60"]) as live_session, \
            started(oomemu_args("run", scenario, "--hold"), env=dict(os.environ, OOMEMU_PREFIX=dead),
                    start_new_session=True) as orphan:
        live = f"oomemu_test{live_session.pid}"
        live_file = f"/dev/shm/{live}.{live_session.pid}-beef.zone"
        try:
            open(stray, "w").close()
            open(live_file, "w").close()
            with started(["sleep", "60"], env=dict(os.environ, OOMEMU_PREFIX=live)) as live_proc:
                assert read_line(orphan).startswith("oomemu: run ")
                # the supervisor, two workers, the process writing the held run's door
                assert wait_for(lambda: len(session_processes(dead)) == 4, timeout=20)
                before = shm_of(dead)
                assert len(before) > 1
                swept = sweep_dead_sessions()
                assert not session_processes(dead) and not shm_of(dead)
                assert stray in swept and f"process {orphan.pid}" in swept    # (the run removed its own)
                assert orphan.poll() is not None          # (reaped by the sweep's wait: no exit code here)
                assert live_proc.poll() is None and os.path.exists(live_file)
        finally:
            for path in (stray, live_file):
                if os.path.exists(path):
                    os.unlink(path)


def test_leaks_fail_the_test_or_the_module_that_made_them(tmp_path):
    session = start_session(tmp_path, """
        import os
        import subprocess
        import sys
        import pytest
        from emulator.runtime import names

        SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]
        kept = []                                      # (no ResourceWarning for a lost Popen)

        @pytest.fixture(scope="module")
        def leaky_module_fixture():
            kept.append(subprocess.Popen(SLEEP))       # never ended
            yield

        def test_uses_the_module_fixture(leaky_module_fixture):
            pass

        def test_leaves_a_process():
            kept.append(subprocess.Popen(SLEEP))

        def test_leaves_a_shm_object():
            open(os.path.join(names.SHM_DIR, names.PREFIX[0:] + ".1-abcd.zone"), "w").close()

        def test_clean():
            subprocess.run([sys.executable, "-c", "pass"], check=True)
    """)
    try:
        prefix = f"oomemu_test{session.pid}"
        out, err = session.communicate(timeout=80)
        assert session.returncode == 1, out + err
        assert "processes left behind by this test" in out and "left in /dev/shm by this test" in out, out
        assert "processes left behind by module test_inner" in out, out
        assert "4 passed, 3 errors" in out, out
        assert not session_processes(prefix) and not shm_of(prefix)    # removed, not only reported
    finally:
        end_process(session)
