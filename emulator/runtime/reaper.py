"""The oom_reaper: a thread in the supervisor that frees victims' memory early.

The *policy* decides (whom to try, when, when to give up: see
``emulator.policies``); this module does: it sleeps on the run's scaled
monotonic clock until the policy's next deadline or until a victim is
queued, takes the victim's mmap_sem with a real non-blocking acquire, frees
the reapable VMAs' pages for real and uncharges the zone.
"""

from __future__ import annotations

import threading
from typing import Callable

import posix_ipc

from ..kernel.mm_types import MMF_OOM_HANDOVER, MMF_OOM_SKIP, MMF_UNSTABLE, MMU_NOTIFIERS, PAGE_SIZE
from ..kernel.policies.base import Attempt, Outcome, ReaperPolicy, SetOomSkip, Wait


class OomReaper:
    """Drives a :class:`ReaperPolicy` against real mms.

    ``victims`` handed to :meth:`wake_oom_reaper` are the supervisor's task
    records (``.mm``, ``.mmap_sem``, ``.pid``, ``.name``, ``.victim``).
    """

    def __init__(self, policy: ReaperPolicy, clock, zone, oom_lock: threading.Lock,
                 printk: Callable[[str], object], on_oom_skip: Callable[[object, str], None],
                 trace: Callable[..., None] | None = None):
        self.policy = policy
        self.clock = clock
        self.zone = zone
        self.oom_lock = oom_lock
        self.printk = printk
        self.on_oom_skip = on_oom_skip
        self.trace = trace or (lambda *a, **k: None)
        self._cond = threading.Condition()
        self._stopping = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="oom_reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def wake_oom_reaper(self, task) -> None:
        with self._cond:
            self.policy.wake_oom_reaper(task, self.clock.now())
            self._publish_deadline(task)
            self._cond.notify_all()

    def _publish_deadline(self, task) -> None:
        """Put the policy's deadline for this mm where ``oomemu ps`` can read it."""
        d = self.policy.deadline_of(task)
        task.mm.reap_deadline = 0.0 if d is None else self.clock.t0 + self.clock.to_real(d)

    def victim_exited(self, task) -> None:
        with self._cond:
            self.policy.victim_exited(task)
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return self.policy.pending()

    def _main(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._stopping:
                        return
                    now = self.clock.now()
                    action = self.policy.next_action(now)
                    if isinstance(action, Wait):
                        timeout = None if action.until is None else self.clock.to_real(action.until - now)
                        self._cond.wait(timeout)
                        continue
                if isinstance(action, Attempt):
                    outcome = self.oom_reap_task_mm(action.victim)
                    with self._cond:
                        self.policy.attempt_done(action.victim, outcome, self.clock.now())
                        self._publish_deadline(action.victim)
                elif isinstance(action, SetOomSkip):
                    self.set_oom_skip(action)
        except BaseException as e:            # reported by the supervisor as a fault of ours
            self.error = e

    def oom_reap_task_mm(self, task) -> Outcome:
        """One attempt. Returns REAPED, or why not; the policy decides what next."""
        mm = task.mm
        with self.oom_lock:
            if not task.has_mm:
                return Outcome.SKIPPED
            try:
                task.mmap_sem.acquire(0)             # down_read_trylock
            except posix_ipc.BusyError:
                self.trace("skip_task_reaping", task, reason="mmap_sem")
                return Outcome.CONTENDED
            try:
                if self.policy.HONORS_HANDOVER and mm.test_bit(MMF_OOM_HANDOVER):
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
                for vma in mm.vmas():
                    if self.policy.can_reap_vma(vma.kind, vma.vm_flags):
                        freed += mm.zap_vma(vma)
                self.zone.uncharge(task.index, freed)
                task.victim.reaped_kb += freed * PAGE_SIZE // 1024
                kb = mm.rss_kb()
                self.printk("oom_reaper: reaped process %d (%s), now anon-rss:%dkB, file-rss:%dkB, shmem-rss:%dkB"
                            % (task.pid, task.name, kb["anon_rss"], kb["file_rss"], kb["shmem_rss"]))
                left = mm.resident_pages()
                self.trace("finish_task_reaping", task, freed_kb=freed * PAGE_SIZE // 1024,
                           left_kb=left * PAGE_SIZE // 1024)
                if left >= self.policy.SUBSTANTIAL_PAGES:
                    return Outcome.MEMORY_LEFT
                return Outcome.REAPED
            finally:
                task.mmap_sem.release()

    def set_oom_skip(self, action: SetOomSkip) -> None:
        task = action.victim
        if task.mm.test_bit(MMF_OOM_SKIP):
            return
        if action.unable_to_reap:
            self.printk("oom_reaper: unable to reap pid:%d (%s)" % (task.pid, task.name))
            task.victim.unable_to_reap = True
            self.trace("reap_deadline", task, reason=action.reason)
        task.mm.set_bit(MMF_OOM_SKIP)
        self.on_oom_skip(task, "oom_reaper")
