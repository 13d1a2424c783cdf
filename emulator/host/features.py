"""What of a scenario can be made real on the running kernel, and what cannot (pure).

A host run maps each scenario feature onto a real action
(docs/kernel-crosscheck.md, "How each case was made real"): anon memory is
written page by page; ``mlocked`` is mlock(2); page tables come from a sparse
anonymous mapping read once per 2 MB (MADV_NOHUGEPAGE: with THP the huge zero
page allocates none); shmem is a file on tmpfs; page cache is a file on a
disk file system, prepared clean, read (or written, for ``dirty_mb``); a
``busy`` step is a read of a FUSE file whose reply waits (a real D state);
``shm_unlink`` and ``shm_truncate`` are unlink(2) and ftruncate(2).

What cannot be made real is refused before anything starts, in one line
naming it (:func:`refusals`). The zone itself becomes the limit of the run's
memory cgroup: a global OOM runs as a memcg OOM at ``memory_mb``, where there
is no panic; a scenario whose global OOM finds nobody to kill shows as hung
(the allocation waits), which is what :func:`comparable_verdict` maps a
policy's ``panic`` to.
"""

from __future__ import annotations

from ..kernel.verdict import Verdict
from ..scenario import EXIT_UNMAP_MS_PER_MB, FREE_PGTABLES_MS_PER_MB, Scenario

#: steps a host task can do for real
HOST_OPS = frozenset({"alloc", "sleep", "busy", "exit", "shm_unlink", "shm_truncate"})
#: why each other step cannot (yet) be made real
_OP_REFUSED = {
    "mmap_sem_down": "a hold of a task's own mmap_sem (another task's is made real: a read hold through "
                     "/proc/PID/mem over a FUSE page, a write through a thread of that task's calling mbind; "
                     "a task's own write hold for seconds cannot be made from user space)",
    "mmap_sem_up": "a release of a task's own mmap_sem (see mmap_sem_down)",
    "lock": "a named lock (an uninterruptible wait on another task: not done yet)",
    "unlock": "a named lock (see lock)",
    "mm_pin": "an mm pinned by another task (not done yet)",
}
#: a host task is a Python interpreter of its own: ~10 MB the kernel counts in its badness
#: and frees with it, which the scenario does not describe. A few beside tasks of tens of MB
#: change nothing; hundreds of small tasks (phone's 1 MB apps) would die for their
#: interpreters, not their scenario memory, and take minutes and gigabytes to start.
HOST_MAX_TASKS = 64
_KIND_REFUSED = {
    "hugetlb": "hugetlb memory (needs reserved huge pages)",
    "pfnmap": "a VM_PFNMAP mapping (needs a driver)",
}


def needs_fuse(scenario: Scenario) -> bool:
    """Does a host run of it need the FUSE file system (D states, mmap_sem read holds)?"""
    return any(s.op == "busy" or (s.op == "mmap_sem_down" and s.task) for t in scenario.tasks for s in t.steps)


def held_tasks(scenario: Scenario) -> set[str]:
    """Tasks whose mmap_sem another task holds for read: each maps a page of a FUSE file
    that the holder reads through /proc/PID/mem (the read holds it, until answered)."""
    return {s.task for t in scenario.tasks for s in t.steps if s.op == "mmap_sem_down" and s.task}


def written_tasks(scenario: Scenario) -> set[str]:
    """Tasks whose mmap_sem another task takes for write: only a thread of their own can
    (mbind on their own memory takes it for write, uninterruptibly), so each gets one that
    waits for the run's word to queue (the other task's step is that word)."""
    return {s.task for t in scenario.tasks for s in t.steps
            if s.op == "mmap_sem_down" and s.task and s.mode == "write"}


def _lets_go_at_once(steps, i: int) -> bool:
    """Is write step ``i`` followed at once by the release of the same mmap_sem?"""
    return i + 1 < len(steps) and steps[i + 1].op == "mmap_sem_up" and steps[i + 1].task == steps[i].task


def _host_can(step) -> bool:
    """A read hold of another task's mmap_sem (and its release) can be made real."""
    if step.op in HOST_OPS:
        return True
    return step.op in ("mmap_sem_down", "mmap_sem_up") and bool(step.task)


def refusals(scenario: Scenario, cgroup_v2: bool, kvm: bool = False) -> list[str]:
    """Every feature of ``scenario`` a host run cannot make real, one line each, naming
    the task and the feature (empty: it can run). ``cgroup_v2``: the machine's memory
    controller is cgroup v2 (memory.oom.group needs it); ``kvm``: /dev/kvm can be opened
    (a KVM guest's memory registers a non-blocking mmu notifier on the task's mm)."""
    out = []
    if len(scenario.tasks) > HOST_MAX_TASKS:
        out.append(f"{len(scenario.tasks)} tasks: at most {HOST_MAX_TASKS} (each is an interpreter of its own, "
                   f"~10 MB the kernel counts and frees with it, beside the scenario's memory)")
    for t in scenario.tasks:
        if t.mm:
            out.append(f"task {t.name}: mm = {t.mm!r}: processes sharing an mm (not done yet)")
        if t.mmu_notifier == "blockable":
            out.append(f"task {t.name}: a blockable mmu notifier (needs a driver whose non-blocking "
                       f"invalidation fails, as GPU userptr or RDMA ODP)")
        elif t.mmu_notifier == "nonblocking" and not kvm:
            out.append(f"task {t.name}: a non-blocking mmu notifier (a KVM guest over the memory, and this "
                       f"machine has no usable /dev/kvm)")
        elif t.mmu_notifier == "nonblocking" and not any(v.kind == "anon" for v in t.vmas):
            out.append(f"task {t.name}: a non-blocking mmu notifier over no anon VMA (the KVM guest's memory)")
        if t.exit_unmap_ms_per_mb != EXIT_UNMAP_MS_PER_MB \
                or abs(t.exit_free_pgtables_ms - round(FREE_PGTABLES_MS_PER_MB * t.pgtables_mb, 6)) > 1e-9:
            out.append(f"task {t.name}: exit timings (exit_unmap_ms_per_mb, exit_free_pgtables_ms): the "
                       f"kernel's exit takes what it takes")
        for v in t.vmas:
            if v.kind in _KIND_REFUSED:
                out.append(f"task {t.name}: {_KIND_REFUSED[v.kind]}")
        for i, s in enumerate(t.steps):
            if not _host_can(s):
                out.append(f"task {t.name}: step {s.op}: {_OP_REFUSED.get(s.op, 'not done yet')}")
            elif s.op == "mmap_sem_down" and s.mode == "write" and not _lets_go_at_once(t.steps, i):
                out.append(f"task {t.name}: step mmap_sem_down: a write hold of {s.task}'s mmap_sem (only a queued "
                           f"writer that lets go once it has it is made real: a thread of {s.task}'s calling mbind)")
    if not cgroup_v2:
        for m in scenario.memcgs:
            if m.oom_group:
                out.append(f"memcg {m.name}: oom_group (memory.oom.group is cgroup v2's; this machine "
                           f"has v1)")
    return list(dict.fromkeys(out))            # each line once, in order


def comparable_verdict(verdict: Verdict, global_oom: bool) -> Verdict:
    """A policy's verdict as a host run can show it: a global OOM runs inside the run's
    memcg, where finding nobody to kill makes the allocation wait instead of panicking."""
    if verdict == Verdict.PANIC and global_oom:
        return Verdict.HUNG
    return verdict
