"""The door: what a user-space OOM killer may do to a run, and the run's /proc for it.

Two system calls, done in the caller's own process as the kernel does them
in the caller's context, on the run's real objects:

* :func:`send_kill`: kill(2) of a task, with the emulated SIGKILL (the task
  dies through do_exit and exit_mmap) or SIGTERM (a fatal signal by default:
  the kernel turns it into SIGKILL for the whole group, complete_signal()).
  The run is told first, on its event FIFO (``Event.KILL``), so that the
  kill is counted and its exit is the kill's.
* :func:`process_mrelease`: mm/oom_kill.c's process_mrelease(pidfd, 0)
  (Linux 5.15): reap a dying task's mm under its mmap_sem taken for read,
  waiting for it killably; EINVAL for a task that is not dying (and whose mm
  is not done already), ESRCH when it has no mm, EINTR when the wait was
  interrupted, EAGAIN when a VMA's mmu notifier could not be invalidated
  without blocking. The reapable VMAs are the run's kernel policy's.

:class:`DoorDir` writes a run's view (``runtime/view.py``) as files, a
little /proc: ``meminfo``, ``pressure/memory``, ``<pid>/status``,
``<pid>/oom_score``, ``<pid>/oom_score_adj``, plus ``tasks`` (one table)
and ``run`` (the run's id, scenario, policy, speed and emulated time). Each
file is replaced whole (rename), so a reader never sees half of one.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
from contextlib import contextmanager

from ..kernel.mm_types import MMF_OOM_SKIP, MMF_UNSTABLE, MMU_NOTIFIERS, PAGE_SIZE, TaskState
from .clock import hold_for_kill
from .mm import SIGTERM_DEFAULT, Mm
from .protocol import SIGKILL_EMULATED, Event, encode
from .view import render_meminfo, render_pressure, render_status, render_tasks

SIGNALS = ("SIGKILL", "SIGTERM")


class DoorError(OSError):
    """A kill or process_mrelease failed as the system call would: ``errno`` and a line."""

    def __init__(self, code: int, what: str):
        super().__init__(code, what)
        self.name = errno.errorcode.get(code, str(code))


def tell(fifo_fd: int, kind: Event, index: int, now: float, **fields) -> None:
    """One message on the run's event FIFO (one write: atomic below PIPE_BUF)."""
    line = encode(kind, index, now, **fields)
    if len(line) > 4096:
        raise ValueError("a door message longer than PIPE_BUF")
    os.write(fifo_fd, line)


def dying(own: Mm) -> bool:
    """The task has a fatal signal pending or is exiting (its header says so)."""
    return bool(own.killed_at) or own.state in (TaskState.EXITING, TaskState.TASK_DEAD)


def send_kill(zone, own: Mm, index: int, sig: str, send, fifo_fd: int, now: float, by: int, comm: str) -> None:
    """kill(2) of task ``index`` (its segment ``own``) with ``sig`` at emulated time ``now``;
    ``send(signum)`` sends a real signal to its process (through a pidfd the caller has
    proven). ESRCH if the task is gone; an OSError if the run can no longer be told."""
    if sig not in SIGNALS:
        raise DoorError(errno.EINVAL, f"signal {sig!r}: {' or '.join(SIGNALS)}")
    if own.state == TaskState.TASK_DEAD:
        raise DoorError(errno.ESRCH, f"task {own.comm} (pid {own.pid}) has exited")
    if own.state == TaskState.EXITING:
        return                                 # exiting on its own: kill(2) succeeds and changes nothing
    with _no_interruptions():                  # the run told and the signal sent, or neither
        tell(fifo_fd, Event.KILL, index, now, sig=sig, by=by, comm=comm)
        if sig == "SIGTERM" and own.sigterm_ms != SIGTERM_DEFAULT:
            try:                               # caught or ignored: the task decides, no kill
                send(signal.SIGTERM)
            except ProcessLookupError:
                pass                           # it died meanwhile: kill(2) of a zombie succeeds too
            return
        if not own.killed_at:
            own.killed_at = max(now, 1e-9)     # 0 is "not killed"
        hold_for_kill(zone, index, now)        # its exit starts at the kill, however late it wakes
        try:
            send(SIGKILL_EMULATED)
        except ProcessLookupError:
            pass                               # exited meanwhile (the run hears of its exit)


