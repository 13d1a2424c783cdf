"""The kernel's memory vocabulary: mm flags, VMA flags and kinds, rss counters, task states.

Pure names and rules, as include/linux/mm_types.h, include/linux/mm.h and
include/linux/sched.h spell them, so that the policies, the OOM killer and
the scenario loader can speak of an mm without touching one. How an mm is
laid out in shared memory is the runtime's business (``runtime/mm.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

PAGE_SIZE = 4096
PAGES_PER_MB = (1 << 20) // PAGE_SIZE

# Sizes of the model's tables. The runtime lays its segments out to hold
# exactly these (runtime/mm.py and runtime/zone.py check that they fit).
MAX_VMAS = 64               # VMAs per mm
MAX_MEMCGS = 32             # memory cgroups per run, the root memcg (index 0) included
MM_HEADER_PAGES = 1         # each mm keeps its header (flags, state, VMA table) in one page
TASK_COMM_LEN = 16          # a task's name, NUL included (include/linux/sched.h)

# mm->flags bits (include/linux/sched/coredump.h)
MMF_OOM_SKIP = 21
MMF_UNSTABLE = 22
MMF_OOM_VICTIM = 25
# Not a mainline bit: the "rework mmap-exit vs. oom_reaper handover" RFC's
# state "exit_mmap has the VMAs and is guaranteed to finish" (see policies/handover.py).
MMF_OOM_HANDOVER = 28
MMF_BITS = 32               # bits an mm's flags word holds

# vm_flags (include/linux/mm.h)
VM_SHARED = 0x00000008
VM_PFNMAP = 0x00000400
VM_LOCKED = 0x00002000
VM_IO = 0x00004000
VM_HUGETLB = 0x00400000

# rss counters (include/linux/mm_types_task.h), plus memory that the kernel
# does not count in rss but that occupies the zone all the same
MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES, NR_MM_COUNTERS = range(5)


class TaskState(IntEnum):
    """A task's state as ``oomemu ps`` shows it; the value is what an mm's header stores."""
    TASK_NEW = 0                 # kernel: not yet run (here: faulting in its first VMAs)
    TASK_RUNNING = 1             # kernel: running or runnable
    TASK_UNINTERRUPTIBLE = 2     # kernel: D state; a pending SIGKILL waits until it ends
    EXITING = 3                  # ours: in do_exit (the kernel marks it PF_EXITING, a flag)
    TASK_DEAD = 4                # kernel: do_exit is done, the mm is gone (EXIT_ZOMBIE next)
    ALLOC_STALL = 5              # ours: in the allocator's slow path, waiting on the OOM killer

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {TaskState.TASK_NEW: "new", TaskState.TASK_RUNNING: "running", TaskState.TASK_UNINTERRUPTIBLE: "D",
           TaskState.EXITING: "exiting", TaskState.TASK_DEAD: "exited", TaskState.ALLOC_STALL: "alloc-stall"}

#: how an mm's mmu notifiers behave when the reaper invalidates them
MMU_NOTIFIERS = {"none": 0, "nonblocking": 1, "blockable": 2}

VMA_KINDS = ("anon", "file_private", "file_shared", "hugetlb", "pfnmap", "shmem")
#: kinds whose pages belong to a file's pages, not to the mm: page cache (``file_*``) or
#: shmem (tmpfs, /dev/shm, memfd, SysV shm). The mm only maps them; they outlive it.
PAGE_CACHE_KINDS = ("file_private", "file_shared")
OBJECT_KINDS = PAGE_CACHE_KINDS + ("shmem",)
_KIND_FLAGS = {
    "anon": 0,
    "file_private": 0,
    "file_shared": VM_SHARED,
    "hugetlb": VM_HUGETLB | VM_SHARED,
    "pfnmap": VM_PFNMAP | VM_IO | VM_SHARED,
    "shmem": VM_SHARED,
}
#: the rss counter a VMA kind's pages count in (None: not in the kernel's rss)
KIND_COUNTER = {"anon": MM_ANONPAGES, "file_private": MM_FILEPAGES,
                "file_shared": MM_FILEPAGES, "hugetlb": None, "pfnmap": None,
                "shmem": MM_SHMEMPAGES}


def vm_flags_for(kind: str, mlocked: bool) -> int:
    return _KIND_FLAGS[kind] | (VM_LOCKED if mlocked else 0)


def can_reap_vma(kind: str, vm_flags: int, unreapable_flags: int) -> bool:
    """__oom_reap_task_mm's rule: skip VMAs with ``unreapable_flags`` (VM_LOCKED,
    VM_HUGETLB, VM_PFNMAP in v4.17), unmap only anonymous or private ones."""
    if vm_flags & unreapable_flags:
        return False
    return kind == "anon" or not (vm_flags & VM_SHARED)


@dataclass(frozen=True)
class Vma:
    index: int
    kind: str
    vm_flags: int
    start: int        # first page, counted from the end of the header
    capacity: int     # pages reserved (the segment is sparse)
    nr_pages: int     # pages resident now (mapped, for a VMA over an object)
    object: int = -1  # the page-cache or shmem object it maps (-1: its pages are the mm's own)
    swapped: int = 0  # of its pages, on swap (anon): swap entries, MM_SWAPENTS

    @property
    def mlocked(self) -> bool:
        return bool(self.vm_flags & VM_LOCKED)


@dataclass(frozen=True)
class MmLayout:
    """What the supervisor decides before the worker starts: VMA kinds and room."""
    vmas: tuple[tuple[str, int, int], ...]   # (kind, vm_flags, capacity pages)
    pgtables: int = 0                        # pages of page tables (mm_pgtables_bytes)
    objects: tuple[int, ...] = ()            # per VMA, the object it maps (-1: none); () all none

    @property
    def pages(self) -> int:
        """Pages of the mm's segment, its header included (a VMA over an object
        reserves no room: its pages are the object's)."""
        objs = self.objects or (-1,) * len(self.vmas)
        return MM_HEADER_PAGES + self.pgtables + sum(cap for (_, _, cap), o in zip(self.vmas, objs) if o < 0)
