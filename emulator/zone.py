"""The zone: a run's physical memory, shared by every process of the run.

A POSIX shared-memory segment holds the free-page count (and the facts about
the run that ``oomemu cleanup`` needs); a named semaphore guards the count.
An allocation charges the zone before it touches pages; reaping and exit
uncharge after they free pages. So at any quiet moment:

    zone.charged() == sum of resident pages over live mms == what the segments hold

Memory cgroups (``[[memcg]]`` in a scenario) live in the same segment: a
usage and a limit per memcg, charged together with the zone under the same
semaphore. Index 0 is the root memcg, which has no limit.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass

import posix_ipc

from . import names
from .shm_trust import Segment

#              magic sup_pid uid sup_ctime t0 speed total free scenario policy
_ZONE = struct.Struct("=4s i i d d d q q 48s 24s")
_MEMCG = struct.Struct("=q q 16s")         # limit pages (-1: none), usage pages, name
_MEMCG_OFF = 256
MAX_MEMCGS = 32
MAGIC = b"OOMZ"
ZONE_SIZE = mmap.PAGESIZE
GLOBAL, MEMCG = "global", "memcg"          # why a charge failed


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
        opened and checked by emulator.shm_trust (which it takes over; read-only: a private
        copy). An existing zone not laid out as oomemu lays it out is closed: ValueError."""
        self.run_id = run_id
        if create is not None:
            shm = posix_ipc.SharedMemory(names.zone(run_id), posix_ipc.O_CREX, mode=0o600,
                                         size=mmap.PAGESIZE)
            self.lock = posix_ipc.Semaphore(names.zone_lock(run_id), posix_ipc.O_CREX,
                                            mode=0o600, initial_value=1)
        else:
            shm = posix_ipc.SharedMemory(names.zone(run_id)) if fd is None else Segment(fd, ZONE_SIZE)
            try:
                self.lock = posix_ipc.Semaphore(names.zone_lock(run_id))
            except BaseException:
                shm.close_fd()
                raise
        self._shm = shm
        self.map = mmap.mmap(shm.fd, shm.size)
        shm.close_fd()
        if create is not None:
            _ZONE.pack_into(self.map, 0, MAGIC, create["supervisor_pid"], os.getuid(),
                            create["supervisor_ctime"], 0.0, create["speed"],
                            create["total_pages"], create["total_pages"],
                            create["scenario"].encode()[:48], create["policy"].encode()[:24])
            memcgs = [("", -1)] + list(create.get("memcgs", []))
            for i, (mname, limit) in enumerate(memcgs):
                _MEMCG.pack_into(self.map, _MEMCG_OFF + i * _MEMCG.size, limit, 0, mname.encode()[:16])
        elif (why := self._not_a_zone()) is not None:
            self.close()
            raise ValueError(f"{names.zone(run_id)}: not an oomemu zone ({why})")

    def _not_a_zone(self) -> str | None:
        """Why an existing segment is not this run's zone as oomemu lays it out (None: it is):
        its exact size, magic, and facts in range, the supervisor's pid the run id's."""
        if len(self.map) != ZONE_SIZE:
            return f"{len(self.map)} bytes, not {ZONE_SIZE}"
        magic, pid, uid, ctime, t0, speed, total, _, _, _ = _ZONE.unpack_from(self.map, 0)
        if magic != MAGIC:
            return "no magic"
        if pid != names.run_pid(self.run_id):
            return f"its supervisor pid {pid} is not the run id's"
        if uid < 0 or not (0 < speed <= 1e6 and total > 0 and math.isfinite(ctime) and math.isfinite(t0)):
            return "facts out of range"
        return None

    def close(self) -> None:
        try:
            self.map.close()
        except (BufferError, ValueError):
            pass
        self.lock.close()

    def facts(self) -> RunFacts:
        v = _ZONE.unpack_from(self.map, 0)
        return RunFacts(self.run_id, v[1], v[2], v[3], v[4], v[5], v[6], v[7],
                        names.c_string(v[8]), names.c_string(v[9]))     # never raises

    def _free_off(self) -> int:
        return 4 + 4 + 4 + 8 + 8 + 8 + 8

    @property
    def total_pages(self) -> int:
        return self.facts().total_pages

    def free_pages(self) -> int:
        return struct.unpack_from("=q", self.map, self._free_off())[0]

    def charged(self) -> int:
        return self.total_pages - self.free_pages()

    def set_t0(self, t0: float) -> None:
        struct.pack_into("=d", self.map, 4 + 4 + 4 + 8, t0)

    def memcg(self, index: int) -> tuple[int, int, str]:
        """(limit pages or -1, usage pages, name) of a memcg."""
        limit, usage, mname = _MEMCG.unpack_from(self.map, _MEMCG_OFF + index * _MEMCG.size)
        return limit, usage, mname.rstrip(b"\0").decode()

    def _set_usage(self, index: int, usage: int) -> None:
        struct.pack_into("=q", self.map, _MEMCG_OFF + index * _MEMCG.size + 8, usage)

    def room(self, pages: int, memcg: int = 0) -> str | None:
        """Would a charge succeed now? None if so, else GLOBAL or MEMCG (unlocked peek)."""
        if self.free_pages() < pages:
            return GLOBAL
        limit, usage, _ = self.memcg(memcg)
        if memcg and limit >= 0 and usage + pages > limit:
            return MEMCG
        return None

    def try_charge(self, pages: int, memcg: int = 0) -> str | None:
        """Take ``pages`` from the zone and the memcg, all or nothing.

        Returns None on success, else why not: GLOBAL (the zone is short: a
        global OOM) or MEMCG (the memcg's limit: a memcg OOM)."""
        self.lock.acquire()
        try:
            short = self.room(pages, memcg)
            if short is None:
                struct.pack_into("=q", self.map, self._free_off(), self.free_pages() - pages)
                self._set_usage(memcg, self.memcg(memcg)[1] + pages)
            return short
        finally:
            self.lock.release()

    def uncharge(self, pages: int, memcg: int = 0) -> None:
        if pages <= 0:
            return
        self.lock.acquire()
        try:
            struct.pack_into("=q", self.map, self._free_off(), self.free_pages() + pages)
            self._set_usage(memcg, self.memcg(memcg)[1] - pages)
        finally:
            self.lock.release()
