"""What a reaper policy is: constants, VMA rules, exit_mmap rules, and a queue.

A policy is pure decision logic. The reaper thread (``emulator.reaper``)
asks :meth:`ReaperPolicy.next_action` what to do at emulated time ``now``,
does it to real processes, and reports back with :meth:`attempt_done`.
Nothing here sleeps, reads a clock or touches a process, so a policy can be
driven through hours of emulated time by a test with a fake clock.

To add a policy: subclass :class:`ReaperPolicy` in a module of its own, set
``name``, ``summary`` and ``DEFAULTS``, implement the three queue methods,
and pass the class to :func:`emulator.policies.register`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Hashable

from ..errors import UsageError
from ..mm import VM_HUGETLB, VM_LOCKED, VM_PFNMAP, can_reap_vma


class Outcome(Enum):
    """What one oom_reap_task_mm() attempt found."""
    REAPED = "reaped"                      # took mmap_sem, freed every reapable VMA: nothing left
    MEMORY_LEFT = "memory_left"            # reaped what it could; unreapable memory remains
    CONTENDED = "contended"                # down_read_trylock(mmap_sem) failed
    NOTIFIER_BLOCKED = "notifier_blocked"  # mm has blockable mmu notifiers
    SKIPPED = "skipped"                    # MMF_OOM_SKIP already set, or the mm is gone
    HANDED_OVER = "handed_over"            # exit_mmap owns the mm and will set MMF_OOM_SKIP
                                           # (reported only to policies with HONORS_HANDOVER)

    @property
    def reaped(self) -> bool:
        return self in (Outcome.REAPED, Outcome.MEMORY_LEFT)


@dataclass(frozen=True)
class Wait:
    """Nothing to do before ``until`` (emulated s); None: until a victim is queued."""
    until: float | None


@dataclass(frozen=True)
class Attempt:
    victim: Hashable


@dataclass(frozen=True)
class SetOomSkip:
    """Hide the victim from the OOM killer. ``unable_to_reap``: print that the
    reaper gave up (the executor prints only if MMF_OOM_SKIP was not yet set)."""
    victim: Hashable
    unable_to_reap: bool
    reason: str


Action = Wait | Attempt | SetOomSkip

# When exit_mmap sets MMF_OOM_SKIP for an OOM victim.
BEFORE_UNMAP = "before_unmap"              # v4.17: before munlock/unmap_vmas/free_pgtables
AFTER_UNMAP = "after_unmap"                # v6.1+: after unmap_vmas, before free_pgtables
AFTER_FREE_PGTABLES = "after_free_pgtables"  # the seed's patch: when the memory is gone


class ReaperPolicy:
    name: str = ""
    summary: str = ""
    DEFAULTS: dict[str, float] = {}
    #: VMAs with any of these flags are never reaped (can_madv_dontneed_vma)
    UNREAPABLE_VM_FLAGS = VM_LOCKED | VM_HUGETLB | VM_PFNMAP
    EXIT_MMAP_OOM_SKIP = BEFORE_UNMAP
    #: exit_mmap of a victim first reaps what the reaper could (v4.17's __oom_reap_task_mm)
    EXIT_MMAP_REAPS_FIRST = True
    #: exit_mmap marks the mm MMF_OOM_HANDOVER once it holds the VMAs, and the
    #: reaper leaves MMF_OOM_SKIP to it (the 2018 hand-over RFC)
    HONORS_HANDOVER = False
    #: after a reap, this much left (rss, unreapable VMAs, page tables) is "substantial"
    SUBSTANTIAL_PAGES = 256                 # 1 MB

    def __init__(self, overrides: dict[str, float] | None = None):
        self.c = dict(self.DEFAULTS)
        for key, value in (overrides or {}).items():
            if key not in self.c:
                known = ", ".join(sorted(self.c)) or "none"
                raise UsageError(f"--set {key}: policy {self.name} has no such constant (known: {known})")
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise UsageError(f"--set {key}={value}: not a number") from None
            if not (value >= 0 and value < 1e9):
                raise UsageError(f"--set {key}={value}: must be >= 0 and finite")
            self.c[key] = type(self.DEFAULTS[key])(value)

    # -- mm rules -----------------------------------------------------------
    def can_reap_vma(self, kind: str, vm_flags: int) -> bool:
        """__oom_reap_task_mm: skip unreapable VMAs, reap anonymous or private ones."""
        return can_reap_vma(kind, vm_flags, self.UNREAPABLE_VM_FLAGS)

    def exit_mmap_spec(self) -> dict:
        """What the worker's exit_mmap needs to know (plain data: it crosses a process boundary)."""
        return {"oom_skip": self.EXIT_MMAP_OOM_SKIP, "reap_first": self.EXIT_MMAP_REAPS_FIRST,
                "unreapable_flags": self.UNREAPABLE_VM_FLAGS, "handover": self.HONORS_HANDOVER}

    # -- the reaper's queue (pure; ``now`` in emulated seconds) ---------------
    def wake_oom_reaper(self, victim: Hashable, now: float) -> None:
        raise NotImplementedError

    def next_action(self, now: float) -> Action:
        raise NotImplementedError

    def attempt_done(self, victim: Hashable, outcome: Outcome, now: float) -> None:
        raise NotImplementedError

    def pending(self) -> int:
        """Victims the reaper still holds (queued or being worked on)."""
        raise NotImplementedError

    def deadline_of(self, victim: Hashable) -> float | None:
        """When the reaper will give up on this victim (emulated s), if it knows yet."""
        return None

    def victim_exited(self, victim: Hashable) -> None:
        """The victim's exit_mmap has set MMF_OOM_SKIP; by default the next attempt notices."""
