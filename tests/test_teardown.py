"""A run that ends badly still leaves nothing behind (or cleanup removes it)."""

import os
import signal
import subprocess
import sys

import pytest

from emulator import names
from tests.helpers import wait_for, worker_processes

pytestmark = pytest.mark.timeout(60)


def start_long_run():
    """livelock under timeout at speed 1: about 10 s of work, time enough to interrupt it."""
    p = subprocess.Popen([sys.executable, "-m", "emulator", "run", "livelock", "--policy", "timeout"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()                      # "oomemu: run <id>: ..." once set up
    run_id = line.split()[2].rstrip(":")
    assert names.run_pid(run_id) == p.pid, line
    mine = lambda: [w for w in worker_processes() if run_id in w.cmdline()]
    assert wait_for(lambda: len(mine()) == 3, timeout=20)
    return p, run_id, mine


def oomemu_cleanup():
    r = subprocess.run([sys.executable, "-m", "emulator", "cleanup"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_sigkilled_supervisor_takes_its_workers_along_and_cleanup_removes_the_rest():
    p, run_id, mine = start_long_run()
    try:
        p.kill()
        p.wait()
        # PR_SET_PDEATHSIG: the kernel kills the workers with their parent.
        assert wait_for(lambda: not mine(), timeout=1.0), "workers outlived their supervisor"
        left = names.leftovers().get(run_id, [])
        assert any(e.startswith("sem.") for e in left) and any(not e.startswith("sem.") for e in left)
        out = oomemu_cleanup()
        for entry in left:
            assert os.path.join(names.SHM_DIR, entry) in out
        assert run_id not in names.leftovers()
        assert "nothing left behind" in oomemu_cleanup()
    finally:
        p.stdout.close()
        p.stderr.close()


def test_cleanup_leaves_a_live_run_alone():
    p, run_id, mine = start_long_run()
    try:
        oomemu_cleanup()
        assert run_id in names.leftovers() and len(mine()) == 3
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
        p.stdout.close()
        p.stderr.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_run_tears_everything_down(sig):
    p, run_id, mine = start_long_run()
    p.send_signal(sig)
    p.wait(timeout=20)
    p.stdout.close()
    p.stderr.close()
    assert p.returncode != 0
    assert not mine()
    assert run_id not in names.leftovers()
