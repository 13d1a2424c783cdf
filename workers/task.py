"""One emulated task: a real process that owns an mm and does its steps.

Made by the run's fork server (``workers.forkserver``: a clone of a template
started as ``python -m workers.task --run ID --index template --parent PID
--fd FD --serve REQ,REP``), as the supervisor's child; it becomes task I's
worker in :func:`become_worker`. The life of a task:

1. ``PR_SET_PDEATHSIG``: if the supervisor dies, so does this process.
2. Block SIGUSR1, the emulated SIGKILL: it stays *pending* until the task
   reaches a killable point (a sleep, an allocation retry, the end of a
   step), just as a task in D state does not act on SIGKILL. Uninterruptible
   waits (``busy``, lock and mmap_sem waits) ignore it until they return.
3. Fault in the VMAs (charge the zone, touch the pages), say ``ready``, wait
   for the start semaphore, then start the steps at time 0 of the run.
4. Killed: let go of mmap_sems and named locks, wait (``mmput``) until no
   other task holds or waits for its mmap_sem, run ``exit_mmap`` as the
   policy says (its locks, real sleeps for unmap and free_pgtables, real
   frees), exit.

Who takes mmap_sem (an ``emulator.runtime.rwsem.MmapSem``) how: an
``alloc`` of 0.125 MB or more first maps its memory (mmap/brk: down_write,
up_write), then every ``alloc`` faults its pages in with mmap_sem held for
read, across the allocator's stall and OOM retries, as the kernel's fault
path does; a task that holds its own mmap_sem through a step faults under
it without taking it again. Steps take it as they say (``mode``), another
task's too (holding a reference to that mm); exit_mmap as its policy's
``ExitMmapRules`` say.

Time: the task keeps a *plan*, the emulated time its next action is due
(``t_plan``). A ``sleep`` or ``busy`` step ends at its due time, not a
duration after the previous step happened to end; an exit is planned from the
moment of the kill. Whenever the task is not waiting it holds the run clock
at its plan (``RunClock.hold``), so its real work (faulting pages in, zapping
them, an OOM call) takes no emulated time; it lets go only to block on
another process or to idle. How late the task woke for anything due (real ms)
goes to the supervisor as a ``late`` event each time it is the worst so far:
the run's ``lag_ms``.

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
from emulator.kernel.policies.base import MmapLock, OomSkipAt
from emulator.runtime import names
from emulator.runtime.clock import RunClock, late_ms
from emulator.runtime.mm import CMD_ALLOC, J_CHARGE, J_ZAP, SIGTERM_DEFAULT, Mm
from emulator.runtime.protocol import SIGKILL_EMULATED, SIGWAKE, Event, WorkerSpec, encode
from emulator.runtime.rwsem import MmapSem
from emulator.runtime.zone import Zone
from emulator.scenario import FAULT_MS_PER_MB, MMAP_THRESHOLD_PAGES
from workers.forkserver import serve

PR_SET_PDEATHSIG = 1
#: An allocation is charged and faulted in this many pages at a time (1 MB), as page
#: faults come: when the OOM killer is called, the allocator holds what it got so far.
FAULT_BATCH_PAGES = PAGES_PER_MB


_libc = ctypes.CDLL(None, use_errno=True)


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    if _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
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

    def __init__(self, shared: RunShared, index: int, spec: WorkerSpec):
        run_id = shared.run_id
        self.run_id, self.index, self.spec, self.fd = run_id, index, spec, shared.fd
        self.speed = spec.speed
        self.zone = shared.zone
        self.start_sem = shared.start
        self.clock = RunClock(self.zone, index)
        self.t_plan = 0.0                    # emulated time the next action is due
        self.lag_ms = 0.0                    # the worst lateness so far (real ms)
        self.pid = os.getpid()
        # ``own``: this task's segment (its pid, state, comm, killed_at, mailbox: the
        # task_struct's part); ``mm``: the mm it uses, the same segment unless it shares
        # another task's (CLONE_VM), whose mmap_sem and charge are then its own too.
        self.own = Mm(names.mm(run_id, index))
        self.mm_index = spec.mm_index
        self.mm = self.own if spec.mm_index == index else Mm(names.mm(run_id, spec.mm_index))
        self.mmap_sem = MmapSem.open(run_id, spec.mm_index, self.mm, f"the mmap_sem of task {spec.mm_index}")
        self.oom_reply = posix_ipc.Semaphore(names.oom_reply(run_id, index))
        self.locks = shared.locks
        # other tasks' mms whose mmap_sem a step takes (like /proc/PID/mem readers do)
        self.others = {name: MmapSem.open(run_id, i, Mm(names.mm(run_id, i)), f"the mmap_sem of {name}")
                       for name, i in spec.others.items()}
        self.held_others: list[tuple[str, str]] = []      # (task, mode) of each hold, in order
        self.own_holds: list[str] = []                    # modes of the steps' holds on our own
        self.held_locks: list[str] = []
        self.fatal = False
        self.exiting = False
        self.cmd_seq = 0

    # -- talking to the supervisor ---------------------------------------
    def send(self, kind: Event, at: float | None = None, **fields) -> None:
        """An event at emulated time ``at`` (default: the plan, the time the task is at)."""
        data = encode(kind, self.index, self.t_plan if at is None else at, **fields)
        while data:
            try:
                n = os.write(self.fd, data)
            except BrokenPipeError:           # the supervisor is gone (its death signal is on its way)
                os._exit(1)
            data = data[n:]

    # -- signals ----------------------------------------------------------
    def fatal_signal_pending(self) -> bool:
        if not self.fatal and signal.sigtimedwait([SIGKILL_EMULATED], 0) is not None:
            self.fatal = True
        return self.fatal

    # -- time: the plan, and waits for what is due --------------------------
    def wait_until(self, due: float, where: str, killable: bool) -> None:
        """Wait until emulated time ``due`` (killable: the emulated SIGKILL ends the wait
        with Dying), then note how late we woke (``where``: what was due, for the trace)."""
        if killable and self.fatal_signal_pending():
            raise Dying
        self.clock.sleep_until(due, self._sleep_killable if killable else time.sleep, killable)
        self.note_late(due, where)

    def _sleep_killable(self, real_s: float) -> None:
        if signal.sigtimedwait([SIGKILL_EMULATED], real_s) is not None:
            self.fatal = True
            raise Dying

    def note_late(self, due: float, where: str) -> None:
        late = late_ms(self.clock.now(), due, self.speed)
        if late > self.lag_ms:
            self.lag_ms = late
            self.send(Event.LATE, at=due, late_ms=round(late, 3), where=where)

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

    def killed(self) -> None:
        """Dying: the exit is planned from the kill, or from where the task stood then
        if it was busy (D state) past it."""
        self.at(max(self.t_plan, self.own.killed_at or self.clock.now()))

    def schedule_timeout_killable(self, emulated_s: float, where: str = "sleep") -> None:
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
            self.own.state = TaskState.TASK_UNINTERRUPTIBLE
            self.send(Event.STATE, state="D")
        else:
            self.own.state = TaskState.EXITING if self.exiting else TaskState.TASK_RUNNING
            self.send(Event.STATE, state="R")

    def _blocked(self, on: bool) -> None:
        """An uninterruptible wait for another process (mmap_sem, mmput) begins or ends:
        D state, and the run clock may go on meanwhile (see :meth:`blocking`)."""
        if on:
            self._d_state(True)
            self.clock.let_go()
        else:
            self.caught_up()
            self._d_state(False)

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

    # -- mmap_sem ---------------------------------------------------------------
    def _mmap_lock(self, what: str, mm_index: int, mode: str, **fields) -> None:
        """The kernel's mmap_lock tracepoints (include/trace/events/mmap_lock.h)."""
        self.send(Event.MMAP_LOCK, what=what, mm=mm_index, write=mode == "write", **fields)

    def down_mmap_sem(self, sem: MmapSem, mm_index: int, mode: str, foreign: bool = False) -> bool:
        """down_read/down_write, uninterruptible: D state while it waits. False: ``foreign``
        and that mm is gone (mmget_not_zero failed)."""
        self._mmap_lock("start_locking", mm_index, mode)
        ok = sem.down(self.pid, mode, foreign=foreign, on_wait=self._blocked)
        self._mmap_lock("acquire_returned", mm_index, mode, success=ok)
        return ok

    def up_mmap_sem(self, sem: MmapSem, mm_index: int, mode: str, foreign: bool = False,
                    traced: bool = True) -> None:
        sem.up(self.pid, mode, foreign=foreign)
        if traced:
            self._mmap_lock("released", mm_index, mode)

    def _down_quietly(self, mode: str) -> bool:
        """Our own mmap_sem for a fault or an mmap, which the trace shows only if it has
        to wait. Returns whether it waited (then the release is traced too)."""
        waited = False

        def on_wait(on: bool) -> None:
            nonlocal waited
            if on:
                waited = True
                self._mmap_lock("start_locking", self.index, mode)
            self._blocked(on)

        self.mmap_sem.down(self.pid, mode, on_wait=on_wait)
        if waited:
            self._mmap_lock("acquire_returned", self.index, mode, success=True)
        return waited

    # -- memory -------------------------------------------------------------
    def fault_in(self, vma_index: int, pages: int) -> None:
        """handle_mm_fault, with mmap_sem held for read (see :meth:`alloc`). The charge is
        taken (and journalled) before. If the reaper has begun tearing the mm down
        (MMF_UNSTABLE: only a victim's), the fault fails as the kernel's does with
        SIGBUS: the charge goes back and the task dies."""
        if not self.mm.fault_in(vma_index, pages):
            self.zone.uncharge(self.mm_index, pages)
            self.mm.journal_end()
            self.fatal = True
            raise Dying
        self.mm.journal_end()

    def alloc(self, pages: int, vma_index: int) -> None:
        """An allocation as a program makes it: mmap/brk for 0.125 MB or more (mmap_sem
        for write, let go at once), then page faults with mmap_sem held for read across
        the allocator's stall and OOM retries, as handle_mm_fault holds it. A task that
        holds its own mmap_sem (a step took it) does both under that hold."""
        if self.own_holds:
            self._alloc_pages(pages, vma_index)
            return
        if pages >= MMAP_THRESHOLD_PAGES:
            waited = self._down_quietly("write")
            self.up_mmap_sem(self.mmap_sem, self.index, "write", traced=waited)
        waited = self._down_quietly("read")
        try:
            self._alloc_pages(pages, vma_index)
        finally:
            self.up_mmap_sem(self.mmap_sem, self.index, "read", traced=waited)

    def _alloc_pages(self, pages: int, vma_index: int) -> None:
        """__alloc_pages_slowpath, page by page as faults come (in FAULT_BATCH_PAGES): each
        batch is charged, else the allocation stalls and calls the OOM killer, retrying
        each jiffy; what was faulted in so far stays (the allocator's rss, in its own
        badness)."""
        stalled, done = False, 0
        while done < pages:
            batch = min(FAULT_BATCH_PAGES, pages - done)
            if self.spec.mm_shared:
                stalled = self._shared_fault(batch, vma_index, pages, stalled)
            else:
                stalled = self._charge(batch, vma_index, pages, stalled)
                self.fault_in(vma_index, batch)
            done += batch
            # the faults took their time (FAULT_MS_PER_MB, measured); a fatal signal is
            # acted on when the fault returns to user space
            self.schedule_timeout_killable(FAULT_MS_PER_MB * batch / PAGES_PER_MB / 1000, "fault")
        if stalled:
            self.own.state = TaskState.TASK_RUNNING
        self.send(Event.ALLOC_OK, pages=pages, stalled=stalled)

    def _charge(self, batch: int, vma_index: int, pages: int, stalled: bool) -> bool:
        """Charge one batch, stalling (out_of_memory, a jiffy, again) until it fits. Returns
        whether the allocation has stalled so far."""
        self.mm.journal_begin(J_CHARGE, vma_index, batch)      # for repair if we die half-way
        while (short := self.zone.try_charge(self.index, batch)) is not None:
            if self.fatal_signal_pending():
                self.mm.journal_end()
                raise Dying                      # a dying task leaves the allocator
            stalled = self._oom(short, batch, pages, stalled)
        return stalled

    def _shared_fault(self, batch: int, vma_index: int, pages: int, stalled: bool) -> bool:
        """One batch into an mm that other processes use too: charge and fault in one
        guarded section (Mm.shared_fault), stalling as :meth:`_charge` does until it fits.
        The charge is the mm's (its owner's counter in the zone)."""
        while True:
            done = self.mm.shared_fault(vma_index, batch, lambda n: self.zone.try_charge(self.mm_index, n),
                                        self._repair_dead_faulter)
            if done is True:
                return stalled
            if done is False or self.fatal_signal_pending():
                self.fatal = True                # MMF_UNSTABLE: SIGBUS, as fault_in
                raise Dying
            stalled = self._oom(done, batch, pages, stalled)

    def _repair_dead_faulter(self) -> None:
        """Under the mm's guard: another user of the mm died in the middle of a fault
        (Mm.shared_fault). Finish or undo its batch, as the supervisor's repair would;
        the mm's charge is stable under the guard, so the journal says exactly what."""
        charged, complaint = self.mm.repair(self.zone.charged_by(self.mm_index))
        if complaint is not None:
            raise RuntimeError(f"a shared mm's journal: {complaint}")
        self.zone.set_charged(self.mm_index, charged)

    def _oom(self, short, batch: int, pages: int, stalled: bool) -> bool:
        """The batch did not fit (``short``: zone.Short, where and which memcg): reclaim and,
        if it must, out_of_memory(), then a wait as the supervisor answers (killable)."""
        stalled_mono = time.monotonic()          # the charge failed: the OOM round trip begins
        if not stalled:
            self.send(Event.ALLOC_STALL, pages=pages, where=short.where, memcg=short.memcg)
            self.own.state = TaskState.ALLOC_STALL
            stalled = True
        # __alloc_pages_may_oom / mem_cgroup_oom -> out_of_memory(), which runs in
        # the allocating task's context: wait until the supervisor's OOM killer is
        # done. We hold the run clock meanwhile (we do not let go: the supervisor
        # answers at once, except after a panic, which ends the run), so the OOM
        # killer decides at the time we are at, however long the round trip takes.
        # The supervisor reclaims first (page cache) and calls the OOM killer only if
        # reclaim cannot make room; its answer (in our own segment: a process sharing
        # our mm may be waiting for its own) says when to try again: at once (reclaim
        # made room), once writeback has made some (throttled), or a jiffy after the
        # OOM killer's answer.
        self.send(Event.OOM, pages=batch, where=short.where, memcg=short.memcg, stall_monotonic=stalled_mono)
        sem_down(self.oom_reply)
        retry_at = self.own.oom_retry_at
        try:
            if retry_at < 0:
                self.schedule_timeout_killable(self.spec.jiffy_s, "oom_retry")   # then try again
            elif retry_at > self.t_plan:
                self.schedule_timeout_killable(retry_at - self.t_plan, "reclaim_throttle")
        except Dying:
            if not self.spec.mm_shared:
                self.mm.journal_end()
            raise
        return stalled

    # -- steps ------------------------------------------------------------
    def do_step(self, step) -> None:
        op = step.op
        if op == "alloc":
            self.alloc(round(step.mb * PAGES_PER_MB), self.spec.grow_vma)
        elif op == "sleep":
            self.send(Event.SLEEP, until=self.t_plan + step.ms / 1000)     # for PSI: asleep until then
            self.schedule_timeout_killable(step.ms / 1000)
        elif op == "touch":
            self.touch(step.vma, round(step.mb * PAGES_PER_MB), step.repeat, step.ms / 1000)
        elif op == "busy":
            self.uninterruptible(step.ms / 1000)
        elif op == "mmap_sem_down" and step.task:
            # mmget_not_zero + down: the hold keeps the other task's mm (its exit_mmap waits)
            if self.down_mmap_sem(self.others[step.task], self.spec.others[step.task], step.mode, foreign=True):
                self.held_others.append((step.task, step.mode))
        elif op == "mmap_sem_up" and step.task:
            self._up_other(step.task)
        elif op == "mmap_sem_down":
            self.down_mmap_sem(self.mmap_sem, self.index, step.mode)
            self.own_holds.append(step.mode)
        elif op == "mmap_sem_up":
            self._up_own_holds()
        elif op == "lock":
            self.down_uninterruptible(self.locks[step.name])
            self.held_locks.append(step.name)
        elif op == "unlock":
            if step.name in self.held_locks:
                self.held_locks.remove(step.name)
                self.locks[step.name].release()
        elif op == "exit":
            self.do_exit()
        elif op in ("shm_unlink", "shm_truncate"):
            # a syscall on a shmem object: the supervisor, which holds the objects, does
            # it at our time (we hold the run clock) and answers on oom_reply
            self.send(Event.SHM, op=op, name=step.name)
            sem_down(self.oom_reply)
        elif op == "mm_pin":
            self.mm_pin(step.task, step.ms / 1000)

    def touch(self, vma_index: int, pages: int, repeat: int, emulated_s: float) -> None:
        """Read the first ``pages`` of a file VMA again (or of an anon one), ``repeat`` times,
        each taking ``emulated_s`` (the task runs) besides its faults. Where reclaim took
        some of them (the VMA maps fewer; an anon VMA: some are on swap), the supervisor,
        which holds the page cache and the swap, refaults or swaps them in (Event.TOUCH)
        and says until when the read takes (a memstall, killable: a fault's
        lock_folio_killable)."""
        for _ in range(repeat):
            vma = self.mm.vma(vma_index)
            if vma.nr_pages < pages and (vma.kind != "anon" or vma.swapped):
                self.send(Event.TOUCH, vma=vma_index, pages=pages)
                sem_down(self.oom_reply)
                retry_at = self.own.oom_retry_at
                if retry_at > self.t_plan:
                    self.schedule_timeout_killable(retry_at - self.t_plan, "refault")
            if emulated_s:
                self.schedule_timeout_killable(emulated_s, "touch")
            if self.fatal_signal_pending():
                self.killed()
                raise Dying

    def mm_pin(self, name: str, emulated_s: float) -> None:
        """mmget_not_zero() on task ``name``'s mm, held ``emulated_s`` as a /proc/PID reader
        holds it (uninterruptible: a read of a few ms does not stop for SIGKILL), then mmput().
        Meanwhile that mm's exit waits in mmput (D state); the reaper needs no reference."""
        sem, mm_index = self.others[name], self.spec.others[name]
        ok = sem.mmget_not_zero()
        self.send(Event.MM_PIN, what="mmget_not_zero", mm=mm_index, success=ok)
        if not ok:
            return                               # the mm is gone: the read fails (ESRCH)
        try:
            self.uninterruptible(emulated_s, "mm_pin")
        finally:
            sem.mmput_ref()
            self.send(Event.MM_PIN, what="mmput", mm=mm_index)

    def _up_other(self, name: str) -> None:
        """Let go of every hold on task ``name``'s mmap_sem, and of the references (mmput)."""
        for hold in [h for h in self.held_others if h[0] == name]:
            self.held_others.remove(hold)
            self.up_mmap_sem(self.others[name], self.spec.others[name], hold[1], foreign=True)

    def _up_own_holds(self) -> None:
        while self.own_holds:
            self.up_mmap_sem(self.mmap_sem, self.index, self.own_holds.pop())

    def run(self) -> None:
        self.setup()
        self.send(Event.READY, pid=os.getpid())
        self.start()

    def setup(self) -> None:
        """Fault in the task's page tables and VMAs, charged to the zone."""
        self.own.pid = os.getpid()
        pgtables = self.spec.pgtables_pages
        if pgtables:
            self.mm.journal_begin(J_CHARGE, -1, pgtables)
            if self.zone.try_charge(self.index, pgtables) is not None:
                raise RuntimeError("the zone cannot hold the task's page tables")
            self.mm.fault_pgtables()
            self.mm.journal_end()
        for vi, pages in enumerate(self.spec.initial_pages):       # none if it shares an mm
            if pages and self.mm.vmas()[vi].object >= 0:
                self.mm.map_object(vi, pages)     # the object's pages, resident and charged already
            elif pages:
                self.mm.journal_begin(J_CHARGE, vi, pages)
                if self.zone.try_charge(self.index, pages) is not None:
                    raise RuntimeError("the zone cannot hold the task's initial VMAs")
                self.mm.fault_in(vi, pages)
                self.mm.journal_end()
        self.own.state = TaskState.TASK_RUNNING
        if self.own.sigterm_ms == SIGTERM_DEFAULT:  # the default action: a stray SIGTERM kills for real
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])

    def start(self) -> None:
        """Wait for time 0 of the run, then do the steps; idle (killable) after them."""
        sem_down(self.start_sem)
        self.at(0.0)                              # the clock cannot pass 0 before we act ...
        self.clock.thaw_start()                   # ... and starts when every task is here
        try:
            for step in self.spec.steps:
                self.do_step(step)
                if self.fatal_signal_pending():      # return to user space
                    self.killed()
                    raise Dying
                if signal.sigtimedwait([signal.SIGTERM], 0) is not None:
                    self.on_sigterm()
            if self.spec.steps:
                self.send(Event.STEPS_DONE)
            while True:                               # idle, killable
                info = self.clock.idle(lambda: signal.sigwaitinfo([SIGKILL_EMULATED, SIGWAKE, signal.SIGTERM]))
                if info.si_signo == SIGKILL_EMULATED:
                    self.fatal = True
                    self.killed()
                    raise Dying
                self.at(self.clock.now())               # a command or SIGTERM: the task acts now
                if info.si_signo == signal.SIGTERM:
                    self.on_sigterm()
                else:
                    self.do_commands()
                self.send(Event.SLEEP, until=-1)        # idle again (for PSI)
        except Dying:
            if self.fatal:
                self.killed()
            self.do_exit()

    def on_sigterm(self) -> None:
        """SIGTERM, caught on return to user space (after the step it came during, or at once
        when idle), answered as the task's ``sigterm`` key says: ignored, or its handler
        cleans up (killably) for its ms, then the task exits (Dying, not fatal). A task
        that takes the default action never gets here: SIGTERM stays unblocked for it
        (and a user-space killer's SIGTERM to it is the emulated SIGKILL: runtime/door)."""
        ms = self.own.sigterm_ms
        if ms < 0:
            return                                  # SIGTERM_IGNORE
        self.schedule_timeout_killable(ms / 1000, "sigterm")
        raise Dying

    def do_commands(self) -> None:
        """Commands left in the mm's mailbox by ``oomemu inject`` (then SIGUSR2)."""
        seq, op, arg = self.own.command()
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
        self.own.state = TaskState.EXITING
        self.send(Event.EXITING, fatal=self.fatal)
        self._up_own_holds()                          # unwinding drops what we hold
        for name in dict(self.held_others):
            self._up_other(name)
        for name in reversed(self.held_locks):
            self.locks[name].release()
        self.held_locks.clear()
        self.exit_mmap()
        self.own.state = TaskState.TASK_DEAD
        self.send(Event.EXITED)
        self.clock.let_go()                           # gone: time goes on without us
        os._exit(0)

    def _set_oom_skip(self, where: OomSkipAt) -> None:
        if not self.mm.set_bit(MMF_OOM_SKIP):
            self.send(Event.OOM_SKIP, by="exit_mmap", where=where.value)

    def _write_cycle(self) -> None:
        """down_write(); up_write(): wait until nobody holds our mmap_sem (the reaper)."""
        self.down_mmap_sem(self.mmap_sem, self.index, "write")
        self.up_mmap_sem(self.mmap_sem, self.index, "write")

    def mmput(self) -> bool:
        """mmput(): drop our reference to the mm. False if other processes still use it
        (CLONE_VM): the last of them tears it down. The last waits, in D state, until no
        other task holds a reference (an mmap_sem hold or wait, an mm_pin: as /proc/PID
        readers do); woken by the last one to let go. The reaper keeps none: it may go on."""
        def on_wait(on: bool) -> None:
            if on:
                self.send(Event.MMPUT_WAIT, users=self.mmap_sem.state(check_alive=False).mm_users)
            self._blocked(on)
        return self.mmap_sem.mmput(self.pid, on_wait) is not None

    def exit_mmap(self) -> None:
        """mm/mmap.c exit_mmap(), once mm_users is 0 (:meth:`mmput`), with mmap_sem taken
        and MMF_OOM_SKIP set where the policy's ExitMmapRules say."""
        rules = self.spec.exit_mmap
        if not self.mmput():
            return                                # exit_mm: the mm stays with its other users
        victim = self.mm.test_bit(MMF_OOM_VICTIM)
        freed = 0
        self.send(Event.EXIT_MMAP_START, victim=victim)
        if victim:
            if rules.reap_first:
                # __oom_reap_task_mm(mm): free what the reaper could free, now. v4.17 holds
                # oom_lock here, not mmap_sem; the reaper may be at it too: each zap claims
                # its pages, so each is freed once.
                for vma in self.mm.vmas():
                    if can_reap_vma(vma.kind, vma.vm_flags, rules.unreapable_vm_flags):
                        freed += self._zap(vma)
            self.mm.set_bit(MMF_UNSTABLE)
            if rules.waits_for_reaper:
                # the 2018 timeout patch: MMF_UNSTABLE, then down_write(); up_write() to
                # wait for the reaper to stop working on this mm
                self._write_cycle()
            if rules.handover:
                # With mmap_sem held for write, exit_mmap owns the VMAs and will
                # finish: from here on MMF_OOM_SKIP is the exit path's to set.
                self.down_mmap_sem(self.mmap_sem, self.index, "write")
                self.mm.set_bit(MMF_OOM_HANDOVER)
                self.up_mmap_sem(self.mmap_sem, self.index, "write")
                self.send(Event.HANDOVER)
            if rules.oom_skip is OomSkipAt.BEFORE_UNMAP:
                self._set_oom_skip(OomSkipAt.BEFORE_UNMAP)
                self._write_cycle()               # serialise with the reaper
        if rules.unmap_lock is not MmapLock.NONE:  # v6.1+: mmap_read_lock()
            self.down_mmap_sem(self.mmap_sem, self.index, rules.unmap_lock.value)
        ms_per_mb = self.spec.exit_unmap_ms_per_mb
        for vma in self.mm.vmas():                # munlock, unmap_vmas
            if vma.nr_pages:
                self.uninterruptible(ms_per_mb * vma.nr_pages / PAGES_PER_MB / 1000, "exit_mmap")
                freed += self._zap(vma)
        if rules.unmap_lock is not MmapLock.NONE:
            self.up_mmap_sem(self.mmap_sem, self.index, rules.unmap_lock.value)
        if victim and rules.oom_skip is OomSkipAt.AFTER_UNMAP:
            self._set_oom_skip(OomSkipAt.AFTER_UNMAP)
        if rules.free_pgtables_lock is not MmapLock.NONE:   # v6.1+: mmap_write_lock()
            self.down_mmap_sem(self.mmap_sem, self.index, rules.free_pgtables_lock.value)
        self.uninterruptible(self.spec.exit_free_pgtables_ms / 1000, "exit_mmap")   # free_pgtables
        self.mm.journal_begin(J_ZAP, -1, self.mm.pgtables_pages)
        pgt = self.mm.free_pgtables()
        self.zone.uncharge(self.mm_index, pgt)
        self.mm.journal_end()
        freed += pgt
        if rules.free_pgtables_lock is not MmapLock.NONE:
            self.up_mmap_sem(self.mmap_sem, self.index, rules.free_pgtables_lock.value)
        if victim and rules.oom_skip is OomSkipAt.AFTER_FREE_PGTABLES:
            self._set_oom_skip(OomSkipAt.AFTER_FREE_PGTABLES)
        self.send(Event.EXIT_MMAP_DONE, freed_kb=freed * PAGE_SIZE // 1024)

    def _zap(self, vma) -> int:
        """Zap one of our VMAs, journalled for repair if we die half-way. The zap claims
        the pages it frees: we uncharge exactly those (the reaper, the others)."""
        self.mm.journal_begin(J_ZAP, vma.index, self.mm.vmas()[vma.index].nr_pages)
        n = self.mm.zap_vma(vma, lambda pages: self.zone.uncharge(self.mm_index, pages), self.zone.uncharge_swap)
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


class RunShared:
    """What every worker of a run opens alike, opened once in the fork server's template
    (before its first clone) and inherited: the zone, the start semaphore, the named
    locks; and who the supervisor is, and the event FIFO's fd."""

    def __init__(self, run_id: str, parent: int, fd: int, locks: tuple[str, ...]):
        self.run_id, self.parent, self.fd = run_id, parent, fd
        self.zone = Zone(run_id)
        self.nice = os.getpriority(os.PRIO_PROCESS, parent)      # the template's may be higher
        self.start = posix_ipc.Semaphore(names.start(run_id))
        self.locks = {n: posix_ipc.Semaphore(names.lock(run_id, n)) for n in locks}


def prepare(run_id: str, parent: int, fd: int, requests: list[tuple[int, bytes]]) -> list:
    """The template's work before its first clone: decode every WorkerSpec, open the run's
    shared objects. Returns (index, (spec, shared)) for each request."""
    specs = [(index, WorkerSpec.from_line(line)) for index, line in requests]
    shared = RunShared(run_id, parent, fd, specs[0][1].locks if specs else ())
    return [(index, (spec, shared)) for index, spec in specs]


def become_worker(index: int, arg: tuple[WorkerSpec, RunShared]) -> None:
    """What a clone of the fork server does (workers.forkserver): be task ``index``'s worker.
    Never returns: the emulated exit, or a fault reported, ends in os._exit."""
    spec, shared = arg
    try:
        set_pdeathsig()                           # not inherited: armed again, tied to our new parent
        if os.getppid() != shared.parent:         # the supervisor died before prctl
            os._exit(1)
        os.setpriority(os.PRIO_PROCESS, 0, shared.nice)
        shared.zone.own_lock()                    # flock is per open file: one of our own
        task = WorkerTask(shared, index, spec)
        task.run()
    except BaseException as e:                    # anything but the emulated exit (os._exit)
        os._exit(report_fault(shared.fd, index, e))
    os._exit(0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="workers.task")
    p.add_argument("--run", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--serve", metavar="REQ,REP", required=True,
                   help="the fork server's request and reply pipes: clone a worker per request")
    p.add_argument("--mode", choices=("clone", "fork"), default="clone",
                   help="clone(CLONE_PARENT), or fork twice to be reparented to a subreaper supervisor")
    a = p.parse_args(argv)
    set_pdeathsig()
    if os.getppid() != a.parent:                  # the supervisor died before prctl
        return 1
    # The supervisor puts its workers in a process group of their own, so a terminal's
    # Ctrl-C, Ctrl-\, Ctrl-Z and hangup reach only the supervisor; ignore them anyway.
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)
    # Inherited by every worker: the emulated SIGKILL stays pending until a killable point.
    signal.pthread_sigmask(signal.SIG_BLOCK, [SIGKILL_EMULATED, SIGWAKE, signal.SIGTERM])
    raise_oom_score_adj()
    requests, replies = (int(x) for x in a.serve.split(","))
    return serve(a.run, requests, replies, lambda run_id, reqs: prepare(run_id, a.parent, a.fd, reqs),
                 become_worker, a.mode)


if __name__ == "__main__":
    sys.exit(main())
