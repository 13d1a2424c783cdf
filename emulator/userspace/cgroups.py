"""Kill candidates for the cgroup-minded daemons (oomd, systemd-oomd), from a Snapshot.

Both kill whole cgroups, chosen among the leaf cgroups under the one they
watch. A run's memcg tree is small, and its tasks often sit in the root
memcg; there each task counts as a cgroup of its own, as if each ran in its
own scope (``/COMM[PID]``), and so does a task of a memcg that has child
memcgs (cgroup v2 keeps tasks out of inner nodes, a run may not). The root
memcg ``/`` is the whole machine: it is watched, never a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import DEAD, Snapshot


@dataclass(frozen=True)
class Cgroup:
    """A kill candidate: a leaf memcg, or one task counted as a cgroup of its own."""
    path: str
    current_kb: int              # memory.current (a lone task: its VmRSS)
    swap_kb: int                 # memory.swap.current (at least its tasks' VmSwap)
    pids: tuple[int, ...]        # cgroup.procs: its tasks that are not reaped

    @property
    def relative(self) -> str:
        return self.path.lstrip("/")


def task_cgroup_path(memcg: str, comm: str, pid: int) -> str:
    return f"{memcg.rstrip('/')}/{comm}[{pid}]"


def candidates(snap: Snapshot) -> list[Cgroup]:
    """Every kill candidate, in path order. O(tasks + memcgs * log)."""
    paths = {m.path for m in snap.memcgs} | {"/"}
    inner = {"/"}
    for p in paths:
        if p != "/":
            inner.add(p.rsplit("/", 1)[0] or "/")
    by_memcg: dict[str, list] = {}
    for t in snap.tasks:
        if t.state != DEAD:
            by_memcg.setdefault(t.memcg, []).append(t)
    out = []
    for m in snap.memcgs:
        if m.path in inner:
            continue
        tasks = by_memcg.get(m.path, [])
        pids = tuple(sorted(set(m.pids) | {t.pid for t in tasks}))
        out.append(Cgroup(m.path, m.current_kb, max(m.swap_kb, sum(t.swap_kb for t in tasks)), pids))
    for memcg, tasks in by_memcg.items():
        if memcg in inner or memcg not in paths:
            for t in tasks:
                if not t.gone:
                    out.append(Cgroup(task_cgroup_path(memcg, t.comm, t.pid), t.rss_kb, t.swap_kb, (t.pid,)))
    out.sort(key=lambda c: c.path)
    return out
