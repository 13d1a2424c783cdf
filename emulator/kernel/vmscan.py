"""Reclaim before the OOM killer, as mm/vmscan.c does it for page cache. Pure: no processes.

Before an allocation that does not fit calls the OOM killer, the allocator
reclaims (``try_to_free_pages``, or ``try_to_free_mem_cgroup_pages`` for a
memcg at its limit): clean page cache goes at once, mapped or not (its
mappers' file-rss drops); dirty page cache must be written back first, which
the flusher threads do at the disk's rate once reclaim wakes them
(``wakeup_flusher_threads``), while the allocator waits for it
(``reclaim_throttle(VMSCAN_THROTTLE_WRITEBACK)``, at most HZ/10 at a time).
Mlocked page cache is unevictable. With a swap device, when clean page
cache is not enough, reclaim swaps anonymous pages out (:func:`shrink_anon`;
not mlocked ones) before it waits on writeback; shmem is never swapped here.
Only when reclaim can make no room is the OOM killer called.

The runtime gives views of the objects (:class:`CacheView`) and applies what
:func:`shrink_page_cache` and :class:`Writeback` decide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: reclaim_throttle(VMSCAN_THROTTLE_WRITEBACK) waits at most HZ/10
THROTTLE_WRITEBACK_S = 0.1


@dataclass(frozen=True)
class CacheView:
    """One page-cache or shmem object, as reclaim sees it."""
    index: int
    kind: str               # "file" (page cache) or "shmem"
    resident: int           # pages in memory (charged)
    dirty: int              # of them, dirty (the first ``dirty`` pages)
    unevictable: int        # of them, mlocked by a mapper (the first ``unevictable`` pages); page cache only
    mapped: bool            # some VMA maps it now; page cache only (shmem: never reclaimed, not looked at)
    in_domain: bool         # charged inside the OOM domain (the zone, or the memcg at its limit)

    @property
    def clean_evictable(self) -> int:
        """Pages reclaim can take now: clean and not mlocked."""
        if self.kind != "file":
            return 0
        return max(0, self.resident - max(self.dirty, self.unevictable))

    @property
    def dirty_evictable(self) -> int:
        """Dirty pages reclaim could take once written back."""
        if self.kind != "file":
            return 0
        return max(0, self.dirty - self.unevictable)


def shrink_page_cache(objects: list[CacheView], need: int) -> list[tuple[int, int]]:
    """Which clean pages to reclaim for ``need`` pages: (object index, pages), taking
    unmapped page cache first (the LRU keeps referenced, mapped pages longer), each
    group in object order, and no more than needed."""
    out = []
    for mapped in (False, True):
        for o in objects:
            if need <= 0:
                return out
            if o.in_domain and o.mapped == mapped and (n := min(o.clean_evictable, need)) > 0:
                out.append((o.index, n))
                need -= n
    return out


@dataclass(frozen=True)
class AnonView:
    """One anon VMA that reclaim may swap out now (not mlocked; its task not running)."""
    task: int
    vma: int
    resident: int           # its pages in memory
    requester: bool = False  # the reclaiming task's own: its pages are the most recently used


def shrink_anon(vmas: list[AnonView], need: int, swap_free: int) -> list[tuple[int, int, int]]:
    """Which anon pages to swap out for ``need`` pages, with ``swap_free`` swap slots left:
    (task, vma, pages), other tasks' first in the order given (the LRU's stand-in), the
    reclaiming task's own last, and no more than needed or than the swap device holds."""
    out = []
    left = min(need, swap_free)
    for own in (False, True):
        for v in vmas:
            if left <= 0:
                return out
            if v.requester == own and (n := min(v.resident, left)) > 0:
                out.append((v.task, v.vma, n))
                left -= n
    return out


def reclaimable(objects: list[CacheView]) -> tuple[int, int]:
    """(clean pages reclaim can take now, dirty pages it could take after writeback) in the domain."""
    clean = sum(o.clean_evictable for o in objects if o.in_domain)
    dirty = sum(o.dirty_evictable for o in objects if o.in_domain)
    return clean, dirty


class Writeback:
    """The flusher threads: once woken, they write dirty page cache back at
    ``rate_pages_per_s``, in object order, until none is left. Time is a parameter."""

    def __init__(self, rate_pages_per_s: float):
        self.rate = rate_pages_per_s
        self.since: float | None = None       # when the flushers were woken (None: idle)
        self._budget = 0.0                    # pages' worth of writing not yet spent

    @property
    def active(self) -> bool:
        return self.since is not None

    def wake(self, now: float) -> bool:
        """wakeup_flusher_threads(); returns whether they were idle."""
        if self.since is not None:
            return False
        self.since, self._budget = now, 0.0
        return True

    def advance(self, dirty: list[tuple[int, int]], now: float) -> list[tuple[int, int]]:
        """Writing from the last advance to ``now``: which pages became clean, as
        (object index, pages), given each object's dirty pages (in object order).
        The flushers go idle when nothing dirty is left."""
        if self.since is None:
            return []
        self._budget += max(0.0, now - self.since) * self.rate
        self.since = now
        out = []
        for index, pages in dirty:
            if self._budget < 1:
                break
            n = min(pages, int(self._budget))
            if n > 0:
                out.append((index, n))
                self._budget -= n
        if sum(p for _, p in dirty) == sum(n for _, n in out):
            self.since, self._budget = None, 0.0         # all clean: idle
        return out

    def eta(self, pages: int, now: float) -> float:
        """When ``pages`` more pages will have been written back (the flushers awake)."""
        if self.since is None or pages <= 0:
            return now
        return now + max(0.0, pages - self._budget) / self.rate if self.rate > 0 else math.inf


def throttle_until(now: float, eta: float, jiffy_s: float) -> float:
    """Until when an allocator waiting on writeback sleeps: until enough is written back,
    but at least a jiffy (a sleep is never shorter) and at most THROTTLE_WRITEBACK_S
    (then it retries reclaim)."""
    return min(max(eta, now + jiffy_s), now + THROTTLE_WRITEBACK_S)
