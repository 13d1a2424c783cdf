"""The oom_reaper: frees victims' memory early, as its policy says.

The *policy* decides (whom to try, when, when to give up: see
``emulator.kernel.policies``); this module does: it takes the victim's
mmap_sem with a real ``down_read_trylock`` (emulator.runtime.rwsem: it fails
while a writer holds it or waits for it, not because of readers), frees the
reapable VMAs' pages for real and uncharges the zone, or sets MMF_OOM_SKIP.
The victim's exit_mmap may zap the same VMAs at once (under the read lock,
from v6.1): each zap claims its pages, so each page is freed and uncharged
once.

:meth:`OomReaper.step` does one thing the policy asks for at emulated time
``now`` and says when to come back; it neither sleeps nor reads a clock of
its own for its decisions, so tests drive it with a FakeClock against real
mms. In a run, :meth:`start` runs the ``oom_reaper`` thread, whose loop only
waits on the run's clock and calls :meth:`step`.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

from ..kernel.mm_types import MMF_OOM_HANDOVER, MMF_OOM_SKIP, MMF_UNSTABLE, MMU_NOTIFIERS, PAGE_SIZE
from ..kernel.policies.base import Attempt, Outcome, ReaperPolicy, SetOomSkip, Wait
from .clock import late_ms


class _Kicked(Exception):
    """A wake-up (a new victim, an exit, stop) ended the reaper's wait."""


