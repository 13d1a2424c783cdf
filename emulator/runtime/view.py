"""A live run as a user-space OOM daemon sees the machine through /proc.

:class:`RunView` reads the run's zone and every task's mm header (shared
memory, current at each read) and makes a :class:`~emulator.userspace.base.Snapshot`:
``/proc/meminfo``, ``/proc/pressure/memory`` (as the supervisor's PSI last
published it: the kernel updates the averages every 2 s too), each process's
``/proc/PID/status``, ``oom_score`` and ``oom_score_adj``, and each memcg's
usage, limit and tasks. The render functions turn a snapshot into the text
of those files, in the kernel's formats; the door (``runtime/door.py``)
writes them into a directory that any program can read.

What is read is not locked: each figure is one aligned load, as /proc's are
one read of a counter; a snapshot is as consistent as /proc is.
"""

from __future__ import annotations

from ..kernel.mm_types import (MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MMF_OOM_SKIP, MMF_OOM_VICTIM, PAGE_SIZE,
                               TaskState)
from ..kernel.oom_kill import TaskView, proc_oom_score
from ..kernel.psi import FIXED_1, FSHIFT
from ..userspace.base import (DEAD, DISK_SLEEP, RUNNING, ZOMBIE, MemcgInfo, MemInfo, MemoryPressure, Pressure,
                              Snapshot, TaskInfo)
from .mm import Mm
from .zone import OBJ_FILE, OBJ_SHMEM, Zone

KB = PAGE_SIZE // 1024
_STATE = {TaskState.TASK_NEW: RUNNING, TaskState.TASK_RUNNING: RUNNING, TaskState.ALLOC_STALL: RUNNING,
          TaskState.TASK_UNINTERRUPTIBLE: DISK_SLEEP, TaskState.EXITING: RUNNING, TaskState.TASK_DEAD: ZOMBIE}


def _percent(fixed: int) -> float:
    """A PSI average in the kernel's fixed point, as psi_show prints it (two decimals)."""
    return (fixed >> FSHIFT) + ((fixed & (FIXED_1 - 1)) * 100 >> FSHIFT) / 100


def pressure_of(figures: tuple[int, ...]) -> MemoryPressure:
    """The zone's PSI figures (zone.PSI_FIELDS' order) as a MemoryPressure."""
    s10, s60, s300, stotal, f10, f60, f300, ftotal = figures
    return MemoryPressure(Pressure(_percent(s10), _percent(s60), _percent(s300), stotal),
                          Pressure(_percent(f10), _percent(f60), _percent(f300), ftotal))


