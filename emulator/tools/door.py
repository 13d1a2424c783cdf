"""The door's two commands, ``oomemu kill RUN TASK`` and ``oomemu mrelease RUN TASK``,
and where a live run's door is.

What a user-space OOM killer does to a machine, done to a run from any
shell, in the command's own process (runtime/door.py does the work):

* :func:`kill_task`: kill(2). The run's event FIFO is told first (so the kill
  is counted and its exit is the kill's), then the emulated SIGKILL goes
  through a pidfd of the task's worker, once proven the run's.
* :func:`mrelease_task`: process_mrelease(2), in this process's context, by
  the rules of the run's kernel policy, on the mm the task uses, knowing every
  task using that mm. A Ctrl-C (or SIGTERM) while it waits for the mmap_sem
  ends the wait: EINTR. The run is told what it did (its log says so).

A failure of the system call is a :class:`~emulator.runtime.door.DoorError`
(its errno's name and one line); a mistake of the user's (no such run, no such
task, a run of another user's) is a UsageError, as for ``oomemu inject``.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
from contextlib import closing, contextmanager

import posix_ipc
import psutil

from ..errors import UsageError
from ..kernel.mm_types import MMF_OOM_SKIP, TaskState
from ..policies import get_policy
from ..runtime import names
from ..runtime.cleanup import is_door_writer
from ..runtime.door import DoorError, freed_kb, process_mrelease, send_kill, tell
from ..runtime.mm import Mm
from ..runtime.proc_trust import NotProven, _arg
from ..runtime.protocol import Event
from ..runtime.shm_trust import Refused, open_checked, open_fifo_for_write
from ..runtime.zone import Zone
from .live import LiveRun, _path, find_task, open_mmap_sem, open_run, shown

COMM = "oomemu"          # the caller's name in the run's log: "oomemu[PID] sent SIGKILL to ..."


def _writable_zone(run: LiveRun) -> Zone:
    """The run's zone mapped shared and writable (LiveRun's is a private copy)."""
    try:
        fd = open_checked(_path(names.zone(run.run_id)), run.owner, write=True)
        return Zone(run.run_id, fd=fd)
    except (OSError, Refused, ValueError, posix_ipc.Error):
        raise UsageError(f"run {run.run_id} has ended") from None


def _fifo(run: LiveRun) -> int:
    fd = open_fifo_for_write(names.events(run.run_id), run.owner)
    if fd is None:
        raise UsageError(f"run {run.run_id} has ended (its event FIFO is gone)")
    return fd


@contextmanager
def _opened(fd: int):
    try:
        yield fd
    finally:
        os.close(fd)


def _open_task(run: LiveRun, task: str) -> tuple[int, str, Mm]:
    """(index, label, its own segment opened to write) of ``task`` (a name or a pid)."""
    index, comm, pid = find_task(run, task)
    label = f"{comm} (pid {pid})"
    try:
        return index, label, run.open_mm(index, write=True)
    except (Refused, FileNotFoundError) as e:
        raise UsageError(f"task {label} of run {run.run_id}: {e}") from None


def kill_task(run_id: str, task: str, sig: str = "SIGKILL") -> str:
    """kill(2) of ``task`` of run ``run_id`` with ``sig`` (SIGKILL or SIGTERM). Returns the
    line to print; DoorError (ESRCH: the task has exited) as kill(2) fails."""
    run = open_run(run_id, mine="kill tasks of")
    try:
        index, label, own = _open_task(run, task)
        try:
            if own.state == TaskState.TASK_DEAD:
                raise DoorError(errno.ESRCH, f"task {label} has exited")
            try:
                worker = run.prove_worker(index, own.pid)
            except NotProven as e:
                raise DoorError(errno.ESRCH, f"task {label} has exited ({e})") from None
            with worker, closing(_writable_zone(run)) as zone, _opened(_fifo(run)) as fifo:
                try:
                    send_kill(zone, own, index, sig, worker.send_signal, fifo, run.now(), os.getpid(), COMM)
                except BrokenPipeError:
                    raise UsageError(f"run {run.run_id} has ended") from None
        finally:
            own.close()
        return f"oomemu kill: {sig} sent to {label} of run {run.run_id}"
    finally:
        run.close()


@contextmanager
def _killable():
    """SIGINT and SIGTERM interrupt a wait here (EINTR) instead of unwinding through it:
    the waiter then leaves the mmap_sem's queue itself. A signal that comes just before
    the wait blocks would be lost (its handler has run; the wait has not begun): so it
    starts a 10 ms SIGALRM that interrupts the wait whenever it begins."""
    def interrupted(*_):
        signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
    old = {s: signal.signal(s, interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    old[signal.SIGALRM] = signal.signal(signal.SIGALRM, lambda *_: None)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in old.items():
            signal.signal(s, h)


def kernel_policy(policy_name: str):
    """The run's kernel policy (``v6.6`` of ``v6.6+earlyoom``): what process_mrelease may reap."""
    try:
        return get_policy(policy_name.partition("+")[0])
    except UsageError:
        raise UsageError(f"the run's policy {shown(policy_name)!r} is not one this oomemu knows") from None


