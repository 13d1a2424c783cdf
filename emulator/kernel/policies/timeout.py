"""``timeout``: the 2018 timeout patch, "mm, oom: fix unnecessary killing of additional processes".

Lineage: David Rientjes, linux-mm, May-July 2018; carried in -mm, never
merged. The reaper's list becomes a real list: every pass makes one attempt
per victim not yet reaped (re-queued at the tail) and sleeps ``HZ/10``
between passes, so a victim stuck on its mmap_sem does not stop the others
from being reaped. ``MAX_OOM_REAP_RETRIES`` and the blockable-notifier sleep
are gone: each mm has a deadline, ``OOM_REAP_TIMEOUT_MSECS`` = 10 s after it
was first queued. ``MMF_OOM_SKIP`` is set by ``exit_mmap`` after
``free_pgtables`` (the memory is really gone), or by the reaper when the
deadline passes ("unable to reap").
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque

from .base import (DELAY, INTERVAL, Attempt, ExitMmapRules, OomSkipAt, Outcome, ReaperPolicy, SetOomSkip,
                   Wait)


class Timeout(ReaperPolicy):
    name = "timeout"
    summary = "the 2018 timeout patch: a real list, one try per victim per pass, 10 s deadline per mm"
    DEFAULTS = {
        "reap_timeout_s": 10.0,           # OOM_REAP_TIMEOUT_MSECS: patience for a true livelock
        "reap_pass_interval_s": 0.1,      # schedule_timeout_idle(HZ/10) between passes
    }
    LIMITS = {"reap_timeout_s": DELAY,    # 0: give up on every victim at once
              "reap_pass_interval_s": INTERVAL}
    EXIT_MMAP = ExitMmapRules(oom_skip=OomSkipAt.AFTER_FREE_PGTABLES, reap_first=False)

    def __init__(self, overrides=None):
        super().__init__(overrides)
        self._list: deque = deque()           # victims not yet reaped, in queue order
        self._live: set = set()               # every victim still held
        self._deadlines: list = []            # heap of (deadline, seq, victim)
        self._seq = itertools.count()
        self._pass: deque = deque()           # the rest of the current pass
        self._next_pass_at = 0.0

    def pending(self) -> int:
        return len(self._live)

    def deadline_of(self, victim) -> float | None:
        for d, _, v in self._deadlines:
            if v is victim:
                return d
        return None

    def wake_oom_reaper(self, victim, now):
        if victim in self._live:
            return
        self._live.add(victim)
        self._list.append(victim)
        heapq.heappush(self._deadlines, (now + self.consts["reap_timeout_s"], next(self._seq), victim))

    def _drop(self, victim):
        self._live.discard(victim)
        if victim in self._list:
            self._list.remove(victim)

    def next_action(self, now):
        # Deadlines first, so that one is never later than a pass's attempt.
        while self._deadlines and self._deadlines[0][2] not in self._live:
            heapq.heappop(self._deadlines)            # stale: the victim was dropped
        if self._deadlines and self._deadlines[0][0] <= now:
            _, _, victim = heapq.heappop(self._deadlines)
            self._drop(victim)
            return SetOomSkip(victim, True, "reap timeout")
        while self._pass and self._pass[0] not in self._list:
            self._pass.popleft()
        if self._pass:
            return Attempt(self._pass.popleft())
        wake = [self._deadlines[0][0]] if self._deadlines else []
        if self._list:
            if now >= self._next_pass_at:
                self._pass = deque(self._list)
                self._next_pass_at = now + self.consts["reap_pass_interval_s"]
                return Attempt(self._pass.popleft())
            wake.append(self._next_pass_at)
        return Wait(min(wake) if wake else None)

    def attempt_done(self, victim, outcome, now):
        if outcome is Outcome.SKIPPED:
            self._drop(victim)                        # exit_mmap finished: nothing left to do
        elif outcome.reaped and victim in self._list:  # (its exit may have dropped it meanwhile)
            self._list.remove(victim)                 # reaped once (MMF_UNSTABLE): now wait
        # CONTENDED / NOTIFIER_BLOCKED: stays on the list for the next pass

    def victim_exited(self, victim):
        """The victim's exit_mmap set MMF_OOM_SKIP: forget it (its deadline is stale)."""
        self._drop(victim)
