"""The run's memory cgroups on the machine's own kernel: cgroup v1 or v2, whichever is mounted.

A host run's groups, all named from its run id so that a leftover's owner can be
checked dead (``cleanup_leftovers``)::

    <mount>/<PREFIX>.<run id>/            the parent: memory_mb, the run's zone
    <mount>/<PREFIX>.<run id>/a/b         scenario [[memcg]] "b" whose parent is "a"
    <group>/tasks.leaf                    v2 only: the tasks of a group that has child groups

Where a task without a memcg goes: into the parent itself on v1 (a v1 group holds
tasks and child groups alike); on v2, into the parent's ``tasks.leaf`` once the
parent has child groups (v2's "no internal processes" rule), else into the parent.
Neither leaf nor parent has a limit of its own but memory_mb, so the kernel's OOM
domain for such a task is the parent's limit: the scenario's zone. The same holds for
a scenario memcg with children: its tasks go in its leaf, under its limit. A leaf's
name has a dot, which no scenario name may have, so it never meets a [[memcg]].

v1 has no memory.oom.group: a scenario with ``oom_group`` is refused (EnvironmentProblem)
before anything is made. v1's oom_kill counter is per group, not hierarchical (the kernel
stops memcg_memory_event at the first group off the default hierarchy); v2's
memory.events is hierarchical, memory.events.local is not: the run's count is the sum of
each group's own count on either.

Everything made here is removed by ``remove()`` (idempotent, also after a partial
set-up), or by ``cleanup_leftovers()`` from another process once the creator is dead.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Iterable

from ..errors import EnvironmentProblem
from ..runtime import names

MOUNTINFO = "/proc/self/mountinfo"
LEAF = "tasks.leaf"                    # v2: where the tasks of a group with children go
# SIGKILLed tasks leave cgroup.procs in milliseconds; one in D state (a FUSE read
# whose reply is held) leaves only when its wait ends: bounded, then reported.
KILL_WAIT_S = 5.0
RMDIR_WAIT_S = 2.0                     # rmdir of an emptied group is EBUSY a moment after its last exit
POLL_S = 0.005
# A run id's pid names the creator only if that process started before the group was
# made; /proc/stat's btime is whole seconds, so allow that much and a tick more.
CTIME_SLACK_S = 2.0


@dataclass(frozen=True)
class HostMemcg:
    """One scenario [[memcg]] as the host makes it."""
    name: str
    limit_bytes: int
    parent: str | None = None          # None: a child of the run's parent group
    oom_group: bool = False


@dataclass(frozen=True)
class Hierarchy:
    """Where the memory controller is mounted: version 1 or 2, and the mount point."""
    version: int
    root: str


def memcgs_of(scenario) -> list[HostMemcg]:
    """A scenario's memcgs (emulator.scenario.MemcgSpec: limit in MB, parent "" for the root)."""
    return [HostMemcg(m.name, int(m.limit_mb * 1024 * 1024), m.parent or None, m.oom_group)
            for m in scenario.memcgs]


def _unescape_mount(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def find_memory_hierarchy(mountinfo: str = MOUNTINFO) -> Hierarchy:
    """The mounted hierarchy that has the memory controller (v2 if its cgroup.controllers
    lists "memory", else a v1 mount with the "memory" option). EnvironmentProblem if none."""
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise EnvironmentProblem(f"cannot read {mountinfo} to find the memory cgroup controller: "
                                 f"{e.strerror}") from None
    v1 = v2 = None
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 3:
            continue
        point, fstype, options = _unescape_mount(fields[4]), rest[0], rest[2].split(",")
        if fstype == "cgroup" and "memory" in options and v1 is None:
            v1 = point
        elif fstype == "cgroup2" and v2 is None:
            try:
                with open(os.path.join(point, "cgroup.controllers")) as f:
                    if "memory" in f.read().split():
                        v2 = point
            except OSError:
                pass
    if v2:
        return Hierarchy(2, v2)
    if v1:
        return Hierarchy(1, v1)
    raise EnvironmentProblem("no memory cgroup controller is mounted (neither a cgroup v1 'memory' "
                             "hierarchy nor cgroup2 with memory in cgroup.controllers)")


def group_name(run_id: str, prefix: str = names.PREFIX) -> str:
    return f"{prefix}.{run_id}"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.oom_control, memory.events) as a dict."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


