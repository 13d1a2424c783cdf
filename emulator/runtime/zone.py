"""The zone: a run's physical memory, shared by every process of the run.

A POSIX shared-memory segment holds the facts about the run (``oomemu
cleanup`` and the live commands read them), the memory cgroups' limits, and
one charge counter per task: the pages charged on behalf of that task's mm.
The zone's usage and each memcg's usage are *sums* of those counters, never
kept apart, so that a process killed between two writes cannot leave the
zone and a memcg disagreeing: each charge is one aligned 8-byte store.

A charge is all or nothing and is taken under the zone lock: ``flock()`` on
the segment, which the kernel drops when its holder dies (a crashed worker
cannot wedge the run), plus a thread lock for the supervisor's two threads.

At any quiet moment, for every task:

    zone charge of the task == pages its mm counts == pages its segment holds

Memory cgroups (``[[memcg]]`` in a scenario): index 0 is the root memcg,
which has no limit.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import struct
import threading
from dataclasses import dataclass

import posix_ipc

from ..kernel.mm_types import MAX_MEMCGS, PAGE_SIZE
from . import names
from .shm_trust import Segment

#              magic sup_pid uid sup_ctime t0 speed total free scenario policy
_ZONE = struct.Struct("=4s i i d d d q q 48s 24s")
_NR_TASKS = struct.Struct("=q")            # at _NR_TASKS_OFF
_NR_TASKS_OFF = 128
_MEMCG = struct.Struct("=q q 16s")         # limit pages (-1: none), unused, name
_MEMCG_OFF = 256
_TASKS_OFF = PAGE_SIZE                          # charged pages per task (q), then memcg per task (i)
MAX_TASKS = 100_000
MAGIC = b"OOMZ"
GLOBAL, MEMCG = "global", "memcg"          # why a charge failed
assert _MEMCG_OFF + MAX_MEMCGS * _MEMCG.size <= _TASKS_OFF


def zone_size(nr_tasks: int) -> int:
    """Bytes of a zone segment for ``nr_tasks`` tasks (whole pages)."""
    raw = _TASKS_OFF + nr_tasks * (8 + 4)
    return -(-raw // PAGE_SIZE) * PAGE_SIZE


@dataclass(frozen=True)
class RunFacts:
    run_id: str
    supervisor_pid: int
    uid: int
    supervisor_ctime: float
    t0: float
    speed: float
    total_pages: int
    free_pages: int
    scenario: str
    policy: str


class Zone:
    def __init__(self, run_id: str, create: dict | None = None, fd: int | None = None):
        """Create the zone of ``run_id``, or open the existing one: by name, or from ``fd``,
        opened and checked by emulator.runtime.shm_trust (which it takes over; read-only: a private
        copy). An existing zone not laid out as oomemu lays it out is closed: ValueError."""
        self.run_id = run_id
        self._tlock = threading.Lock()
        if create is not None:
            tasks = list(create.get("tasks", ()))
            if len(tasks) > MAX_TASKS:
                raise ValueError(f"at most {MAX_TASKS} tasks")
            shm = posix_ipc.SharedMemory(names.zone(run_id), posix_ipc.O_CREX, mode=0o600,
                                         size=zone_size(len(tasks)))
        elif fd is None:
            shm = posix_ipc.SharedMemory(names.zone(run_id))
        else:
            shm = Segment(fd, zone_size(MAX_TASKS))
        self._shm = shm
        self.fd = shm.fd                       # kept open: flock() is taken on it
        self.map = mmap.mmap(shm.fd, shm.size)
        if create is not None:
            _ZONE.pack_into(self.map, 0, MAGIC, create["supervisor_pid"], os.getuid(),
                            create["supervisor_ctime"], 0.0, create["speed"],
                            create["total_pages"], create["total_pages"],
                            create["scenario"].encode()[:48], create["policy"].encode()[:24])
            memcgs = [("", -1)] + list(create.get("memcgs", []))
            for i, (mname, limit) in enumerate(memcgs):
                _MEMCG.pack_into(self.map, _MEMCG_OFF + i * _MEMCG.size, limit, 0, mname.encode()[:16])
            _NR_TASKS.pack_into(self.map, _NR_TASKS_OFF, len(tasks))
            self._layout()
            struct.pack_into(f"={len(tasks)}i", self.map, self._memcg_of_off, *tasks)
        elif (why := self._not_a_zone()) is not None:
            self.close()
            raise ValueError(f"{names.zone(run_id)}: not an oomemu zone ({why})")
        else:
            self._layout()

    def _not_a_zone(self) -> str | None:
        """Why an existing segment is not this run's zone as oomemu lays it out (None: it is):
        its magic, its exact size for its task table, facts in range, the supervisor's pid
        the run id's."""
        if len(self.map) < _TASKS_OFF:
            return f"{len(self.map)} bytes, too small"
        magic, pid, uid, ctime, t0, speed, total, _, _, _ = _ZONE.unpack_from(self.map, 0)
        if magic != MAGIC:
            return "no magic"
        n = _NR_TASKS.unpack_from(self.map, _NR_TASKS_OFF)[0]
        if not 0 <= n <= MAX_TASKS or len(self.map) != zone_size(n):
            return f"{len(self.map)} bytes, not what a table of {n} tasks takes"
        if pid != names.run_pid(self.run_id):
            return f"its supervisor pid {pid} is not the run id's"
        if uid < 0 or not (0 < speed <= 1e6 and total > 0 and math.isfinite(ctime) and math.isfinite(t0)):
            return "facts out of range"
        memcg_of = struct.unpack_from(f"={n}i", self.map, _TASKS_OFF + 8 * n)
        if any(not 0 <= m < MAX_MEMCGS for m in memcg_of):
            return "a task's memcg out of range"
        return None

    def _layout(self) -> None:
        n = _NR_TASKS.unpack_from(self.map, _NR_TASKS_OFF)[0]
        self.nr_tasks = n
        self._charged = struct.Struct(f"={n}q")
        self._memcg_of = struct.Struct(f"={n}i")
        self._memcg_of_off = _TASKS_OFF + 8 * n

    def close(self) -> None:
        try:
            self.map.close()
        except (BufferError, ValueError):
            pass
        try:
            self._shm.close_fd()
        except Exception:
            pass

    def facts(self) -> RunFacts:
        v = _ZONE.unpack_from(self.map, 0)
        return RunFacts(self.run_id, v[1], v[2], v[3], v[4], v[5], v[6], self.free_pages(),
                        names.c_string(v[8]), names.c_string(v[9]))     # never raises

    @property
    def total_pages(self) -> int:
        return _ZONE.unpack_from(self.map, 0)[6]

    def set_t0(self, t0: float) -> None:
        struct.pack_into("=d", self.map, 4 + 4 + 4 + 8, t0)

    # -- charges: one counter per task, everything else is a sum of them ----------
    def charged_by(self, task: int) -> int:
        """Pages charged on behalf of task ``task``'s mm."""
        return struct.unpack_from("=q", self.map, _TASKS_OFF + 8 * task)[0]

    def _set_charged(self, task: int, pages: int) -> None:
        struct.pack_into("=q", self.map, _TASKS_OFF + 8 * task, pages)   # one aligned store

    def memcg_of(self, task: int) -> int:
        return struct.unpack_from("=i", self.map, self._memcg_of_off + 4 * task)[0]

    def charged(self) -> int:
        return sum(self._charged.unpack_from(self.map, _TASKS_OFF))

    def free_pages(self) -> int:
        return self.total_pages - self.charged()

    def memcg_usage(self, index: int) -> int:
        charged = self._charged.unpack_from(self.map, _TASKS_OFF)
        memcg_of = self._memcg_of.unpack_from(self.map, self._memcg_of_off)
        return sum(c for c, m in zip(charged, memcg_of) if m == index)

    def memcg(self, index: int) -> tuple[int, int, str]:
        """(limit pages or -1, usage pages, name) of a memcg."""
        limit, _, mname = _MEMCG.unpack_from(self.map, _MEMCG_OFF + index * _MEMCG.size)
        return limit, self.memcg_usage(index), names.c_string(mname)

    def room(self, pages: int, memcg: int = 0) -> str | None:
        """Would a charge of ``pages`` in ``memcg`` succeed now? None if so, else GLOBAL
        or MEMCG (an unlocked peek)."""
        if self.free_pages() < pages:
            return GLOBAL
        if memcg:
            limit, usage, _ = self.memcg(memcg)
            if limit >= 0 and usage + pages > limit:
                return MEMCG
        return None

    def lock(self):
        """The zone lock (a context manager): flock on the segment + a thread lock."""
        return _ZoneLock(self)

    def try_charge(self, task: int, pages: int) -> str | None:
        """Charge ``pages`` to the zone and to the task's memcg, all or nothing.

        Returns None on success, else why not: GLOBAL (the zone is short: a
        global OOM) or MEMCG (the memcg's limit: a memcg OOM)."""
        with self.lock():
            short = self.room(pages, self.memcg_of(task))
            if short is None:
                self._set_charged(task, self.charged_by(task) + pages)
            return short

    def uncharge(self, task: int, pages: int) -> None:
        if pages <= 0:
            return
        with self.lock():
            self._set_charged(task, self.charged_by(task) - pages)

    def set_charged(self, task: int, pages: int) -> None:
        """Set a dead task's charge outright (the supervisor's repair after a crash)."""
        with self.lock():
            self._set_charged(task, pages)


class _ZoneLock:
    def __init__(self, zone: Zone):
        self.zone = zone

    def __enter__(self):
        self.zone._tlock.acquire()
        try:
            while True:
                try:
                    fcntl.flock(self.zone.fd, fcntl.LOCK_EX)
                    return self
                except InterruptedError:
                    continue
        except BaseException:
            self.zone._tlock.release()
            raise

    def __exit__(self, *exc):
        try:
            fcntl.flock(self.zone.fd, fcntl.LOCK_UN)
        finally:
            self.zone._tlock.release()
