"""The OOM killer's decisions, as mm/oom_kill.c (v4.17) makes them. Pure: no processes here.

The supervisor snapshots tasks into :class:`TaskView` records (read straight
from the mm headers in shared memory) and asks :func:`out_of_memory`, which
scans them with :func:`select_bad_process` and returns an
:class:`OomDecision` (kill this task, abort, panic, or nothing, and the
lines to print); the supervisor carries it out.

A scan visits every task, as the kernel's ``for_each_process`` does. With a
thousand tasks, reading each in full would cost more than the rest of an OOM
kill together, so a runtime may hand :func:`out_of_memory` a
:class:`TaskTable` instead of views: an upper bound of every task's badness,
read at once, and the full view of a task on demand.
:func:`select_bad_process_bounded` then reads in full only the tasks whose
bound could still win, and chooses as :func:`select_bad_process` would.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterable, Sequence

from .memcontrol import MemcgTree, mem_cgroup_get_oom_group
from .mm_types import PAGE_SIZE

OOM_SCORE_ADJ_MIN = -1000
OOM_SCORE_ADJ_MAX = 1000
PAGE_KB = PAGE_SIZE // 1024


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
    mm_id: int = 0            # tasks with the same non-zero mm_id share one mm (CLONE_VM); 0: its own
    exiting: bool = False     # SIGKILL sent or in do_exit (__task_will_free_mem: SIGNAL_GROUP_EXIT)


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


def process_shares_mm(p: TaskView, victim: TaskView) -> bool:
    """Another process (not ``victim`` itself) using ``victim``'s mm."""
    return bool(victim.mm_id) and p.mm_id == victim.mm_id and p.pid != victim.pid


def task_will_free_mem(task: TaskView, tasks: Iterable[TaskView]) -> bool:
    """mm/oom_kill.c task_will_free_mem(): ``task`` is exiting (or killed) and its mm will be
    freed with it: MMF_OOM_SKIP is not set and every other live process sharing its mm is
    exiting too (one that is not keeps the mm, and the OOM killer must choose)."""
    if not (task.exiting or task.oom_victim) or task.mmf_oom_skip:
        return False
    return all(p.exiting or p.oom_victim for p in tasks if p.has_mm and process_shares_mm(p, task))


def mm_sharers(victim: TaskView, tasks: Iterable[TaskView]) -> tuple[TaskView, ...]:
    """__oom_kill_process's last loop: every other process sharing the victim's mm gets
    SIGKILL too, "to make sure [the mm] will be freed" (no "Killed process" line, no
    mark_oom_victim: the mm is the victim's). No init or kthread shares an mm here, so the
    "oom killer %d (%s) has mm pinned by %d (%s)" case does not arise."""
    return tuple(p for p in tasks if p.has_mm and process_shares_mm(p, victim))


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


#: A badness bound that marks a task which cannot be chosen (see TaskTable.badness_bounds).
#: Any bound below half of it is such a mark, so a runtime may add page counts to it.
NOT_A_CANDIDATE = -(1 << 62)


class TaskTable:
    """Every task in for_each_process order, for a scan that reads in full only the tasks
    that can win (:func:`select_bad_process_bounded`). A runtime implements it
    (emulator.runtime.oom_scan); :func:`out_of_memory` takes it in place of views."""

    #: each task's memcg and mm_id (as its TaskView has them), fixed for the table's life
    memcgs: Sequence[int] = ()
    mm_ids: Sequence[int] = ()

    def __len__(self) -> int:
        return len(self.memcgs)

    def view(self, i: int) -> TaskView:
        """Task ``i`` read in full, now."""
        raise NotImplementedError

    def badness_bounds(self, members: frozenset[int] | None, totalpages: int) -> Sequence[int]:
        """For every task, a number no lower than its points before oom_badness's floor of 1
        (rss + swapents + page tables + oom_score_adj * (totalpages // 1000)) whenever it is
        read; below NOT_A_CANDIDATE // 2 for a task that cannot be chosen (out of
        ``members``, the memcgs of the OOM domain, None: all; or -1000, gone, an OOM victim)."""
        raise NotImplementedError


