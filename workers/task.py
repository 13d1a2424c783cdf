"""One emulated task: a real process that owns an mm and does its steps.

Started by the supervisor as ``python -m workers.task --run ID --index I
--parent PID --fd FD --spec JSON``. The life of a task:

1. ``PR_SET_PDEATHSIG``: if the supervisor dies, so does this process.
2. Block SIGUSR1, the emulated SIGKILL: it stays *pending* until the task
   reaches a killable point (a sleep, an allocation retry, the end of a
   step), just as a task in D state does not act on SIGKILL. Uninterruptible
   waits (``busy``, lock and mmap_sem waits) ignore it until they return.
3. Fault in the VMAs (charge the zone, touch the pages), say ``ready``, wait
   for the start semaphore, then start the steps at time 0 of the run.
4. Killed: let go of mmap_sem and named locks, run ``exit_mmap`` as the
   policy says (real sleeps for unmap and free_pgtables, real frees), exit.

Time: the task keeps a *plan*, the emulated time its next action is due
(``t_plan``). A ``sleep`` or ``busy`` step ends at its due time, not a
duration after the previous step happened to end; an exit is planned from the
moment of the kill. Real work (faulting pages in, zapping them) is done with
the run clock frozen (``RunClock.frozen``), so it takes no emulated time. How
late the task woke for anything due (real ms) goes to the supervisor as a
``late`` event each time it is the worst so far: the run's ``lag_ms``.

Events go to the supervisor on the run's event FIFO, as
``emulator.runtime.protocol`` defines them (its ``WorkerSpec`` is what
``--spec`` holds, its ``Event`` the kinds of message).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import signal
import sys
import time
import traceback

import posix_ipc

from emulator.errors import ENVIRONMENT_ERRNOS
from emulator.kernel.mm_types import (MMF_OOM_HANDOVER, MMF_OOM_SKIP, MMF_OOM_VICTIM, MMF_UNSTABLE, PAGE_SIZE,
                                     PAGES_PER_MB, TaskState, can_reap_vma)
from emulator.kernel.policies.base import OomSkipAt
from emulator.runtime import names
from emulator.runtime.clock import RunClock, late_ms, tolerance_ms
from emulator.runtime.mm import CMD_ALLOC, J_CHARGE, J_ZAP, Mm
from emulator.runtime.protocol import SIGKILL_EMULATED, SIGWAKE, Event, WorkerSpec, encode
from emulator.runtime.zone import Zone

PR_SET_PDEATHSIG = 1


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def sem_down(sem: posix_ipc.Semaphore) -> None:
    """Uninterruptible down(): a stop/continue or stray signal does not end the wait."""
    while True:
        try:
            sem.acquire()
            return
        except posix_ipc.SignalError:
            continue


class Dying(Exception):
    """Raised at a killable point when the emulated SIGKILL is pending."""


class WorkerTask:
    """The task this process plays: its mm, its semaphores, its steps, its exit."""

    def __init__(self, run_id: str, index: int, spec: WorkerSpec, fd: int):
        self.run_id, self.index, self.spec, self.fd = run_id, index, spec, fd
        self.speed = spec.speed
        self.zone = Zone(run_id)
        self.clock = RunClock(self.zone, index)
        self.t_plan = 0.0                    # emulated time the next action is due
        self.lag_ms = 0.0                    # the worst lateness so far (real ms)
        self.mm = Mm(names.mm(run_id, index))
        self.mmap_sem = posix_ipc.Semaphore(names.mmap_sem(run_id, index))
        self.oom_reply = posix_ipc.Semaphore(names.oom_reply(run_id, index))
        self.locks = {n: posix_ipc.Semaphore(names.lock(run_id, n)) for n in spec.locks}
        # other tasks' mms whose mmap_sem a step takes (like /proc/PID/mem readers do)
        self.others = {name: (posix_ipc.Semaphore(names.mmap_sem(run_id, i)), Mm(names.mm(run_id, i)))
                       for name, i in spec.others.items()}
        self.held_others: list[str] = []
        self.holds_mmap_sem = False
        self.held_locks: list[str] = []
        self.fatal = False
        self.exiting = False
        self.cmd_seq = 0

    # -- talking to the supervisor ---------------------------------------
    def send(self, kind: Event, at: float | None = None, **fields) -> None:
        """An event at emulated time ``at`` (default: the plan, the time the task is at)."""
        data = encode(kind, self.index, self.t_plan if at is None else at, **fields)
        while data:
            n = os.write(self.fd, data)
            data = data[n:]

    # -- signals ----------------------------------------------------------
    def fatal_signal_pending(self) -> bool:
        if not self.fatal and signal.sigtimedwait([SIGKILL_EMULATED], 0) is not None:
            self.fatal = True
        return self.fatal

    # -- time: the plan, and waits for what is due --------------------------
    def wait_until(self, due: float, where: str | None, killable: bool) -> None:
        """Wait until emulated time ``due`` (killable: the emulated SIGKILL ends the wait
        with Dying), then note how late we woke (unless ``where`` is None: not a due time)."""
        if killable and self.fatal_signal_pending():
            raise Dying
        if killable:
            with self.clock.killable():
                self.clock.sleep_until(due, self._sleep_killable)
        else:
            self.clock.sleep_until(due, time.sleep)
        if where is not None:
            self.note_late(due, where)

    def _sleep_killable(self, real_s: float) -> None:
        if signal.sigtimedwait([SIGKILL_EMULATED], real_s) is not None:
            self.fatal = True
            raise Dying

    def note_late(self, due: float, where: str) -> None:
        late = late_ms(self.clock.now(), due, self.speed)
        if late > self.lag_ms:
            self.lag_ms = late
            self.send(Event.LATE, at=due, late_ms=round(late, 3), where=where,
                      lagged=late > tolerance_ms(self.speed))

    def at(self, t: float) -> None:
        """The task is at emulated time ``t`` (no earlier than now): it holds the run clock
        there until it next waits (RunClock.hold), so what it does meanwhile happens then."""
        self.t_plan = self.clock.hold(t)

    def caught_up(self) -> None:
        """After a wait for someone else (a lock, mmap_sem, a command): the task is now."""
        self.at(max(self.t_plan, self.clock.now()))

    def blocking(self, wait, *args) -> None:
        """Block on another process (``wait(*args)``): time may pass meanwhile; when it
        returns, the task is at the time it got what it waited for."""
        self.clock.let_go()
        try:
            wait(*args)
        finally:
            self.caught_up()

    def down(self, sem) -> None:
        """sem_down(), and if it had to wait, the task is at the time it got it."""
        try:
            sem.acquire(0)
        except posix_ipc.BusyError:
            self.blocking(sem_down, sem)

    def killed(self) -> None:
        """Dying: the exit is planned from the kill, or from where the task stood then
        if it was busy (D state) past it."""
        self.at(max(self.t_plan, self.mm.killed_at or self.clock.now()))

    def schedule_timeout_killable(self, emulated_s: float, where: str | None = "sleep") -> None:
        """Sleep until ``emulated_s`` after the plan, but wake up and die if the emulated
        SIGKILL comes."""
        try:
            self.wait_until(self.t_plan + emulated_s, where, killable=True)
        except Dying:
            self.killed()
            raise
        self.t_plan += emulated_s

    def _d_state(self, on: bool) -> None:
        if on:
            self.mm.state = TaskState.TASK_UNINTERRUPTIBLE
            self.send(Event.STATE, state="D")
        else:
            self.mm.state = TaskState.EXITING if self.exiting else TaskState.TASK_RUNNING
            self.send(Event.STATE, state="R")

    def uninterruptible(self, emulated_s: float, where: str = "busy") -> None:
        """D state until ``emulated_s`` after the plan."""
        self._d_state(True)
        self.wait_until(self.t_plan + emulated_s, where, killable=False)
        self.t_plan += emulated_s
        self._d_state(False)

    def down_uninterruptible(self, sem) -> None:
        try:
            sem.acquire(0)                   # free: no wait, no D state
            return
        except posix_ipc.BusyError:
            pass
        self._d_state(True)
        self.blocking(sem_down, sem)
        self._d_state(False)

    # -- memory -------------------------------------------------------------
    def fault_in(self, vma_index: int, pages: int) -> None:
        """handle_mm_fault: page faults hold mmap_sem (here: the one semaphore).
        A task that holds its own mmap_sem already (a step took it) grows the VMA
        under it, as mmap(MAP_POPULATE) does under the write lock. The charge is
        taken (and journalled) before: see :meth:`alloc`."""
        if self.holds_mmap_sem:
            with self.clock.frozen():
                self.mm.fault_in(vma_index, pages)
        else:
            self.down(self.mmap_sem)
            try:
                with self.clock.frozen():
                    self.mm.fault_in(vma_index, pages)
            finally:
                self.mmap_sem.release()
        self.mm.journal_end()

    def alloc(self, pages: int, vma_index: int) -> None:
        """__alloc_pages_slowpath, simplified: charge, else OOM and retry each jiffy."""
        stalled = retried = False
        self.mm.journal_begin(J_CHARGE, vma_index, pages)      # for repair if we die half-way
        while (short := self.zone.try_charge(self.index, pages)) is not None:
            if self.fatal_signal_pending():
                self.mm.journal_end()
                raise Dying                      # a dying task leaves the allocator
            if not stalled:
                self.send(Event.ALLOC_STALL, pages=pages, where=short)
                self.mm.state = TaskState.ALLOC_STALL
                stalled = True
            # __alloc_pages_may_oom / mem_cgroup_oom -> out_of_memory(), which runs in
            # the allocating task's context: wait until the supervisor's OOM killer is done.
            # It decides as of the plan (the event's time): the round trip takes no time.
            # The round trip takes no emulated time: the clock is frozen until the answer
            # (the supervisor always answers, at once, except after a panic, which ends
            # the run).
            with self.clock.frozen():
                self.send(Event.OOM, pages=pages, where=short, first=not retried)
                sem_down(self.oom_reply)
            retried = True
            # The next try comes a jiffy after this one's answer: retries follow the real
            # answers, they do not pile up behind a schedule a slow answer broke. They
            # poll, as the kernel's do (whose direct reclaim between tries takes what it
            # takes): how late one wakes is not lag.
            self.caught_up()
            try:
                self.schedule_timeout_killable(self.spec.jiffy_s, None)
            except Dying:
                self.mm.journal_end()
                raise
        if stalled:
            self.mm.state = TaskState.TASK_RUNNING
        self.fault_in(vma_index, pages)
        self.send(Event.ALLOC_OK, pages=pages, stalled=stalled)

    # -- steps ------------------------------------------------------------
    def do_step(self, step) -> None:
        op = step.op
        if op == "alloc":
            self.alloc(round(step.mb * PAGES_PER_MB), self.spec.grow_vma)
        elif op == "sleep":
            self.schedule_timeout_killable(step.ms / 1000)
        elif op == "busy":
            self.uninterruptible(step.ms / 1000)
        elif op == "mmap_sem_down" and step.task:
            sem, mm = self.others[step.task]
            self.down_uninterruptible(sem)
            self.held_others.append(step.task)
            mm.mmap_sem_holder = os.getpid()
        elif op == "mmap_sem_up" and step.task:
            self._up_other(step.task)
        elif op == "mmap_sem_down":
            self.down_uninterruptible(self.mmap_sem)
            self.holds_mmap_sem = True
            self.mm.mmap_sem_holder = os.getpid()
        elif op == "mmap_sem_up":
            if self.holds_mmap_sem:
                self.holds_mmap_sem = False
                self.mm.mmap_sem_holder = 0
                self.mmap_sem.release()
        elif op == "lock":
            self.down_uninterruptible(self.locks[step.name])
            self.held_locks.append(step.name)
        elif op == "unlock":
            if step.name in self.held_locks:
                self.held_locks.remove(step.name)
                self.locks[step.name].release()
        elif op == "exit":
            self.do_exit()

    def _up_other(self, name: str) -> None:
        if name in self.held_others:
            self.held_others.remove(name)
            sem, mm = self.others[name]
            mm.mmap_sem_holder = 0
            sem.release()

    def run(self) -> None:
        self.mm.pid = os.getpid()
        pgtables = self.spec.pgtables_pages
        if pgtables:
            self.mm.journal_begin(J_CHARGE, -1, pgtables)
            if self.zone.try_charge(self.index, pgtables) is not None:
                raise RuntimeError("the zone cannot hold the task's page tables")
            self.mm.fault_pgtables()
            self.mm.journal_end()
        for vi, vma in enumerate(self.mm.vmas()):
            pages = self.spec.initial_pages[vi]
            if pages:
                self.mm.journal_begin(J_CHARGE, vi, pages)
                if self.zone.try_charge(self.index, pages) is not None:
                    raise RuntimeError("the zone cannot hold the task's initial VMAs")
                self.mm.fault_in(vi, pages)
                self.mm.journal_end()
        self.mm.state = TaskState.TASK_RUNNING
        self.send(Event.READY, pid=os.getpid())
        sem_down(posix_ipc.Semaphore(names.start(self.run_id)))
        self.at(0.0)                              # the clock cannot pass 0 before we act ...
        self.clock.thaw_start()                   # ... and starts when every task is here
        try:
            for step in self.spec.steps:
                self.do_step(step)
                if self.fatal_signal_pending():      # return to user space
                    self.killed()
                    raise Dying
            if self.spec.steps:
                self.send(Event.STEPS_DONE)
            while True:                               # idle, killable
                self.clock.let_go()
                with self.clock.killable():
                    info = signal.sigwaitinfo([SIGKILL_EMULATED, SIGWAKE])
                if info.si_signo == SIGKILL_EMULATED:
                    self.fatal = True
                    self.killed()
                    raise Dying
                self.at(self.clock.now())               # a command: the task acts now
                self.do_commands()
        except Dying:
            self.do_exit()

    def do_commands(self) -> None:
        """Commands left in the mm's mailbox by ``oomemu inject`` (then SIGUSR2)."""
        seq, op, arg = self.mm.command()
        if seq == self.cmd_seq:
            return
        self.cmd_seq = seq
        if op == CMD_ALLOC:
            self.alloc(round(arg * PAGES_PER_MB), self.spec.grow_vma)
            if self.fatal_signal_pending():
                self.killed()
                raise Dying

    # -- do_exit / exit_mmap ---------------------------------------------
    def do_exit(self) -> None:
        self.exiting = True
        self.mm.state = TaskState.EXITING
        self.send(Event.EXITING, fatal=self.fatal)
        if self.holds_mmap_sem:                       # unwinding drops what we hold
            self.holds_mmap_sem = False
            self.mm.mmap_sem_holder = 0
            self.mmap_sem.release()
        for name in list(self.held_others):
            self._up_other(name)
        for name in reversed(self.held_locks):
            self.locks[name].release()
        self.held_locks.clear()
        self.exit_mmap()
        self.mm.state = TaskState.TASK_DEAD
        self.send(Event.EXITED)
        self.clock.let_go()                           # gone: time goes on without us
        os._exit(0)

    def _set_oom_skip(self, where: OomSkipAt) -> None:
        if not self.mm.set_bit(MMF_OOM_SKIP):
            self.send(Event.OOM_SKIP, by="exit_mmap", where=where.value)

    def exit_mmap(self) -> None:
        """mm/mmap.c exit_mmap(), with MMF_OOM_SKIP where the policy's rules put it."""
        rules = self.spec.exit_mmap
        victim = self.mm.test_bit(MMF_OOM_VICTIM)
        freed = 0
        self.send(Event.EXIT_MMAP_START, victim=victim)
        if victim:
            if rules.reap_first:
                # __oom_reap_task_mm(mm): free what the reaper could free, now
                self.down(self.mmap_sem)
                try:
                    with self.clock.frozen():
                        for vma in self.mm.vmas():
                            if can_reap_vma(vma.kind, vma.vm_flags, rules.unreapable_vm_flags):
                                freed += self._zap(vma)
                finally:
                    self.mmap_sem.release()
            self.mm.set_bit(MMF_UNSTABLE)
            if rules.waits_for_reaper:
                # the 2018 timeout patch: MMF_UNSTABLE, then down_write(); up_write() to
                # wait for the reaper to stop working on this mm
                self.down(self.mmap_sem)
                self.mmap_sem.release()
            if rules.handover:
                # With mmap_sem held for write, exit_mmap owns the VMAs and will
                # finish: from here on MMF_OOM_SKIP is the exit path's to set.
                self.down(self.mmap_sem)
                self.mm.set_bit(MMF_OOM_HANDOVER)
                self.mmap_sem.release()
                self.send(Event.HANDOVER)
            if rules.oom_skip is OomSkipAt.BEFORE_UNMAP:
                self._set_oom_skip(OomSkipAt.BEFORE_UNMAP)
                self.down(self.mmap_sem)           # down_write(); up_write(): serialise with the reaper
                self.mmap_sem.release()
        ms_per_mb = self.spec.exit_unmap_ms_per_mb
        for vma in self.mm.vmas():                # munlock, unmap_vmas
            if vma.nr_pages:
                self.uninterruptible(ms_per_mb * vma.nr_pages / PAGES_PER_MB / 1000, "exit_mmap")
                self.down(self.mmap_sem)
                try:
                    with self.clock.frozen():
                        freed += self._zap(vma)
                finally:
                    self.mmap_sem.release()
        if victim and rules.oom_skip is OomSkipAt.AFTER_UNMAP:
            self._set_oom_skip(OomSkipAt.AFTER_UNMAP)
        self.uninterruptible(self.spec.exit_free_pgtables_ms / 1000, "exit_mmap")   # free_pgtables
        self.mm.journal_begin(J_ZAP, -1, self.mm.pgtables_pages)
        with self.clock.frozen():
            pgt = self.mm.free_pgtables()
            self.zone.uncharge(self.index, pgt)
        self.mm.journal_end()
        freed += pgt
        if victim and rules.oom_skip is OomSkipAt.AFTER_FREE_PGTABLES:
            self._set_oom_skip(OomSkipAt.AFTER_FREE_PGTABLES)
        self.send(Event.EXIT_MMAP_DONE, freed_kb=freed * PAGE_SIZE // 1024)

    def _zap(self, vma) -> int:
        """Zap one of our VMAs (mmap_sem held), journalled for repair if we die half-way."""
        self.mm.journal_begin(J_ZAP, vma.index, self.mm.vmas()[vma.index].nr_pages)
        n = self.mm.zap_vma(vma)
        self.zone.uncharge(self.index, n)
        self.mm.journal_end()
        return n


def is_environment(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    if isinstance(e, (posix_ipc.ExistentialError, posix_ipc.PermissionsError)):
        return True                       # our objects were removed or changed under us
    return isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS


def raise_oom_score_adj() -> None:
    """The emulated memory is real memory: if the machine runs short for real, the
    real OOM killer should take emulator workers before the user's own programs.
    Raising one's own oom_score_adj needs no privilege."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def report_fault(fd: int, index: int, e: BaseException) -> int:
    """Tell the supervisor in one line why this worker is about to die; the exit code."""
    env = is_environment(e)
    what = (f"{e.strerror or e} ({errno.errorcode.get(e.errno, e.errno)})" if isinstance(e, OSError)
            else f"{type(e).__name__}: {e}")
    line = encode(Event.FAULT, index, 0.0, what=what[:400], environment=env)   # its time is not used
    try:
        os.write(fd, line)
    except OSError:
        pass
    if not env:                           # a fault of ours: the traceback is its report
        traceback.print_exc()
    return 2 if env else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="workers.task")
    p.add_argument("--run", required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--spec", required=True)
    a = p.parse_args(argv)
    set_pdeathsig()
    if os.getppid() != a.parent:                  # the supervisor died before prctl
        return 1
    signal.pthread_sigmask(signal.SIG_BLOCK, [SIGKILL_EMULATED, SIGWAKE])
    # The supervisor puts workers in a process group of their own, so a terminal's
    # Ctrl-C, Ctrl-\, Ctrl-Z and hangup reach only the supervisor; ignore them anyway.
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)
    raise_oom_score_adj()
    try:
        task = WorkerTask(a.run, a.index, WorkerSpec.from_json(a.spec), a.fd)
        task.run()
    except BaseException as e:                    # anything but the emulated exit (os._exit)
        os._exit(report_fault(a.fd, a.index, e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
