"""``v4.17``: the OOM reaper as the 2018 timeout patch found it (mm/oom_kill.c, v4.17).

Lineage: the oom_reaper kthread came in v4.6 (Michal Hocko); by v4.17 it
keeps a single-pointer chain of victims (``task->oom_reaper_list``, pushed
on the head by ``wake_oom_reaper``, so LIFO) and works on one victim at a
time in ``oom_reap_task``: up to ``MAX_OOM_REAP_RETRIES`` attempts of
``oom_reap_task_mm``, ``HZ/10`` apart, then ``MMF_OOM_SKIP`` unconditionally.
An mm with blockable mmu notifiers gets a 1 s sleep and is then given up.
``exit_mmap`` sets ``MMF_OOM_SKIP`` before it unmaps anything.
"""

from __future__ import annotations

from .base import (DELAY, INTERVAL, RETRIES, Attempt, ExitMmapRules, OomSkipAt, Outcome, ReaperPolicy,
                   SetOomSkip, Wait)


class V417(ReaperPolicy):
    name = "v4.17"
    summary = "mainline 2018: LIFO chain, one victim at a time, 10 tries 100 ms apart, then MMF_OOM_SKIP"
    DEFAULTS = {
        "max_oom_reap_retries": 10,       # ~1 s of trylock attempts at HZ/10
        "reap_retry_interval_s": 0.1,     # schedule_timeout_idle(HZ/10)
        "blockable_notifier_sleep_s": 1.0,  # schedule_timeout_idle(HZ), then give up
    }
    LIMITS = {"max_oom_reap_retries": RETRIES, "reap_retry_interval_s": INTERVAL,
              "blockable_notifier_sleep_s": DELAY}
    EXIT_MMAP = ExitMmapRules(oom_skip=OomSkipAt.BEFORE_UNMAP, reap_first=True)
    #: v4.17: an mm with blockable mmu notifiers gets a 1 s sleep and is given up on;
    #: from v4.19 non-blocking invalidation fails the attempt, which is retried
    NOTIFIER_SLEEPS_THEN_GIVES_UP = True
    #: the hand-over RFC: a reap that leaves substantial memory counts as a failed try
    RETRY_WHILE_MEMORY_LEFT = False

    def __init__(self, overrides=None):
        super().__init__(overrides)
        self._chain: list = []       # oom_reaper_list: the head is the end of this list
        self._current = None
        self._attempts = 0
        self._resume_at = 0.0
        self._finish: SetOomSkip | None = None
        self._started_at = 0.0

    def pending(self) -> int:
        return len(self._chain) + (self._current is not None)

    def wake_oom_reaper(self, victim, now):
        # "tsk == oom_reaper_list || tsk->oom_reaper_list": already queued
        if victim is self._current or victim in self._chain:
            return
        self._chain.append(victim)

    def deadline_of(self, victim):
        """Known once the victim is being worked on: MAX_OOM_REAP_RETRIES tries, HZ/10 apart."""
        if victim is self._current and self._finish is None:
            return self._started_at + self.consts["max_oom_reap_retries"] * self.consts["reap_retry_interval_s"]
        return None

    def _next_wake(self) -> float | None:
        """When something other than the current victim needs the reaper (subclasses: timers)."""
        return None

    def next_action(self, now):
        if self._current is None:
            if not self._chain:
                return Wait(self._next_wake())
            self._current = self._chain.pop()          # LIFO
            self._attempts, self._resume_at, self._finish = 0, now, None
            self._started_at = now
        if now < self._resume_at:
            return Wait(self._resume_at)
        if self._finish is not None:
            action, self._current = self._finish, None
            return action
        return Attempt(self._current)

    def retry(self, victim, outcome, now) -> None:
        """A failed attempt: sleep HZ/10; after MAX_OOM_REAP_RETRIES, give up."""
        self._resume_at = now + self.consts["reap_retry_interval_s"]
        if self._attempts >= self.consts["max_oom_reap_retries"]:
            self._finish = SetOomSkip(victim, True, "MAX_OOM_REAP_RETRIES")

    def attempt_done(self, victim, outcome, now):
        assert victim is self._current
        self._attempts += 1
        if outcome is Outcome.HANDED_OVER:
            self._current = None              # exit_mmap will set MMF_OOM_SKIP
        elif outcome is Outcome.MEMORY_LEFT and self.RETRY_WHILE_MEMORY_LEFT:
            self.retry(victim, outcome, now)
        elif outcome.reaped or outcome is Outcome.SKIPPED:
            self._finish = SetOomSkip(victim, False, outcome.value)
        elif outcome is Outcome.NOTIFIER_BLOCKED and self.NOTIFIER_SLEEPS_THEN_GIVES_UP:
            # up_read; schedule_timeout_idle(HZ); "success" without reaping
            self._resume_at = now + self.consts["blockable_notifier_sleep_s"]
            self._finish = SetOomSkip(victim, False, "blockable mmu notifier")
        else:                                 # CONTENDED, or a notifier that would block
            self.retry(victim, outcome, now)
