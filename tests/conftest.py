"""Every test must leave no worker process and nothing in /dev/shm behind."""

from __future__ import annotations

import os

# Before anything imports emulator.names: this session's runs get names of
# their own, so that runs elsewhere on the machine neither confuse the leak
# checks nor get removed by them.
os.environ["OOMEMU_PREFIX"] = f"oomemu_test{os.getpid()}"

import signal

import psutil
import pytest

# A shell that starts the suite in the background (cmd &) hands it SIGINT
# ignored, and ignored signals survive exec: the runs the tests interrupt would
# not see Ctrl-C. Give this process, and so its children, the usual handling.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from emulator import names
from tests.helpers import shm_leftovers, wait_for, worker_processes


@pytest.fixture(autouse=True)
def nothing_leaks():
    before_shm = shm_leftovers()
    before_procs = {p.pid for p in worker_processes()}

    def new_workers():
        return [p for p in worker_processes() if p.pid not in before_procs]

    yield
    # A worker whose supervisor died gets SIGKILL from PR_SET_PDEATHSIG; give
    # the kernel a moment (bounded) to finish it before calling it a leak.
    wait_for(lambda: not new_workers(), timeout=3)
    procs, leaked_shm = new_workers(), shm_leftovers() - before_shm
    for p in procs:                       # fail, but do not poison the next test
        try:
            p.kill()
        except psutil.Error:
            pass
    for entry in leaked_shm:
        try:
            os.unlink(os.path.join(names.SHM_DIR, entry))
        except FileNotFoundError:
            pass
    assert not procs, f"worker processes left behind: {[p.pid for p in procs]}"
    assert not leaked_shm, f"left in /dev/shm: {sorted(leaked_shm)}"
