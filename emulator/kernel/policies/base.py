"""What a reaper policy is: constants, VMA rules, exit_mmap rules, and a queue.

A policy is pure decision logic, and one unit: every rule of it is in its
one file. The reaper (``emulator.runtime.reaper``) asks
:meth:`ReaperPolicy.next_action` what to do at emulated time ``now``, does
it to real processes, and reports back with :meth:`attempt_done`; each
worker's exit_mmap follows the policy's :class:`ExitMmapRules`, which the
supervisor hands it in its start-up record. Nothing here sleeps, reads a
clock or touches a process, so a policy can be driven through hours of
emulated time by a test with a fake clock.

To add a policy: subclass :class:`ReaperPolicy` (or a policy close to yours)
in a file of its own, set ``name``, ``summary``, ``DEFAULTS`` (and
``LIMITS``: what ``--set`` may change each constant to) and ``EXIT_MMAP``,
implement the queue methods, and pass the class to
:func:`emulator.policies.register`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Hashable

from ...errors import UsageError
from ..clock import JIFFY_S
from ..mm_types import VM_HUGETLB, VM_LOCKED, VM_PFNMAP, can_reap_vma


class Outcome(Enum):
    """What one oom_reap_task_mm() attempt found."""
    REAPED = "reaped"                      # took mmap_sem, freed every reapable VMA: nothing left
    MEMORY_LEFT = "memory_left"            # reaped what it could; unreapable memory remains
    CONTENDED = "contended"                # down_read_trylock(mmap_sem) failed
    NOTIFIER_BLOCKED = "notifier_blocked"  # mm has blockable mmu notifiers
    SKIPPED = "skipped"                    # MMF_OOM_SKIP already set, or the mm is gone
    HANDED_OVER = "handed_over"            # exit_mmap owns the mm and will set MMF_OOM_SKIP
                                           # (reported only to policies that honor the hand-over)

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


class OomSkipAt(Enum):
    """Where an OOM victim's exit_mmap sets MMF_OOM_SKIP (the value names it in traces)."""
    BEFORE_UNMAP = "before_unmap"                # v4.17: before munlock, unmap_vmas, free_pgtables
    AFTER_UNMAP = "after_unmap"                  # v6.1+: after unmap_vmas, before free_pgtables
    AFTER_FREE_PGTABLES = "after_free_pgtables"  # the 2018 timeout patch: when the memory is gone


class MmapLock(Enum):
    """How exit_mmap holds mmap_sem for a part of its work."""
    NONE = "none"            # no lock: mm_users is 0, nobody else can take it (before v6.1)
    READ = "read"            # mmap_read_lock: the reaper (a reader too) may work on the mm at once
    WRITE = "write"          # mmap_write_lock: waits for the reaper to let go, and keeps it out


@dataclass(frozen=True)
class ExitMmapRules:
    """What a victim's own exit_mmap does under a policy. It crosses to each worker
    in its start-up record (``runtime.protocol.WorkerSpec``), field by field."""
    #: where MMF_OOM_SKIP is set
    oom_skip: OomSkipAt = OomSkipAt.BEFORE_UNMAP
    #: first reap what the reaper could (v4.17's __oom_reap_task_mm in exit_mmap)
    reap_first: bool = True
    #: VMAs with any of these flags are never reaped (can_madv_dontneed_vma)
    unreapable_vm_flags: int = VM_LOCKED | VM_HUGETLB | VM_PFNMAP
    #: once it holds the VMAs, exit_mmap marks the mm MMF_OOM_HANDOVER and the
    #: reaper leaves MMF_OOM_SKIP to it (the 2018 hand-over RFC)
    handover: bool = False
    #: how it holds mmap_sem while it unmaps the VMAs (v6.1+: for read)
    unmap_lock: MmapLock = MmapLock.NONE
    #: how it holds mmap_sem while it frees the page tables (v6.1+: for write)
    free_pgtables_lock: MmapLock = MmapLock.NONE

    @property
    def waits_for_reaper(self) -> bool:
        """The 2018 timeout patch: a victim that sets MMF_OOM_SKIP only when its memory
        is gone first waits (down_write; up_write) for the reaper to let go of the mm."""
        return self.oom_skip is OomSkipAt.AFTER_FREE_PGTABLES and not self.handover


MAX_SECONDS = 86_400.0                     # a day: the longest a run lasts (run_deadline_s)
MAX_NAME_BYTES = 24                        # a policy's name: the run's zone stores it in this many bytes