class OomReaper:
    """Drives a :class:`ReaperPolicy` against real mms.

    ``victims`` handed to :meth:`wake_oom_reaper` are the supervisor's task
    records (``.mm_index``: whose zone counter the mm's pages are charged to, ``.mm``,
    ``.mmap_sem`` (an ``MmapSem``), ``.pid``, ``.name``, ``.oom_mm_live``: some user still
    holds the mm, ``.victim``). ``clock`` has ``now()``, ``real_wait()``, ``frozen()``,
    ``due()``, ``let_go()`` and ``speed`` (the run's RunClock, or a FakeClock in tests).
    ``note_late(ms, where, task, at)`` hears how late the thread woke for a deadline or
    delay of the policy's. The reaper takes mmap_sem under this process's pid.
    """

    def __init__(self, policy: ReaperPolicy, clock, zone, oom_lock: threading.Lock,
                 printk: Callable[[str], object], on_oom_skip: Callable[[object, str], None],
                 trace: Callable[..., None] | None = None, note_late: Callable[..., None] | None = None):
        self.policy = policy
        self.clock = clock
        self.zone = zone
        self.oom_lock = oom_lock
        self.printk = printk
        self.on_oom_skip = on_oom_skip
        self.trace = trace or (lambda *a, **k: None)
        self.note_late = note_late or (lambda *a, **k: None)
        # Guards the policy (the main thread queues victims, the reaper thread asks it
        # what to do); never held while an attempt takes oom_lock (lock order: oom_lock
        # first, as out_of_memory holds it when it wakes the reaper).
        self._cond = threading.Condition()
        self._kicks = 0                       # bumped by every wake-up: a wait never misses one
        self._stopping = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="oom_reaper", daemon=True)
        self.pid = os.getpid()                 # whose name the reaper takes mmap_sem in
        self._acting_at = 0.0                  # the emulated time step() acts at

    # -- what the supervisor calls ----------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def wake_oom_reaper(self, task, at: float | None = None) -> None:
        """Queue a victim killed at emulated time ``at`` (default: now)."""
        with self._cond:
            at = self.clock.now() if at is None else at
            self.clock.lower_hold(at)                  # we act at the kill, however late we run
            self.policy.wake_oom_reaper(task, at)
            self._publish_deadline(task)
            self._kick()

    def victim_exited(self, task) -> None:
        with self._cond:
            self.policy.victim_exited(task)
            self._kick()

    def pending(self) -> int:
        with self._cond:
            return self.policy.pending()

    def _kick(self) -> None:
        self._kicks += 1
        self._cond.notify_all()

    def _publish_deadline(self, task) -> None:
        """Put the policy's deadline for this mm where ``oomemu ps`` can read it."""
        d = self.policy.deadline_of(task)
        task.mm.reap_deadline = 0.0 if d is None else d

    # -- one step, and the thread that takes them -----------------------------------
    def step(self, now: float) -> float | None:
        """Do the one thing the policy asks for at emulated time ``now`` (an attempt, or
        setting MMF_OOM_SKIP), if any. Returns when to come back: ``now`` if there may be
        more to do at once, a later emulated time, or None (nothing until a wake-up)."""
        with self._cond:
            action = self.policy.next_action(now)
        if isinstance(action, Wait):
            return action.until
        if isinstance(action, Attempt):
            outcome = self.oom_reap_task_mm(action.victim)
            with self._cond:
                self.policy.attempt_done(action.victim, outcome, self.clock.now())
                self._publish_deadline(action.victim)
        elif isinstance(action, SetOomSkip):
            self._acting_at = now
            self.set_oom_skip(action)
        return now

    def _main(self) -> None:
        """Step at the time the clock holds for us (a kill's: the OOM killer holds it there
        when it wakes us, RunClock.lower_hold) or now; then, if the policy wants us back
        later, hold the clock at that time and wait for it (the clock will not pass it
        until we have acted); if not, let go until a wake-up. What touches this thread's
        hold is done under ``_cond``, as the OOM killer's is, so neither undoes the other."""
        try:
            while True:
                with self._cond:
                    if self._stopping:
                        return
                    kicks = self._kicks
                until = self.step(self.clock.now())
                with self._cond:
                    if self._stopping:
                        return
                    if self._kicks != kicks or (until is not None and until <= self.clock.now()):
                        continue                      # a new victim, or more to do now: still held
                    if until is None:
                        self.clock.let_go()
                        self._cond.wait()             # nothing to do until a wake-up
                        continue
                    self.clock.hold(until)            # the clock may go on to ``until``, no further
                try:
                    while (left := until - self.clock.now()) > 0:
                        self._nap(kicks, self.clock.real_wait(left))
                except _Kicked:
                    continue                          # held at the new kill: step at it
                late = late_ms(self.clock.now(), until, self.clock.speed)
                if late:
                    self.note_late(late, "oom_reaper", None, until)
        except BaseException as e:            # reported by the supervisor as a fault of ours
            self.error = e

    def _nap(self, kicks: int, real_s: float) -> None:
        """Wait up to ``real_s``, unless a wake-up comes (_Kicked)."""
        with self._cond:
            if self._kicks == kicks and not self._stopping:
                self._cond.wait(real_s)
            if self._kicks != kicks or self._stopping:
                raise _Kicked

    # -- the actions ---------------------------------------------------------------
    def oom_reap_task_mm(self, task) -> Outcome:
        """One attempt. Returns REAPED, or why not; the policy decides what next."""
        mm = task.mm
        with self.oom_lock:
            if not task.oom_mm_live:                      # the mm is gone (every user exited)
                return Outcome.SKIPPED
            if not task.mmap_sem.down_read_trylock(self.pid):   # mmgrab: no reference to the mm
                self.trace("skip_task_reaping", task, reason="mmap_sem")
                return Outcome.CONTENDED
            try:
                if self.policy.honors_handover and mm.test_bit(MMF_OOM_HANDOVER):
                    self.trace("skip_task_reaping", task, reason="handed over to exit_mmap")
                    return Outcome.HANDED_OVER
                if mm.mmu_notifier == MMU_NOTIFIERS["blockable"]:
                    self.trace("skip_task_reaping", task, reason="blockable mmu notifier")
                    return Outcome.NOTIFIER_BLOCKED
                if mm.test_bit(MMF_OOM_SKIP):
                    self.trace("skip_task_reaping", task, reason="MMF_OOM_SKIP")
                    return Outcome.SKIPPED
                self.trace("start_task_reaping", task)
                mm.set_bit(MMF_UNSTABLE)
                freed = 0
                with self.clock.frozen():             # real work: no emulated time
                    for vma in mm.vmas():
                        if self.policy.can_reap_vma(vma.kind, vma.vm_flags):
                            freed += mm.zap_vma(vma, lambda n: self.zone.uncharge(task.mm_index, n),
                                                self.zone.uncharge_swap)
                task.victim.reaped_kb += freed * PAGE_SIZE // 1024
                kb = mm.rss_kb()
                self.printk("oom_reaper: reaped process %d (%s), now anon-rss:%dkB, file-rss:%dkB, shmem-rss:%dkB"
                            % (task.pid, task.name, kb["anon_rss"], kb["file_rss"], kb["shmem_rss"]))
                left = mm.mapped_pages()
                self.trace("finish_task_reaping", task, freed_kb=freed * PAGE_SIZE // 1024,
                           left_kb=left * PAGE_SIZE // 1024)
                return self.policy.reap_outcome(left)
            finally:
                task.mmap_sem.up_read(self.pid)

    def set_oom_skip(self, action: SetOomSkip) -> None:
        """MMF_OOM_SKIP, as the policy said at the emulated time :meth:`step` acts at (which
        the run clock held for the reaper: the ``reap_deadline`` event says how late, in real
        time, the reaper acted past the moment the clock reached it)."""
        task = action.victim
        if task.mm.test_bit(MMF_OOM_SKIP):
            return
        if action.unable_to_reap:
            late = self.clock.real_since(self._acting_at)
            self.printk("oom_reaper: unable to reap pid:%d (%s)" % (task.pid, task.name))
            task.victim.unable_to_reap = True
            self.trace("reap_deadline", task, reason=action.reason,
                       **({} if late is None else {"late_real_ms": round(late * 1000, 3)}))
        task.mm.set_bit(MMF_OOM_SKIP)
        self.on_oom_skip(task, "oom_reaper")