def select_bad_process_bounded(bounds: Sequence[int], view: Callable[[int], TaskView],
                               oc: OomControl) -> Selection:
    """select_bad_process over ``view(i)`` for every task ``i``, reading only the tasks that
    can win, highest bound first: the same choice (the highest oom_badness, the later task on
    a tie). ``bounds`` as :meth:`TaskTable.badness_bounds` gives them. Linear in the number
    of tasks (a max and an index), plus one view when the top bound is exact, as it is
    when every task's memory is counted. Call it once no OOM victim in the domain holds its
    memory (out_of_memory's fast path); one that does still aborts the scan."""
    oc.chosen, oc.chosen_points, oc.aborted_by = None, 0, None
    top = max(bounds, default=NOT_A_CANDIDATE)
    if top < NOT_A_CANDIDATE // 2:
        return Selection.NONE
    read = {}
    if top > 1:                         # (at 1, a task whose bound is lower scores 1 too: a tie)
        i = len(bounds) - 1 - bounds[::-1].index(top)      # the later task wins a tie
        task = read[i] = view(i)
        if not oom_evaluate_task(task, oc):
            return Selection.ABORT
        if oc.chosen_points == top:
            return Selection.CHOSEN                         # nobody else's bound reaches it
    # A bound was loose (the task was not what it seemed, or every candidate scores 1):
    # read every task that may still win, highest (bound, position) first.
    oc.chosen, oc.chosen_points = None, 0
    best = (0, -1)
    for bound, i in sorted(((max(b, 1), i) for i, b in enumerate(bounds) if b >= NOT_A_CANDIDATE // 2),
                           reverse=True):
        if (bound, i) < best:
            break                                           # it cannot beat the best read
        task = read[i] if i in read else view(i)
        if task.oom_victim:
            if task.has_mm and not task.mmf_oom_skip:
                oc.chosen, oc.chosen_points, oc.aborted_by = None, 0, task
                return Selection.ABORT
            continue
        points = oom_badness(task, oc.totalpages)
        if points and (points, i) > best:
            best = (points, i)
            oc.chosen, oc.chosen_points = task, points
    return Selection.CHOSEN if oc.chosen is not None else Selection.NONE


# -- out_of_memory: the decision, and the lines it prints ------------------------------

GFP = "gfp_mask=0x14280ca(GFP_HIGHUSER_MOVABLE|__GFP_ZERO), order=0"
GLOBAL, MEMCG = "global", "memcg"          # why a charge failed: the zone, or a memcg's limit
NO_KILLABLE = "Out of memory and no killable processes..."


@dataclass(frozen=True)
class MemcgState:
    """A memory cgroup at its limit (mem_over_limit): what a memcg OOM scores against and
    prints. ``usage_pages`` is hierarchical; ``members`` are the memcgs of its subtree
    (itself and its descendants): only their tasks are candidates."""
    index: int
    path: str                           # "/a/b", as the kernel prints a cgroup
    limit_pages: int
    usage_pages: int
    members: frozenset[int] = frozenset()

    def __post_init__(self):
        if not self.members:
            object.__setattr__(self, "members", frozenset({self.index}))


class OomAction(Enum):
    NOTHING = "nothing"     # no OOM after all: the requester is on its way out, or the
                            # last-second allocation attempt would succeed
    ABORT = "abort"         # a victim in the OOM domain still holds its memory: wait for it
    NO_VICTIM = "no_victim"  # a memcg OOM with nobody to kill: the charge keeps failing
    KILL = "kill"           # oom_kill_process(victim)
    PANIC = "panic"         # a global OOM and nobody to kill: the machine stops


@dataclass(frozen=True)
class OomDecision:
    """What out_of_memory() decided; the runtime carries it out. ``lines`` are printed
    first, in order (for KILL: before the kill; its "Killed process" line comes after,
    from :func:`killed_process_line`)."""
    action: OomAction
    lines: tuple[str, ...] = ()
    victim: TaskView | None = None      # KILL: whom
    points: int = 0                     # KILL: its oom_badness
    aborted_by: TaskView | None = None  # ABORT: the victim that still holds memory
    memcg: int | None = None            # the memcg the OOM is constrained to (None: global)
    oom_group: int | None = None        # KILL: the memcg killed whole with the victim (memory.oom.group)
    group_lines: tuple[str, ...] = ()   # KILL: printed after the victim's "Killed process" line
    group: tuple[TaskView, ...] = ()    # KILL: the oom_group's other members to kill, in order
    sharers: tuple[TaskView, ...] = ()  # KILL: other processes sharing the victim's mm, killed with it


def out_of_memory(requester: TaskView, requester_exiting: bool, where: str, would_succeed: bool,
                  victims: Iterable[TaskView], tasks: Iterable[TaskView] | TaskTable, total_pages: int,
                  memcg: MemcgState | None = None, tree: MemcgTree | None = None) -> OomDecision:
    """mm/oom_kill.c out_of_memory() for a failed allocation of ``requester``. Has to be
    called with oom_lock held (the caller's), so that the views stay true while it decides.
    ``requester_exiting``: task_will_free_mem(current) (see :func:`task_will_free_mem`).

    ``where`` is GLOBAL (the zone is short) or MEMCG (the requester's memcg, ``memcg``,
    is at its limit: only the tasks of its subtree are candidates). ``tree``: the run's
    memcgs, for their paths and memory.oom.group (None: only the root). ``would_succeed``: the
    last-second allocation attempt would succeed now. ``victims`` are the views of the
    OOM victims so far (those that may still hold their memory will do), ``tasks`` of every
    task: ``tasks`` is iterated only if a scan is needed, so a lazy iterable keeps the common
    case (an abort) free of a full scan. A :class:`TaskTable` in place of ``tasks`` makes the
    scan :func:`select_bad_process_bounded`, which decides the same."""
    if requester_exiting or requester.oom_victim:
        return OomDecision(OomAction.NOTHING)          # task_will_free_mem(current)
    if would_succeed:
        return OomDecision(OomAction.NOTHING)
    domain = memcg.index if where == MEMCG and memcg is not None else None
    in_domain = (lambda t: True) if domain is None else (lambda t: t.memcg in memcg.members)
    # Fast path, same answer as the full scan: a victim in the OOM domain still
    # holding its memory (no MMF_OOM_SKIP) aborts select_bad_process.
    for v in victims:
        if in_domain(v) and v.has_mm and not v.mmf_oom_skip:
            return OomDecision(OomAction.ABORT, aborted_by=v, memcg=domain)
    totalpages = total_pages if domain is None else memcg.limit_pages
    oc = OomControl(totalpages=totalpages, requester=requester.name, memcg=domain)
    if isinstance(tasks, TaskTable):
        bounds = tasks.badness_bounds(None if domain is None else memcg.members, totalpages)
        selection = select_bad_process_bounded(bounds, tasks.view, oc)
    else:
        tasks = list(tasks)
        selection = select_bad_process((t for t in tasks if in_domain(t)), oc)
    if selection is Selection.ABORT:
        return OomDecision(OomAction.ABORT, aborted_by=oc.aborted_by, memcg=domain)
    invoked = "%s invoked oom-killer: %s, oom_score_adj=%d" % (requester.name, GFP, requester.oom_score_adj)
    if selection is Selection.NONE:
        if domain is not None:
            return OomDecision(OomAction.NO_VICTIM, memcg=domain)    # a memcg OOM does not panic
        return OomDecision(OomAction.PANIC, (invoked, NO_KILLABLE, "Kernel panic - not syncing: " + NO_KILLABLE))
    lines = [invoked]
    victim = oc.chosen
    if domain is not None:                             # mem_cgroup_print_oom_info(memcg, victim)
        task_path = tree.path(victim.memcg) if tree is not None else memcg.path
        lines += ["Task in %s killed as a result of limit of %s" % (task_path, memcg.path),
                  "memory: usage %dkB, limit %dkB" % (memcg.usage_pages * PAGE_KB, memcg.limit_pages * PAGE_KB)]
    reason = "Out of memory" if domain is None else "Memory cgroup out of memory"
    lines.append("%s: Kill process %d (%s) score %d or sacrifice child"
                 % (reason, victim.pid, victim.name, oc.chosen_points * 1000 // oc.totalpages))
    group = mem_cgroup_get_oom_group(tree, victim.memcg, domain) if tree is not None else None
    if isinstance(tasks, TaskTable):
        tasks = _kill_views(tasks, victim, frozenset(tree.subtree(group)) if group is not None else frozenset())
    if group is None:
        return OomDecision(OomAction.KILL, tuple(lines), victim, oc.chosen_points, memcg=domain,
                           sharers=mm_sharers(victim, tasks))
    return OomDecision(OomAction.KILL, tuple(lines), victim, oc.chosen_points, memcg=domain, oom_group=group,
                       sharers=mm_sharers(victim, tasks),
                       group_lines=(oom_group_line(tree.path(group)),),
                       group=oom_group_members(tree, group, victim, [t for t in tasks if in_domain(t)]))


def _kill_views(table: TaskTable, victim: TaskView, group_memcgs: frozenset[int]) -> list[TaskView]:
    """The tasks of ``table`` a kill of ``victim`` concerns, read in full, in order: those
    sharing its mm, and those in ``group_memcgs`` (its oom_group's subtree)."""
    if not victim.mm_id and not group_memcgs:
        return []
    return [table.view(j) for j, (m, mm_id) in enumerate(zip(table.memcgs, table.mm_ids))
            if m in group_memcgs or (victim.mm_id and mm_id == victim.mm_id)]


def oom_group_line(path: str) -> str:
    """mem_cgroup_print_oom_group()."""
    return "Tasks in %s are going to be killed due to memory.oom.group set" % path


def oom_group_members(tree: MemcgTree, group: int, victim: TaskView, tasks: Iterable[TaskView]) -> tuple[TaskView, ...]:
    """mem_cgroup_scan_tasks(group, oom_kill_memcg_member): every task of ``group``'s subtree,
    memcg by memcg in mem_cgroup_iter()'s pre-order, that oom_kill_memcg_member kills: not
    oom_score_adj -1000, not the victim or an earlier victim (already killed), and with an
    mm left (__oom_kill_process's find_lock_task_mm)."""
    by_memcg: dict[int, list[TaskView]] = {}
    for t in tasks:
        by_memcg.setdefault(t.memcg, []).append(t)
    return tuple(t for m in tree.subtree(group) for t in by_memcg.get(m, ())
                 if t.oom_score_adj != OOM_SCORE_ADJ_MIN and t.pid != victim.pid and not t.oom_victim
                 and t.has_mm)


def killed_process_line(pid: int, name: str, rss_kb: dict[str, int]) -> str:
    """The line oom_kill_process prints once the victim is killed (its rss before the kill)."""
    return ("Killed process %d (%s) total-vm:%dkB, anon-rss:%dkB, file-rss:%dkB, shmem-rss:%dkB"
            % (pid, name, rss_kb["total_vm"], rss_kb["anon_rss"], rss_kb["file_rss"], rss_kb["shmem_rss"]))


def _c_div(a: int, b: int) -> int:
    """C's integer division: truncates toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def proc_oom_score(task: TaskView, totalpages: int) -> int:
    """/proc/PID/oom_score (fs/proc/base.c proc_oom_score, Linux 5.9+): oom_badness scaled
    into 0..2000, ``totalpages`` being RAM plus swap; 0 for a task the OOM killer never picks
    (oom_badness's LONG_MIN: no mm, OOM_SCORE_ADJ_MIN, MMF_OOM_SKIP)."""
    if not task.has_mm or task.oom_score_adj == OOM_SCORE_ADJ_MIN or task.mmf_oom_skip:
        return 0
    badness = task.rss_pages + task.swapents + task.pgtables_pages + task.oom_score_adj * (totalpages // 1000)
    return _c_div((1000 + _c_div(badness * 1000, max(totalpages, 1))) * 2, 3)
