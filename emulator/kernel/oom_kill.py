"""Victim selection, as mm/oom_kill.c (v4.17) does it. Pure: no processes here.

The supervisor snapshots every task into a :class:`TaskView` (read straight
from the mm headers in shared memory) and asks :func:`select_bad_process`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

OOM_SCORE_ADJ_MIN = -1000
OOM_SCORE_ADJ_MAX = 1000


@dataclass(frozen=True)
class TaskView:
    """What ``oom_evaluate_task`` looks at, for one task."""
    pid: int
    name: str
    oom_score_adj: int
    rss_pages: int            # get_mm_rss(): file + anon + shmem
    pgtables_pages: int       # mm_pgtables_bytes() / PAGE_SIZE
    swapents: int = 0
    has_mm: bool = True       # False once the task has exited (find_lock_task_mm fails)
    oom_victim: bool = False  # tsk_is_oom_victim()
    mmf_oom_skip: bool = False
    memcg: int = 0            # the memory cgroup it is charged to (0: root)


@dataclass
class OomControl:
    """struct oom_control: the allocation that failed and what was chosen."""
    totalpages: int
    requester: str = ""
    memcg: int | None = None  # is_memcg_oom(): only this memcg's tasks are candidates
    order: int = 0
    chosen: TaskView | None = None
    chosen_points: int = 0
    aborted_by: TaskView | None = None


def oom_badness(task: TaskView, totalpages: int) -> int:
    """Heuristic that decides whom to kill; 0 means never.

    rss + swap entries + page-table pages, plus ``oom_score_adj`` in units of
    totalpages/1000. Never 0 for an eligible task (the kernel returns 1).
    """
    if not task.has_mm:
        return 0
    if task.oom_score_adj == OOM_SCORE_ADJ_MIN or task.mmf_oom_skip:
        return 0
    points = task.rss_pages + task.swapents + task.pgtables_pages
    adj = task.oom_score_adj * (totalpages // 1000)
    points += adj
    return points if points > 0 else 1


class Selection(Enum):
    CHOSEN = "chosen"
    ABORT = "abort"     # an existing victim still has its memory: wait for it
    NONE = "none"       # nobody is eligible: panic (global) or hang (memcg)


def oom_evaluate_task(task: TaskView, oc: OomControl) -> bool:
    """Returns False to abort the scan (v4.17 semantics)."""
    if task.oom_victim:
        if task.mmf_oom_skip or not task.has_mm:
            return True                       # goto next
        oc.aborted_by = task
        oc.chosen = None
        return False                          # goto abort
    points = oom_badness(task, oc.totalpages)
    if points == 0 or points < oc.chosen_points:
        return True
    oc.chosen, oc.chosen_points = task, points
    return True


def select_bad_process(tasks, oc: OomControl) -> Selection:
    """Scan every task; O(number of tasks), as the kernel's for_each_process."""
    oc.chosen, oc.chosen_points, oc.aborted_by = None, 0, None
    for task in tasks:
        if not oom_evaluate_task(task, oc):
            return Selection.ABORT
    return Selection.CHOSEN if oc.chosen is not None else Selection.NONE