@contextmanager
def _no_interruptions():
    """Keep Ctrl-C and SIGTERM out while pages are zapped and uncharged (a zap cut
    half-way would leave the zone's charge and the mm disagreeing)."""
    mask = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def process_mrelease(zone, own: Mm, mm: Mm, mm_index: int, users: list[Mm], mmap_sem, policy, me: int,
                     on_wait=None) -> int:
    """process_mrelease() of the task whose segment is ``own``, using ``mm`` (the same, or the
    mm it shares: charged to task ``mm_index``; ``users``: the own segments of every task
    using that mm), reaped by the rules of ``policy`` (the run's kernel policy), under
    ``mmap_sem`` taken for read in the name of pid ``me`` (``on_wait(True/False)`` around
    a wait for it: a caller holding the run clock lets go meanwhile). Returns the pages
    freed; raises DoorError (EINVAL, ESRCH, EINTR, EAGAIN) as the system call fails, ENOSYS
    if the run's kernel predates it (Linux 5.15)."""
    if not policy.HAS_PROCESS_MRELEASE:
        raise DoorError(errno.ENOSYS, f"the run's kernel ({policy.name}) has no process_mrelease (Linux 5.15+)")
    if own.state in (TaskState.EXITING, TaskState.TASK_DEAD) or not own.pid:
        # find_lock_task_mm() finds no mm: exit_mm() has let go of it (the exit_mmap under way is
        # the last user's; the kernel's task->mm is NULL from exit_mm on)
        raise DoorError(errno.ESRCH, f"task {own.comm} has no mm")
    # task_will_free_mem(): the task and every other user of its mm are dying, and the
    # mm is not MMF_OOM_SKIP already
    if mm.test_bit(MMF_OOM_SKIP):
        return 0                                            # the work is done already
    if not all(dying(u) for u in users):
        why = "is not dying" if not dying(own) else "shares its mm with a task that is not dying"
        raise DoorError(errno.EINVAL, f"task {own.comm} (pid {own.pid}) {why}")
    from .rwsem import Interrupted
    try:                                                     # mmap_read_lock_killable()
        mmap_sem.down_read(me, killable=True, on_wait=on_wait)
    except Interrupted:
        raise DoorError(errno.EINTR, "interrupted waiting for its mmap_sem") from None
    try:
        if mm.test_bit(MMF_OOM_SKIP):                        # exit_mmap finished meanwhile
            return 0
        if mm.mmu_notifier == MMU_NOTIFIERS["blockable"]:    # invalidate_range_start_nonblock fails
            raise DoorError(errno.EAGAIN, "an mmu notifier could not be invalidated without blocking")
        freed = 0
        with _no_interruptions():
            mm.set_bit(MMF_UNSTABLE)
            for vma in mm.vmas():
                if (vma.nr_pages or vma.swapped) and policy.can_reap_vma(vma.kind, vma.vm_flags):
                    freed += mm.zap_vma(vma, lambda n: zone.uncharge(mm_index, n), zone.uncharge_swap)
        return freed
    finally:
        mmap_sem.up_read(me)


# -- the run's /proc, as files ----------------------------------------------------------

def _owned_dir(path: str) -> None:
    """``path`` is a real directory of ours (not a symlink, not someone else's)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(errno.EPERM, f"{path}: not a directory of ours", path)


class DoorDir:
    """A run's view written as files under ``path`` (created here, mode 0755; removed
    by :meth:`remove`). Only what changed is written again."""

    def __init__(self, path: str):
        self.path = path
        os.mkdir(path, 0o755)
        _owned_dir(path)
        os.mkdir(os.path.join(path, "pressure"), 0o755)
        self._written: dict[str, str] = {}
        self._pids: set[int] = set()

    def _put(self, rel: str, text: str) -> None:
        if self._written.get(rel) == text:
            return
        final = os.path.join(self.path, rel)
        tmp = os.path.join(os.path.dirname(final), "." + os.path.basename(final) + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.replace(tmp, final)
        self._written[rel] = text

    def write(self, snap, header: str) -> None:
        """Every file for snapshot ``snap``; ``header``: the ``run`` file's text."""
        self._put("meminfo", render_meminfo(snap.meminfo))
        self._put("pressure/memory", render_pressure(snap.pressure))
        live = {t.pid: t for t in snap.tasks if not t.gone}
        for pid in self._pids - live.keys():
            self._remove_pid(pid)
        for pid, t in live.items():
            if pid not in self._pids:
                os.mkdir(os.path.join(self.path, str(pid)), 0o755)
                self._pids.add(pid)
            self._put(f"{pid}/status", render_status(t))
            self._put(f"{pid}/oom_score", f"{t.oom_score}\n")
            self._put(f"{pid}/oom_score_adj", f"{t.oom_score_adj}\n")
        self._put("tasks", render_tasks(live.values()))
        self._put("run", header)

    def _remove_pid(self, pid: int) -> None:
        d = os.path.join(self.path, str(pid))
        for name in ("status", "oom_score", "oom_score_adj"):
            self._written.pop(f"{pid}/{name}", None)
            _unlink(os.path.join(d, name))
        try:
            os.rmdir(d)
        except OSError:
            pass
        self._pids.discard(pid)

    def remove(self) -> None:
        """Remove every file written and the directory (what else is in it stays, and so
        does the directory then)."""
        for pid in list(self._pids):
            self._remove_pid(pid)
        for rel in list(self._written):
            _unlink(os.path.join(self.path, rel))
        self._written.clear()
        for d in ("pressure", ""):
            try:
                os.rmdir(os.path.join(self.path, d))
            except OSError:
                pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def freed_kb(pages: int) -> int:
    return pages * PAGE_SIZE // 1024