class RunView:
    """A run's zone and its tasks' segments (``tasks``: per task, in task order, its own
    segment and the mm it uses: the same one, or the owner's if it shares an mm), read
    as /proc would show the machine. Opens nothing; closes nothing."""

    def __init__(self, zone: Zone, tasks: list[tuple[Mm, Mm]]):
        self.zone = zone
        self.tasks = tasks

    def meminfo(self) -> MemInfo:
        zone = self.zone
        file = shmem = dirty = 0
        for k in range(zone.nr_objects):
            kind, charged = zone.object_field(k, "kind"), zone.object_charged(k)
            if kind == OBJ_FILE:
                file += charged
                dirty += zone.object_field(k, "dirty")
            elif kind == OBJ_SHMEM:
                shmem += charged
        pgtables = sum(mm.pgtables_pages for own, mm in self.tasks if own is mm)
        anon = zone.tasks_charged() - pgtables
        free = zone.free_pages()
        swap_total, swap_used = zone.swap()
        return MemInfo(MemTotal=zone.total_pages * KB, MemFree=free * KB,
                       MemAvailable=(free + file) * KB, Cached=(file + shmem) * KB, Dirty=dirty * KB,
                       Shmem=shmem * KB, AnonPages=anon * KB, PageTables=pgtables * KB,
                       SwapTotal=swap_total * KB, SwapFree=(swap_total - swap_used) * KB)

    def pressure(self) -> MemoryPressure:
        return pressure_of(self.zone.psi()[0])

    def task_info(self, own: Mm, mm: Mm, totalpages: int) -> TaskInfo:
        state = own.state
        gone = state == TaskState.TASK_DEAD
        c = mm.counters()
        swap = mm.swapents()
        view = TaskView(own.pid, own.comm, mm.oom_score_adj, c[MM_FILEPAGES] + c[MM_ANONPAGES] + c[MM_SHMEMPAGES],
                        mm.pgtables_pages, swapents=swap, has_mm=not gone,
                        oom_victim=mm.test_bit(MMF_OOM_VICTIM), mmf_oom_skip=mm.test_bit(MMF_OOM_SKIP))
        try:
            letter = _STATE[TaskState(state)]
        except ValueError:
            letter = DEAD
        return TaskInfo(pid=own.pid, comm=own.comm, state=letter,
                        oom_score=proc_oom_score(view, totalpages), oom_score_adj=mm.oom_score_adj,
                        rss_kb=view.rss_pages * KB, anon_kb=c[MM_ANONPAGES] * KB, file_kb=c[MM_FILEPAGES] * KB,
                        shmem_kb=c[MM_SHMEMPAGES] * KB, swap_kb=swap * KB,
                        memcg=self.zone.memcg_tree.path(mm.memcg),
                        killed=bool(own.killed_at) or state in (TaskState.EXITING, TaskState.TASK_DEAD))

    def snapshot(self, now: float) -> Snapshot:
        """Everything a daemon reads, at emulated time ``now``."""
        zone = self.zone
        totalpages = zone.total_pages + zone.swap()[0]
        tasks = tuple(self.task_info(own, mm, totalpages) for own, mm in self.tasks if own.pid)
        pressure = self.pressure()
        tree = zone.memcg_tree
        usages = zone.memcg_usages()
        memcgs = []
        for m in range(len(tree)):
            limit, path = zone.memcg(m)[0], tree.path(m)
            below = [t for t in tasks if t.state != DEAD and (t.memcg == path or t.memcg.startswith(path.rstrip("/") + "/"))]
            memcgs.append(MemcgInfo(path, usages[m] * KB, None if limit < 0 else limit * KB,
                                    swap_kb=sum(t.swap_kb for t in below),
                                    pressure=pressure if m == 0 else MemoryPressure(),
                                    pids=tuple(t.pid for t in below if t.memcg == path)))
        return Snapshot(now, self.meminfo(), pressure, tasks, tuple(memcgs))


# -- the files, in the kernel's formats ---------------------------------------------

def render_meminfo(m: MemInfo) -> str:
    """/proc/meminfo's lines (those the model knows), as meminfo_proc_show prints them."""
    rows = (("MemTotal", m.MemTotal), ("MemFree", m.MemFree), ("MemAvailable", m.MemAvailable),
            ("Cached", m.Cached), ("SwapCached", 0), ("SwapTotal", m.SwapTotal), ("SwapFree", m.SwapFree),
            ("Dirty", m.Dirty), ("AnonPages", m.AnonPages), ("Shmem", m.Shmem), ("PageTables", m.PageTables))
    return "".join("%-16s%8d kB\n" % (name + ":", kb) for name, kb in rows)


def render_pressure(p: MemoryPressure) -> str:
    """/proc/pressure/memory, as psi_show prints it."""
    return "".join("%s avg10=%.2f avg60=%.2f avg300=%.2f total=%d\n" % (what, x.avg10, x.avg60, x.avg300, x.total)
                   for what, x in (("some", p.some), ("full", p.full)))


def render_status(t: TaskInfo) -> str:
    """/proc/PID/status: the lines a daemon reads."""
    state = {RUNNING: "R (running)", DISK_SLEEP: "D (disk sleep)", ZOMBIE: "Z (zombie)",
             DEAD: "X (dead)"}.get(t.state, t.state)
    return ("Name:\t%s\nState:\t%s\nPid:\t%d\nVmRSS:\t%8d kB\nRssAnon:\t%8d kB\nRssFile:\t%8d kB\n"
            "RssShmem:\t%8d kB\nVmSwap:\t%8d kB\nThreads:\t1\n"
            % (t.comm, state, t.pid, t.rss_kb, t.anon_kb, t.file_kb, t.shmem_kb, t.swap_kb))


def render_tasks(tasks) -> str:
    """The door's one-file table of every process (a header line, then one per task)."""
    lines = ["PID\tSTATE\tOOM_SCORE\tOOM_SCORE_ADJ\tRSS_KB\tSWAP_KB\tMEMCG\tNAME"]
    lines += ["%d\t%s\t%d\t%d\t%d\t%d\t%s\t%s" % (t.pid, t.state, t.oom_score, t.oom_score_adj, t.rss_kb,
                                                 t.swap_kb, t.memcg, t.comm) for t in tasks]
    return "\n".join(lines) + "\n"