class HostMemcgs:
    """The run's parent group (limit ``total_limit_bytes``) and one child group per memcg.

    Made whole or not at all: a failure part-way removes what was made and raises
    (EnvironmentProblem for what the machine cannot give: no controller, not root, a
    limit that cannot be set, oom_group on v1). ``remove()`` undoes it; idempotent.
    """

    def __init__(self, run_id: str, total_limit_bytes: int, memcgs: Iterable = (), *,
                 prefix: str = names.PREFIX, hierarchy: Hierarchy | None = None):
        self.run_id = run_id
        self.memcgs = [m if isinstance(m, HostMemcg) else HostMemcg(*m) for m in memcgs]
        self.hierarchy = hierarchy or find_memory_hierarchy()
        self.v2 = self.hierarchy.version == 2
        self.path = os.path.join(self.hierarchy.root, group_name(run_id, prefix))
        self.total_limit_bytes = int(total_limit_bytes)
        self.notes: list[str] = []              # what the machine made differ, one line each
        self._created_subtrees: set[str] = set()
        self._dirs: dict[str | None, str] = {None: self.path}
        self._parents_of_groups: set[str | None] = set()
        self._made = False                      # the parent group is ours: remove() may empty it
        self._check()
        try:
            self._create()
        except BaseException:
            self.remove()
            raise

    # -- set-up ---------------------------------------------------------------------

    def _check(self) -> None:
        """Refuse, before anything exists, what this machine cannot make."""
        seen: set[str] = set()
        for m in self.memcgs:
            if not names.valid_name(m.name):
                raise ValueError(f"memcg {m.name!r}: not a comm-like name")
            if m.parent is not None and m.parent not in seen:
                raise ValueError(f"memcg {m.name}: its parent {m.parent!r} must come before it")
            if m.name in seen:
                raise ValueError(f"memcg {m.name}: named twice")
            if m.oom_group and not self.v2:
                raise EnvironmentProblem(f"memcg {m.name}: oom_group needs cgroup v2's memory.oom.group; "
                                         f"this machine's memory controller is cgroup v1")
            seen.add(m.name)
            self._parents_of_groups.add(m.parent)

    def _create(self) -> None:
        if self.v2:
            self._enable_memory(self.hierarchy.root)
        self._mkdir(self.path)
        self._made = True
        if not self.v2:
            self._use_hierarchy()
        self._limit(self.path, self.total_limit_bytes)
        for m in self.memcgs:
            d = os.path.join(self._dirs[m.parent], m.name)
            if self.v2 and self._dirs[m.parent] not in self._created_subtrees:
                self._enable_memory(self._dirs[m.parent])
            self._mkdir(d)
            self._dirs[m.name] = d
            self._limit(d, m.limit_bytes)
            if m.oom_group:
                self._set(d, "memory.oom.group", "1")
        if self.v2:
            for owner in self._parents_of_groups:
                self._mkdir(os.path.join(self._dirs[owner], LEAF))

    def _mkdir(self, path: str) -> None:
        try:
            os.mkdir(path)
        except OSError as e:
            why = " (host runs need root)" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else ""
            raise EnvironmentProblem(f"cannot create the memory cgroup {path}: {e.strerror}{why}") from None

    def _set(self, group: str, knob: str, value: str) -> None:
        try:
            _write(os.path.join(group, knob), value)
        except OSError as e:
            raise EnvironmentProblem(f"cannot set {knob} of {group} to {value}: {e.strerror}") from None

    def _use_hierarchy(self) -> None:
        """v1: nested limits bind only with memory.use_hierarchy = 1 (always so since v5.x;
        written where writable, then checked)."""
        knob = os.path.join(self.path, "memory.use_hierarchy")
        try:
            _write(knob, "1")
        except OSError:
            pass
        if _read(knob).strip() != "1":
            raise EnvironmentProblem(f"memory.use_hierarchy is 0 in {self.path} and cannot be set: "
                                     f"nested memcg limits would not bind")

    def _limit(self, group: str, limit_bytes: int) -> None:
        """The group's limit, and no swap beyond it (v2: memory.swap.max = 0; v1: memsw, where
        swap accounting exists)."""
        if self.v2:
            self._set(group, "memory.max", str(limit_bytes))
            if os.path.exists(os.path.join(group, "memory.swap.max")):
                self._set(group, "memory.swap.max", "0")
            return
        self._set(group, "memory.limit_in_bytes", str(limit_bytes))
        memsw = os.path.join(group, "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):
            try:
                _write(memsw, str(limit_bytes))
            except OSError as e:
                self.notes.append(f"{group}: memory.memsw.limit_in_bytes not set ({e.strerror}): "
                                  f"swap, if any, is not limited")

    def limit_bytes(self, name: str | None = None) -> int:
        """Memcg ``name``'s limit now (None: the run's parent group)."""
        group = self.group_path(name)
        text = _read(os.path.join(group, "memory.max" if self.v2 else "memory.limit_in_bytes")).strip()
        return -1 if text == "max" else int(text)

    def raise_limit(self, name: str | None, extra_bytes: int) -> None:
        """Raise memcg ``name``'s limit (None: the parent's) by ``extra_bytes`` (v1: the memsw
        limit first, which may never be below the memory limit)."""
        group = self.group_path(name)
        new = self.limit_bytes(name) + int(extra_bytes)
        memsw = os.path.join(group, "memory.memsw.limit_in_bytes")
        if not self.v2 and os.path.exists(memsw):
            try:
                _write(memsw, str(new))
            except OSError:
                pass
        self._set(group, "memory.max" if self.v2 else "memory.limit_in_bytes", str(new))

    def _enable_memory(self, group: str) -> None:
        """v2: "+memory" in ``group``'s cgroup.subtree_control, so its children have memory.* files."""
        self._created_subtrees.add(group)
        try:
            if "memory" in _read(os.path.join(group, "cgroup.subtree_control")).split():
                return
        except OSError:
            pass
        self._set(group, "cgroup.subtree_control", "+memory")

    # -- use --------------------------------------------------------------------------

    def group_path(self, name: str | None) -> str:
        """The directory of memcg ``name`` (None: the parent). KeyError if there is none."""
        return self._dirs[name]

    def tasks_path(self, name: str | None) -> str:
        """Where a task of memcg ``name`` (None: none) is put: the group, or on v2 its leaf
        when the group has child groups."""
        d = self._dirs[name]
        return os.path.join(d, LEAF) if self.v2 and name in self._parents_of_groups else d

    def join(self, pid: int, name: str | None = None) -> None:
        """Move ``pid`` into memcg ``name``'s group (None: the run's parent group). Call it
        before the process allocates: pages are charged where they are first touched, and a
        v1 group does not take charges along (move_charge_at_immigrate is off)."""
        try:
            _write(os.path.join(self.tasks_path(name), "cgroup.procs"), str(pid))
        except ProcessLookupError:
            raise
        except OSError as e:
            raise EnvironmentProblem(f"cannot move pid {pid} into {self.tasks_path(name)}: {e.strerror}") from None

    def _all(self) -> list[tuple[str | None, str]]:
        """(memcg name, directory) of every group of the run, leaves included (named as their group)."""
        out = list(self._dirs.items())
        if self.v2:
            out += [(owner, os.path.join(self._dirs[owner], LEAF)) for owner in self._parents_of_groups]
        return out

    def usage_bytes(self, name: str | None = None) -> int:
        """What the kernel charges to memcg ``name`` and below (None: the whole run)."""
        knob = "memory.current" if self.v2 else "memory.usage_in_bytes"
        return int(_read(os.path.join(self._dirs[name], knob)))

    def _own_events(self, group: str) -> dict[str, int]:
        if self.v2:
            local = os.path.join(group, "memory.events.local")
            return _keyed(_read(local if os.path.exists(local) else os.path.join(group, "memory.events")))
        out = _keyed(_read(os.path.join(group, "memory.oom_control")))
        out["failcnt"] = int(_read(os.path.join(group, "memory.failcnt")))
        return out

    def events(self) -> dict[str | None, dict[str, int]]:
        """Each memcg's own counters as its files say them (None: the parent). v1:
        memory.oom_control (oom_kill, under_oom, oom_kill_disable) and failcnt; v2:
        memory.events.local (max, oom, oom_kill, oom_group_kill...). A v2 leaf's counts are
        added to its group's."""
        out: dict[str | None, dict[str, int]] = {}
        for name, d in self._all():
            mine = out.setdefault(name, {})
            for k, v in self._own_events(d).items():
                mine[k] = mine.get(k, 0) + v if k not in ("oom_kill_disable", "under_oom") else max(mine.get(k, 0), v)
        return out

    def oom_kill_count(self) -> int:
        """How many tasks the kernel's OOM killer killed in the run's groups."""
        if self.v2 and not os.path.exists(os.path.join(self.path, "memory.events.local")):
            return _keyed(_read(os.path.join(self.path, "memory.events"))).get("oom_kill", 0)
        return sum(e.get("oom_kill", 0) for e in self.events().values())

    # -- tear-down --------------------------------------------------------------------

    def remove(self) -> list[str]:
        """SIGKILL every task left in the run's groups, wait (bounded) for them to leave,
        then rmdir the groups deepest first. Returns the groups still there (a task stuck
        in D state past KILL_WAIT_S): empty when all is gone. Idempotent. A group of that
        name that this object did not make (mkdir found it there) is left alone."""
        return remove_tree(self.path) if self._made else []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _groups_under(top: str) -> list[str]:
    """``top`` and every group below it, deepest first (children before their parents)."""
    out = []
    for d, _, _ in os.walk(top, topdown=False):
        out.append(d)
    return out


def _procs(group: str) -> list[int]:
    try:
        return [int(x) for x in _read(os.path.join(group, "cgroup.procs")).split()]
    except OSError:
        return []


def _kill_in(group: str, pid: int) -> None:
    """SIGKILL ``pid`` if it is still in ``group`` once held by a pidfd (a pid read from
    cgroup.procs may have exited and been reused since)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return                                  # gone already
    try:
        if pid in _procs(group):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)


def remove_tree(top: str, kill_wait_s: float = KILL_WAIT_S, rmdir_wait_s: float = RMDIR_WAIT_S,
                _clock=time.monotonic, _sleep=time.sleep) -> list[str]:
    """Empty and remove the group ``top`` and all below it: SIGKILL each task (never the
    caller), wait until every cgroup.procs is empty (bounded by ``kill_wait_s``), rmdir
    deepest first retrying EBUSY (bounded by ``rmdir_wait_s``). Returns the groups left."""
    if not os.path.isdir(top):
        return []
    me = os.getpid()
    deadline = _clock() + kill_wait_s
    while True:
        groups = _groups_under(top)
        left = [(g, p) for g in groups for p in _procs(g) if p != me]
        if not left or _clock() >= deadline:
            break
        for g, p in left:                       # again each round: a task may have forked
            _kill_in(g, p)
        _sleep(POLL_S)
    deadline = _clock() + rmdir_wait_s
    remaining = _groups_under(top) if os.path.isdir(top) else []
    while remaining:
        busy = []
        for g in remaining:
            try:
                os.rmdir(g)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise EnvironmentProblem(f"cannot remove the memory cgroup {g}: {e.strerror}") from None
                busy.append(g)
        if not busy or _clock() >= deadline:
            return busy
        remaining = busy
        _sleep(POLL_S)
    return []


def _started_at(pid: int) -> float | None:
    """When process ``pid`` started (wall clock, whole-second precision), or None if it is
    gone or a zombie."""
    try:
        stat = _read(f"/proc/{pid}/stat")
        btime = next(int(line.split()[1]) for line in _read("/proc/stat").splitlines()
                     if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    fields = stat.rpartition(")")[2].split()    # field 3 (state) onwards: comm may hold spaces
    if not fields or fields[0] in ("Z", "X"):
        return None
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def creator_alive(run_id: str, group: str) -> bool:
    """Is the process named by ``run_id`` alive, and the one that made ``group``? (Its pid is
    alive and it started before the group was made, within CTIME_SLACK_S.)"""
    pid = names.run_pid(run_id)
    if pid is None:
        return False
    started = _started_at(pid)
    if started is None:
        return False
    try:
        made = os.stat(group).st_ctime
    except OSError:
        return False
    return started <= made + CTIME_SLACK_S


def leftover_groups(prefix: str = names.PREFIX, hierarchy: Hierarchy | None = None) -> list[tuple[str, str]]:
    """(run id, group path) of each run's parent group named with ``prefix``, dead or alive."""
    try:
        hierarchy = hierarchy or find_memory_hierarchy()
        entries = sorted(os.listdir(hierarchy.root))
    except (EnvironmentProblem, OSError):
        return []
    pattern = re.compile(re.escape(prefix) + r"\.([1-9]\d{0,6}-[0-9a-f]{4})$")
    out = []
    for entry in entries:
        m = pattern.match(entry)
        path = os.path.join(hierarchy.root, entry)
        if m and names.run_pid(m.group(1)) is not None and os.path.isdir(path):
            out.append((m.group(1), path))
    return out


def cleanup_leftovers(prefix: str = names.PREFIX, hierarchy: Hierarchy | None = None) -> list[str]:
    """Remove the groups of runs whose creator is dead (their tasks SIGKILLed first). Returns
    the groups removed; one that cannot be removed yet (a task stuck in D state) is left,
    not listed, and found again next time. Groups of live runs are left alone."""
    removed = []
    for run_id, path in leftover_groups(prefix, hierarchy):
        if not creator_alive(run_id, path) and not remove_tree(path):
            removed.append(path)
    return removed
