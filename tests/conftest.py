"""Nothing a test starts outlives the session; nothing a test leaves goes unnoticed.

* This session's runs carry ``OOMEMU_PREFIX=oomemu_test<pytest pid>``: in the
  names of their /dev/shm objects and in the environment of every process
  they start (supervisors, workers, ``oomemu inject``, a test's one-liner).
* At the start, what dead sessions left (their pid is gone) is swept:
  processes with their prefix, then their /dev/shm objects
  (``tests.helpers.sweep_dead_sessions``). A session killed by pytest-timeout
  ends with ``os._exit``, which runs no ``finally``; its children die with it
  (``PR_SET_PDEATHSIG``, see ``tests.helpers.spawn``), the rest waits here.
* Their doors (docs/door.md) go into a directory of the session's own,
  ``/tmp/oomemu_test<pytest pid>.doors`` (OOMEMU_DOOR_DIR), removed at its end
  (a dead session's, at the next start).
* Leak checks at three levels, each against a snapshot taken before its scope
  began: every test; every module (its snapshot is taken before the module's
  own fixtures start, so a module fixture that leaks is caught when the module
  ends); the session. A leak is a process of this session (its prefix in the
  environment, or a descendant of pytest, such as a forked child), a /dev/shm
  object of its prefix or a door that was not there at the snapshot. It is
  removed, then reported as a failure.
* Every test lives in the folder of its layer, and gets the layer's marker
  (``-m pure``, ``-m "pure or ipc"``...): tests/pure (no processes, no
  /dev/shm), tests/ipc (segments, semaphores, files in /dev/shm; no run),
  tests/runs (real runs through the Python API), tests/host (the machine's own
  kernel: memory cgroups, /dev/kmsg; root), tests/cli (``oomemu`` in a
  subprocess), tests/stress. A test file anywhere else is a usage error.
"""

from __future__ import annotations

import os

# Before anything imports emulator.names: this session's runs get names of
# their own, so that runs elsewhere on the machine neither confuse the leak
# checks nor get removed by them.
os.environ["OOMEMU_PREFIX"] = f"oomemu_test{os.getpid()}"
# ... and their doors (docs/door.md) a directory of their own, checked for leaks as /dev/shm is
DOORS = os.path.join("/tmp", f"oomemu_test{os.getpid()}.doors")
os.environ["OOMEMU_DOOR_DIR"] = DOORS

import glob
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

# A shell that starts the suite in the background (cmd &) hands it SIGINT
# ignored, and ignored signals survive exec: the runs the tests interrupt would
# not see Ctrl-C. Give this process, and so its children, the usual handling.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from tests.helpers import (remove_all, session_descendants, session_processes, shm_leftovers, sweep_dead_sessions,
                           wait_for)

_swept: list[str] = []


def pytest_configure(config):
    _swept.extend(sweep_dead_sessions(own=True))
    for path in glob.glob("/tmp/oomemu_test*.doors"):   # dead sessions' (os._exit skips unconfigure)
        pid = path[len("/tmp/oomemu_test"):-len(".doors")]
        if path == DOORS or (pid.isdigit() and not psutil.pid_exists(int(pid))):
            shutil.rmtree(path, ignore_errors=True)          # (a symlink is refused, not followed)


def pytest_unconfigure(config):
    shutil.rmtree(DOORS, ignore_errors=True)


def doors() -> set[str]:
    try:
        return set(os.listdir(DOORS))
    except FileNotFoundError:
        return set()


# The layers, each a folder of tests/ and a marker of the same name (pyproject.toml registers them).
LAYERS = ("pure", "ipc", "runs", "host", "cli", "stress")
_TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)            # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    """Mark each test with its layer, the folder it is in; run the layers in LAYERS' order
    (the fast ones first; a module's tests stay together)."""
    order = {}
    for item in items:
        try:
            where = item.path.resolve().relative_to(_TESTS)
        except ValueError:                  # not this suite's (a session test's own inner test)
            continue
        layer = where.parts[0] if len(where.parts) > 1 else None
        if layer not in LAYERS:
            raise pytest.UsageError(f"tests/{where}: a test file belongs in the folder of its layer, "
                                    f"one of tests/{{{','.join(LAYERS)}}}/ (see their __init__.py)")
        item.add_marker(getattr(pytest.mark, layer))
        order[item] = LAYERS.index(layer)
    items.sort(key=lambda item: order.get(item, len(LAYERS)))


def pytest_report_header(config):
    head = f"oomemu: OOMEMU_PREFIX={os.environ['OOMEMU_PREFIX']}"
    if _swept:
        head += f"; swept {len(_swept)} leftovers of dead test sessions"
    return head


def ours():
    """This session's processes: its prefix in their environment, or descended from pytest."""
    return list({p.pid: p for p in session_processes() + session_descendants()}.values())


class Snapshot:
    """This session's processes and /dev/shm objects at one moment."""

    def __init__(self):
        self.pids = {p.pid for p in ours()}
        self.shm = shm_leftovers()
        self.doors = doors()

    def new_processes(self):
        return [p for p in ours() if p.pid not in self.pids]

    def check(self, where: str) -> None:
        """Fail if anything appeared since the snapshot and is still there; remove it first."""
        # A worker whose supervisor died gets SIGKILL from PR_SET_PDEATHSIG, a
        # process a test ended may still be on its way out: give them a moment
        # (bounded) before calling them leaks.
        wait_for(lambda: not self.new_processes(), timeout=3)
        procs, shm, door = self.new_processes(), shm_leftovers() - self.shm, doors() - self.doors
        described = []
        for p in procs:
            try:
                described.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            except Exception:
                described.append(str(p.pid))
        remove_all(procs, shm)                      # fail, but do not poison what comes next
        for d in door:
            shutil.rmtree(os.path.join(DOORS, d), ignore_errors=True)
        assert not procs, f"processes left behind by {where}: {described}"
        assert not shm, f"left in /dev/shm by {where}: {sorted(shm)}"
        assert not door, f"doors left in {DOORS} by {where}: {sorted(door)}"


@pytest.fixture(scope="session", autouse=True)
def nothing_leaks_from_the_session():
    snap = Snapshot()
    yield
    snap.check("the session's fixtures")


@pytest.fixture(scope="module", autouse=True)
def nothing_leaks_from_the_module(request):
    """Autouse and module-scoped: set up before the module's own module fixtures,
    torn down after them."""
    snap = Snapshot()
    yield
    snap.check(f"module {request.module.__name__} (its module-scoped fixtures)")


@pytest.fixture(autouse=True)
def nothing_leaks():
    snap = Snapshot()
    yield
    snap.check("this test")


# -- fixtures tests of more than one layer use ---------------------------------------

@pytest.fixture
def dead_pid():
    """A pid whose process has exited (reused only after the whole pid space wraps)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid
