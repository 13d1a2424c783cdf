"""The OOM killer's view of every task of a run, for a full scan per OOM at a small constant.

Reading a task in full (its TaskView: the mm header, the VMA table, what the
supervisor knows of it) costs some 12 microseconds; a thousand of them, more
than everything else an OOM kill does. But every task's badness is bounded
from above by numbers the run already keeps in one place: the zone's charge
counter of its mm (anon pages and page tables: every page the mm counts is
charged first and uncharged last, so the charge is never below the count), its
swap entries (as many as the supervisor swapped out and has not swapped back in: a
zap only frees some),
the pages of page-cache and shmem objects its VMAs map (no more than the
VMA's size, nor than the object holds: a VMA maps a prefix of its object,
which shrinks its mappers before its charge), and its oom_score_adj.
:class:`OomScan` reads every charge with one struct read and adds the rest
from tables made once and the objects' charges; ``kernel.oom_kill.select_bad_process_bounded``
then reads in full only the tasks whose bound could still win (one, when the
charges are what the mms count, as they are whenever nobody is half-way
through a fault).

A task that can never be chosen again (an OOM victim, or one found gone, at
-1000 or with MMF_OOM_SKIP: none of these is ever undone) is *retired*: its
bound becomes ``NOT_A_CANDIDATE`` for the rest of the run.
"""

from __future__ import annotations

import operator
from typing import Callable

from ..kernel.oom_kill import NOT_A_CANDIDATE, OOM_SCORE_ADJ_MIN, TaskTable, TaskView


class OomScan(TaskTable):
    """``tasks``: the supervisor's task records, in order, with their mms made and their
    processes started (pids known); ``view(task)``: the supervisor's full read of one.
    Call :meth:`retire` for a task as it becomes an OOM victim."""

    def __init__(self, zone, tasks, view: Callable[[object], TaskView], swap: list[int] | None = None):
        self._zone = zone
        # per task, at least its mm's swap entries (MM_SWAPENTS, in oom_badness): kept by the
        # supervisor, which alone swaps out (a zap only lowers the real count)
        self._swap = swap
        self._tasks = tasks
        self._read = view
        self.memcgs = [t.mm.memcg for t in tasks]
        self.mm_ids = [t.users[0].pid if len(t.users) > 1 else 0 for t in tasks]
        self._adj = [t.mm.oom_score_adj for t in tasks]
        # whose counter in the zone holds the charge of each task's mm (a sharer's: the owner's)
        self._mm_index = [t.mm_index for t in tasks]
        self._shared = any(i != k for k, i in enumerate(self._mm_index))
        # the tasks whose mm maps page-cache or shmem objects (in their rss, not charged to them),
        # grouped by what they map: ((object, pages the VMA can map), ...) -> their indexes
        groups: dict[tuple[tuple[int, int], ...], list[int]] = {}
        for i, t in enumerate(tasks):
            if maps := tuple((v.object, v.capacity) for v in t.mm.vmas() if v.object >= 0):
                groups.setdefault(maps, []).append(i)
        self._mapping = list(groups.items())
        self._retired = [adj == OOM_SCORE_ADJ_MIN for adj in self._adj]
        # (members, totalpages // 1000) -> what each task adds to its charge (NOT_A_CANDIDATE: retired
        # or out of the domain); kept up to date by retire()
        self._static: dict[tuple[frozenset[int] | None, int], list[int]] = {}

    def retire(self, i: int) -> None:
        """Task ``i`` can never be chosen again."""
        if not self._retired[i]:
            self._retired[i] = True
            for static in self._static.values():
                static[i] = NOT_A_CANDIDATE

    def view(self, i: int) -> TaskView:
        """Task ``i`` read in full; retired if what it shows is for good."""
        v = self._read(self._tasks[i])
        if v.oom_victim or not v.has_mm or v.mmf_oom_skip or v.oom_score_adj == OOM_SCORE_ADJ_MIN:
            self.retire(i)
        return v

    def badness_bounds(self, members: frozenset[int] | None, totalpages: int) -> list[int]:
        """TaskTable.badness_bounds: the zone's charge of each task's mm (one read of the
        whole table), plus what its mm can map of objects, plus its oom_score_adj's share.
        Call it from the supervisor's main thread, which alone shrinks objects."""
        key = (members, totalpages // 1000)
        static = self._static.get(key)
        if static is None:
            static = self._static[key] = [
                NOT_A_CANDIDATE if retired or (members is not None and memcg not in members) else adj * key[1]
                for retired, memcg, adj in zip(self._retired, self.memcgs, self._adj)]
        charges = self._zone.task_charges()
        if self._shared:
            charges = [charges[k] for k in self._mm_index]
        bounds = list(map(operator.add, charges, static))
        if self._swap is not None and any(self._swap):
            bounds = list(map(operator.add, bounds, [self._swap[k] for k in self._mm_index]))
        if self._mapping:
            mapped = [0] * len(bounds)
            for maps, group in self._mapping:
                pages = sum(min(cap, self._zone.object_charged(k)) for k, cap in maps)
                for i in group:
                    mapped[i] = pages
            bounds = list(map(operator.add, bounds, mapped))
        return bounds
