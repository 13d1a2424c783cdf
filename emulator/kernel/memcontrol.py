"""Memory cgroup trees, as mm/memcontrol.c and mm/page_counter.c rule them. Pure.

A run's memcgs are a table indexed from 0, the root memcg; every other
memcg names its parent by index, and a parent always comes before its
children (the scenario loader orders them so), so that the table has no
cycle and a walk up always ends at the root. A memcg's usage is
hierarchical: the pages charged to its own tasks plus its descendants'.
A charge walks from the task's memcg up to the root and fails at the first
level over its limit (``page_counter_try_charge``'s ``mem_over_limit``):
the OOM is then constrained to that memcg's subtree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

ROOT_MEMCG = 0
NO_LIMIT = -1          # the root memcg's limit (and a memcg's without limit_mb)


@dataclass(frozen=True)
class MemcgTree:
    """The run's memcgs: ``names[i]``, ``parents[i]`` (-1 for the root), ``oom_group[i]``
    (cgroup v2's memory.oom.group). Invariant: ``parents[i] < i`` for every i > 0."""
    names: tuple[str, ...] = ("",)
    parents: tuple[int, ...] = (-1,)
    oom_group: tuple[bool, ...] = (False,)

    def __post_init__(self):
        assert len(self.names) == len(self.parents) == len(self.oom_group) >= 1
        assert self.parents[0] == -1 and all(0 <= p < i for i, p in enumerate(self.parents) if i)

    def __len__(self) -> int:
        return len(self.names)

    def ancestors(self, memcg: int) -> list[int]:
        """``memcg``, its parent, ... up to the root memcg, in that order
        (the walk of page_counter_try_charge and mem_cgroup_get_oom_group)."""
        chain = [memcg]
        while chain[-1] != ROOT_MEMCG:
            chain.append(self.parents[chain[-1]])
        return chain

    def is_descendant(self, memcg: int, root: int) -> bool:
        """mem_cgroup_is_descendant(): is ``memcg`` ``root`` or below it?"""
        return root in self.ancestors(memcg)

    def subtree(self, root: int) -> list[int]:
        """``root`` and its descendants, in mem_cgroup_iter()'s pre-order (children in
        table order)."""
        out = [root]
        for child in (i for i in range(1, len(self)) if self.parents[i] == root):
            out += self.subtree(child)
        return out

    def path(self, memcg: int) -> str:
        """The cgroup path the kernel prints (pr_cont_cgroup_path): "/" for the root, "/a/b"."""
        if memcg == ROOT_MEMCG:
            return "/"
        return "".join("/" + self.names[i] for i in reversed(self.ancestors(memcg)[:-1]))

    def usage(self, own: Sequence[int]) -> list[int]:
        """Hierarchical usage of every memcg, from ``own[i]``: the pages charged to memcg
        i's own tasks (children come after parents, so one backward pass sums them)."""
        total = list(own)
        for i in range(len(self) - 1, 0, -1):
            total[self.parents[i]] += total[i]
        return total


def page_counter_try_charge(tree: MemcgTree, usage: Sequence[int], limits: Sequence[int], memcg: int,
                            pages: int) -> int | None:
    """Would charging ``pages`` to ``memcg`` fit every level up to the root? None if so,
    else the first memcg on the way up that would go over its limit (mem_over_limit).
    ``usage`` is hierarchical (MemcgTree.usage); a limit of NO_LIMIT never binds."""
    for level in tree.ancestors(memcg):
        if limits[level] != NO_LIMIT and usage[level] + pages > limits[level]:
            return level
    return None


def mem_cgroup_get_oom_group(tree: MemcgTree, victim_memcg: int, oom_domain: int | None) -> int | None:
    """The memcg to kill whole with the victim (None: only the victim), as mm/memcontrol.c:
    walk from the victim's memcg up to the OOM domain (the root memcg for a global OOM) and
    take the highest memcg with memory.oom.group set. A victim in the root memcg, or outside
    the domain, has none."""
    domain = ROOT_MEMCG if oom_domain is None else oom_domain
    if victim_memcg == ROOT_MEMCG or not tree.is_descendant(victim_memcg, domain):
        return None
    group = None
    for memcg in tree.ancestors(victim_memcg):
        if tree.oom_group[memcg]:
            group = memcg
        if memcg == domain:
            break
    return group