def mrelease_task(run_id: str, task: str, on_wait=None) -> str:
    """process_mrelease(2) of ``task`` of run ``run_id``, in this process. Returns the line
    to print; DoorError (EINVAL, ESRCH, EINTR, EAGAIN, ENOSYS) as the system call fails.
    ``on_wait(True/False)``: around a wait for the mmap_sem."""
    run = open_run(run_id, mine="mrelease tasks of")
    opened: list[Mm] = []
    try:
        index, label, own = _open_task(run, task)
        opened.append(own)
        m = own.shares_mm - 1 if own.shares_mm else index     # the task whose mm it is
        sharers = [j for j, o in run.each_mm() if j != index and (o.shares_mm - 1 if o.shares_mm else j) == m]
        users, mm = [own], own
        for j in sharers:                                      # opened again, to write: live reads
            try:
                other = run.open_mm(j, write=True)
            except (FileNotFoundError, Refused):
                continue
            opened.append(other)
            users.append(other)
            if j == m:
                mm = other
        if m != index and mm is own:
            raise UsageError(f"task {label} of run {run.run_id} shares an mm that is not there")
        policy = kernel_policy(run.facts.policy)
        with closing(open_mmap_sem(run, m, mm, f"the mmap_sem of {shown(mm.comm)} (pid {mm.pid})")) as sem, \
                closing(_writable_zone(run)) as zone, _opened(_fifo(run)) as fifo:
            skip = mm.test_bit(MMF_OOM_SKIP)
            result, freed = "", 0
            try:
                with _killable():
                    freed = process_mrelease(zone, own, mm, m, users, sem, policy, os.getpid(), on_wait=on_wait)
            except DoorError as e:
                result = e.name
                raise
            finally:
                try:
                    tell(fifo, Event.MRELEASE, index, run.now(), by=os.getpid(), comm=COMM, result=result,
                         freed_kb=freed_kb(freed))
                except OSError:
                    pass                                      # the run has ended meanwhile
        what = "its mm was reaped already (MMF_OOM_SKIP)" if skip else f"reaped {freed_kb(freed)}kB"
        return f"oomemu mrelease: {label} of run {run.run_id}: {what}"
    finally:
        for x in opened:
            x.close()
        run.close()


# -- where a live run's door is ----------------------------------------------------------

def door_of(run: LiveRun) -> str | None:
    """The directory the live ``run`` writes its door into, if it has one: named on the
    command line of its user-space process (a child of its proven supervisor, its owner's),
    and a real directory of that owner's (not a symlink)."""
    try:
        kids = psutil.Process(run.supervisor.pid).children()
    except psutil.Error:
        return None
    for p in kids:
        try:
            cmd, uid = p.cmdline(), p.uids().real
        except psutil.Error:
            continue
        door = _arg(cmd, "--door")
        if uid == run.owner and is_door_writer(cmd, run.run_id) and door and _real_dir_of(door, run.owner):
            return door
    return None


def _real_dir_of(path: str, owner: int) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == owner


def door_path(run_id: str, given: str | None) -> str:
    """Where run ``run_id``'s door goes: ``given`` (a directory to make: it must not exist,
    its parent must), or names.door(run_id) under names.door_base(), made here if need be
    (mode 0755) and refused unless a real directory of ours that only we may write to."""
    if given:
        path = os.path.abspath(given)
        if os.path.lexists(path):
            raise UsageError(f"--door {given}: it exists already (the door is a new directory, "
                             f"which the run removes at its end)")
        if not os.path.isdir(os.path.dirname(path)):
            raise UsageError(f"--door {given}: {os.path.dirname(path)} is not a directory")
        if not os.access(os.path.dirname(path), os.W_OK | os.X_OK) or path.startswith(("/proc/", "/sys/")):
            raise UsageError(f"--door {given}: no directory can be made in {os.path.dirname(path)}")
        return path
    base = names.door_base()
    try:
        os.makedirs(base, 0o755, exist_ok=True)
        st = os.lstat(base)
    except OSError as e:
        raise UsageError(f"the doors' directory {base}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise UsageError(f"the doors' directory {base} is not a directory of yours that only you may "
                         f"write to (set OOMEMU_DOOR_DIR, or give --door DIR)")
    return names.door(run_id, base)