@dataclass(frozen=True)
class Limit:
    """What ``--set`` accepts for one constant: ``lo`` <= value <= ``hi``, a whole
    number if ``integer``; ``why`` says what the bounds stand for."""
    lo: float
    hi: float
    integer: bool = False
    why: str = ""

    def describe(self) -> str:
        what = "a whole number" if self.integer else "a number"
        return f"{what} from {self.lo:g} to {self.hi:g}" + (f" ({self.why})" if self.why else "")

    def parse(self, key: str, value) -> int | float:
        """The value as the constant's type, or UsageError (one line) saying the range."""
        if isinstance(value, int) and value.bit_length() > 64:
            shown = f"<a {value.bit_length()}-bit integer>"
        else:
            shown = repr(value)[1:-1] if isinstance(value, str) else str(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
        head = f"--set {key}={shown}"
        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text) if self.integer else float(text)
            except ValueError:
                try:
                    value = float(text)                 # "2.7" for a whole number: say so below
                except ValueError:
                    raise UsageError(f"{head}: not a number; {key} is {self.describe()}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{head}: not a number; {key} is {self.describe()}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{head}: must be >= 0 and finite; {key} is {self.describe()}")
        if (self.integer and not isinstance(value, int)) or not self.lo <= value <= self.hi:
            raise UsageError(f"{head}: must be {self.describe()}")
        return int(value) if self.integer else float(value)


#: MAX_OOM_REAP_RETRIES: the first attempt is always made; 1000 tries is minutes of retrying
RETRIES = Limit(1, 1000, integer=True)
#: a sleep between attempts or passes: less than a jiffy would be a busy loop
INTERVAL = Limit(JIFFY_S, MAX_SECONDS, why="seconds, a jiffy to a day")
#: a one-off wait (a delay, a deadline, a sleep before giving up): 0 is none
DELAY = Limit(0, MAX_SECONDS, why="seconds, at most a day")


class Tunable:
    """Constants with defaults (``DEFAULTS``) that ``--set`` may change, each within its range
    (``LIMITS``; a constant without one gets :meth:`limit`'s default: whole numbers 0..1e6
    for an int, ``FLOAT_LIMIT`` for a float). A reaper policy's, or a user-space daemon's."""
    name: str = ""
    summary: str = ""
    DEFAULTS: dict[str, float] = {}
    LIMITS: dict[str, Limit] = {}
    FLOAT_LIMIT: ClassVar[Limit] = DELAY
    KIND: ClassVar[str] = "policy"            # what the messages call it, and its constants
    CONSTANT: ClassVar[str] = "constant"

    def __init__(self, overrides: dict[str, float | str] | None = None):
        #: the constants (``DEFAULTS``, changed by ``--set``)
        self.consts = dict(self.DEFAULTS)
        for key, value in (overrides or {}).items():
            if key not in self.consts:
                known = ", ".join(sorted(self.consts)) or "none"
                raise UsageError(f"--set {key}: {self.KIND} {self.name} has no such {self.CONSTANT} "
                                 f"(known: {known})")
            self.consts[key] = self.limit(key).parse(key, value)

    @classmethod
    def limit(cls, key: str) -> Limit:
        """The range of constant ``key``: from LIMITS, else by the type of its default."""
        if key in cls.LIMITS:
            return cls.LIMITS[key]
        default = cls.DEFAULTS[key]
        if isinstance(default, int) and not isinstance(default, bool):
            return Limit(0, 1_000_000, integer=True)
        return cls.FLOAT_LIMIT


class ReaperPolicy(Tunable):
    """A reaper policy: its constants, its VMA and exit_mmap rules, and its queue (pure)."""
    #: what a victim's exit_mmap does, and which VMAs the reaper may reap
    EXIT_MMAP: ClassVar[ExitMmapRules] = ExitMmapRules()
    #: after a reap, this much left (rss, unreapable VMAs, page tables) is "substantial"
    SUBSTANTIAL_PAGES = 256                 # 1 MB
    #: the user-space OOM daemon running on top (``emulator.userspace``), if the run names one
    daemon = None
    #: the kernel has process_mrelease(2) (Linux 5.15+); without it the call is ENOSYS
    HAS_PROCESS_MRELEASE: ClassVar[bool] = False

    # -- mm rules -----------------------------------------------------------
    def can_reap_vma(self, kind: str, vm_flags: int) -> bool:
        """__oom_reap_task_mm: skip unreapable VMAs, reap anonymous or private ones."""
        return can_reap_vma(kind, vm_flags, self.EXIT_MMAP.unreapable_vm_flags)

    @property
    def honors_handover(self) -> bool:
        """Does the reaper leave MMF_OOM_SKIP to an exit_mmap that has marked the mm
        MMF_OOM_HANDOVER (the attempt then finds HANDED_OVER)?"""
        return self.EXIT_MMAP.handover

    def reap_outcome(self, left_pages: int) -> Outcome:
        """What a reap that leaves ``left_pages`` in the mm (rss, unreapable VMAs, page
        tables) found: MEMORY_LEFT if that is substantial, else REAPED."""
        return Outcome.MEMORY_LEFT if left_pages >= self.SUBSTANTIAL_PAGES else Outcome.REAPED

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
