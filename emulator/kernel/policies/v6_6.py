"""``v6.6``: mainline today (mm/oom_kill.c and mm/mmap.c as of v6.6).

Lineage, on top of v4.17:

* v4.19: blockable mmu notifiers are invalidated in non-blocking mode; a
  notifier that would block fails the attempt, which is retried.
* v5.18 (Nico Pache, robust futexes): the reaper starts ``OOM_REAPER_DELAY``
  = 2 s after the kill, through a timer per victim (``queue_oom_reaper``),
  to give the victim a chance to exit on its own first.
* v5.19+: mlocked memory is reaped (``__oom_reap_task_mm`` skips only
  ``VM_HUGETLB | VM_PFNMAP``).
* v6.1: ``exit_mmap`` unmaps under the read lock (so the reaper, a reader,
  may go on working on the same mm), sets ``MMF_OOM_SKIP`` after
  ``unmap_vmas``, and frees the page tables under the write lock.

Still a single-pointer LIFO list, ``MAX_OOM_REAP_RETRIES`` = 10 attempts
``HZ/10`` apart, and ``MMF_OOM_SKIP`` set unconditionally when done.
"""

from __future__ import annotations

import heapq
import itertools

from ..mm_types import VM_HUGETLB, VM_PFNMAP
from .base import DELAY, ExitMmapRules, MmapLock, OomSkipAt, Wait
from .v4_17 import V417


class V66(V417):
    name = "v6.6"
    summary = "mainline today: reaper starts 2 s after the kill, mlocked memory reapable, LIFO, 10 tries"
    DEFAULTS = {
        "oom_reaper_delay_s": 2.0,        # OOM_REAPER_DELAY: let the victim exit by itself first
        "max_oom_reap_retries": 10,
        "reap_retry_interval_s": 0.1,
    }
    LIMITS = dict(V417.LIMITS, oom_reaper_delay_s=DELAY)    # 0: v5.17, no delay
    HAS_PROCESS_MRELEASE = True                              # v5.15
    EXIT_MMAP = ExitMmapRules(oom_skip=OomSkipAt.AFTER_UNMAP, reap_first=False,
                              unreapable_vm_flags=VM_HUGETLB | VM_PFNMAP,    # mlocked memory is reapable
                              unmap_lock=MmapLock.READ, free_pgtables_lock=MmapLock.WRITE)
    NOTIFIER_SLEEPS_THEN_GIVES_UP = False

    def __init__(self, overrides=None):
        super().__init__(overrides)
        self._timers: list = []           # heap of (expires, seq, victim): oom_reaper_timer
        self._seq = itertools.count()
        self._armed: set = set()          # MMF_OOM_REAP_QUEUED

    def pending(self) -> int:
        return super().pending() + len(self._timers)

    def wake_oom_reaper(self, victim, now):
        """queue_oom_reaper(): arm the victim's timer; it queues the victim when it fires."""
        if victim in self._armed:
            return
        self._armed.add(victim)
        heapq.heappush(self._timers, (now + self.consts["oom_reaper_delay_s"], next(self._seq), victim))

    def _next_wake(self):
        return self._timers[0][0] if self._timers else None

    def next_action(self, now):
        while self._timers and self._timers[0][0] <= now:
            _, _, victim = heapq.heappop(self._timers)
            super().wake_oom_reaper(victim, now)          # the timer's wake_oom_reaper()
        action = super().next_action(now)
        if isinstance(action, Wait) and self._timers:
            t = self._timers[0][0]
            if action.until is None or t < action.until:
                return Wait(t)
        return action
