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

Page cache and shmem live apart from any mm, in *objects* (a segment each,
see ``runtime/objects.py``): each object has its own charge counter here, in
the object table after the tasks', and counts in the zone's usage and in its
memcg's. At any quiet moment, for every task and every object:

    zone charge of the task == pages its mm owns == pages its segment holds
    zone charge of the object == its resident pages == pages its segment holds

so that the zone's usage is anon + page tables + page cache + shmem.

Memory cgroups (``[[memcg]]`` in a scenario): index 0 is the root memcg,
which has no limit; each other one names its parent, which comes before it
(``kernel.memcontrol.MemcgTree``). A memcg's usage is hierarchical, and a
charge must fit every level from the task's memcg up to the root.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import operator
import os
import struct
import threading
from dataclasses import dataclass
from typing import NamedTuple

import posix_ipc

from ..kernel.memcontrol import NO_LIMIT, ROOT_MEMCG, MemcgTree, page_counter_try_charge
from ..kernel.mm_types import MAX_MEMCGS, PAGE_SIZE, TASK_COMM_LEN
from ..scenario import MAX_OBJECTS
from ..kernel.oom_kill import GLOBAL, MEMCG       # why a charge failed: the zone, or a memcg's limit
from ..kernel.policies.base import MAX_NAME_BYTES as MAX_POLICY_NAME_BYTES
from ..scenario import MAX_NAME_BYTES
from . import names
from .layout import Record
from .shm_trust import Segment, unmap

#: one memory cgroup in the zone's table (index 0: the root memcg, no limit)
MEMCG_RECORD = Record(("limit_pages", "q"),        # -1: none
                      ("name", f"{TASK_COMM_LEN}s"),
                      ("parent", "i"),             # index of its parent, below its own (-1: the root)
                      ("oom_group", "i"))          # memory.oom.group: 1 or 0
#: one page-cache or shmem object in the zone's object table
OBJECT_RECORD = Record(
    ("charged", "q"),                # pages resident and charged (one aligned store)
    ("size", "q"),                   # pages it holds when whole
    ("dirty", "q"),                  # of the resident pages, dirty (page cache only)
    ("kind", "I"),                   # OBJ_FILE or OBJ_SHMEM
    ("memcg", "i"),                  # the memcg it is charged to
    ("flags", "I"),                  # OBJ_UNLINKED, OBJ_FREED
    ("pad", "I"),
    ("name", f"{TASK_COMM_LEN}s"),   # a named shmem object's name
)
OBJ_FILE, OBJ_SHMEM = 0, 1
OBJ_KINDS = {"file": OBJ_FILE, "shmem": OBJ_SHMEM}
OBJ_UNLINKED, OBJ_FREED = 1, 2
#: the zone's header, page 0 of its segment: the facts about the run, then the memcgs
ZONE_HEADER = Record(
    ("magic", "4s"),
    ("supervisor_pid", "i"),
    ("uid", "i"),                      # the run's owner, as the supervisor says (checked against the file's)
    ("supervisor_ctime", "d"),         # psutil's create_time() of the supervisor
    ("t0", "d"),                       # time.monotonic() of the run's time 0 (0: not started)
    ("speed", "d"),
    ("clock", "d"),                    # the run clock's word (see runtime/clock.py): > 0 running, <= 0 frozen
    ("min_due", "d"),                  # the earliest time a slot waits for (inf: none): the clock holds there
    ("frozen", "q"),                   # how many freezes hold the run clock (sum of the slots')
    ("held_s", "d"),                   # real seconds the clock held for late sleepers, in all
    ("held_max_s", "d"),               # ... and the longest hold
    ("total_pages", "q"),
    ("swap_pages", "q"),               # the swap device's size (0: no swap)
    ("swap_used", "q"),                # pages on it
    # /proc/pressure/memory as the run's PSI (emulator.kernel.psi) last showed it: the averages in
    # the kernel's fixed point (FSHIFT 11), the totals in us; written by the supervisor only
    ("psi_some_avg10", "q"), ("psi_some_avg60", "q"), ("psi_some_avg300", "q"), ("psi_some_total_us", "q"),
    ("psi_full_avg10", "q"), ("psi_full_avg60", "q"), ("psi_full_avg300", "q"), ("psi_full_total_us", "q"),
    ("psi_at", "d"),                   # the emulated time of those figures
    ("nr_tasks", "q"),
    ("nr_objects", "q"),
    ("scenario", f"{MAX_NAME_BYTES}s"),
    ("policy", f"{MAX_POLICY_NAME_BYTES}s"),
    ("memcgs", f"{MAX_MEMCGS * MEMCG_RECORD.size}s"),
)
# Then, from the next page: the charge of each task's mm (nr_tasks of CHARGE); the time
# each clock slot waits for (nr_tasks + 2 of DUE: each task's, then the supervisor's, then
# the user-space daemon's); each task's memcg (nr_tasks of MEMCG_OF); how many freezes each
# clock slot holds (nr_tasks + 2 bytes); whether each slot waits killably (nr_tasks + 2
# bytes); then, 8-byte aligned, the object table (nr_objects of OBJECT_RECORD).
CHARGE, DUE, MEMCG_OF = struct.Struct("=q"), struct.Struct("=d"), struct.Struct("=i")
_TASKS_OFF = -(-ZONE_HEADER.size // PAGE_SIZE) * PAGE_SIZE
_MEMCGS_OFF = ZONE_HEADER.offset("memcgs")
ZONE_HEADER.check_aligned("supervisor_ctime", "t0", "speed", "clock", "min_due", "frozen", "held_s",
                          "held_max_s", "total_pages", "swap_pages", "swap_used", "psi_some_avg10",
                          "psi_some_total_us", "psi_full_avg10", "psi_full_total_us", "psi_at", "nr_tasks",
                          "nr_objects")
#: the zone's PSI fields, in the order PsiGroup.pressure's figures come
PSI_FIELDS = ("psi_some_avg10", "psi_some_avg60", "psi_some_avg300", "psi_some_total_us",
              "psi_full_avg10", "psi_full_avg60", "psi_full_avg300", "psi_full_total_us")
SLOTS_AFTER_TASKS = 2                      # the supervisor's clock slot, then the daemon's
OBJECT_RECORD.check_aligned("charged", "size", "dirty")
assert OBJECT_RECORD.size % 8 == 0
assert _TASKS_OFF % 8 == 0                 # each task's charge: one aligned store
MAX_TASKS = 100_000
MAGIC = b"OOMZ"


def _one(i: int):
    """An itemgetter of one index that, as one of several indexes does, returns a tuple."""
    return lambda seq: (seq[i],)


def zone_size(nr_tasks: int, nr_objects: int = 0) -> int:
    """Bytes of a zone segment for ``nr_tasks`` tasks and ``nr_objects`` objects (whole pages)."""
    return -(-(_offsets(nr_tasks)[-1] + OBJECT_RECORD.size * nr_objects) // PAGE_SIZE) * PAGE_SIZE


def _offsets(n: int) -> tuple[int, int, int, int, int]:
    """Where the dues, the memcgs, the freezes, the killable flags and the object table
    of a zone of ``n`` tasks begin."""
    slots = n + SLOTS_AFTER_TASKS
    dues = _TASKS_OFF + CHARGE.size * n                   # 8-byte aligned, as the charges
    memcg_of = dues + DUE.size * slots
    freezes = memcg_of + MEMCG_OF.size * n
    killable = freezes + slots
    return dues, memcg_of, freezes, killable, -(-(killable + slots) // 8) * 8


def _memcg_off(index: int) -> int:
    return _MEMCGS_OFF + index * MEMCG_RECORD.size


class Short(NamedTuple):
    """Why a charge failed: GLOBAL (the zone is short; ``memcg`` is the root) or MEMCG
    (``memcg`` is the first level over its limit on the way up: mem_over_limit)."""
    where: str
    memcg: int = ROOT_MEMCG


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
        self._own_fd = -1
        self._tlock = threading.Lock()
        if create is not None:
            tasks = list(create.get("tasks", ()))
            objects = list(create.get("objects", ()))
            if len(tasks) > MAX_TASKS or len(objects) > MAX_OBJECTS:
                raise ValueError(f"at most {MAX_TASKS} tasks and {MAX_OBJECTS} objects")
            shm = posix_ipc.SharedMemory(names.zone(run_id), posix_ipc.O_CREX, mode=0o600,
                                         size=zone_size(len(tasks), len(objects)))
        elif fd is None:
            shm = posix_ipc.SharedMemory(names.zone(run_id))
        else:
            shm = Segment(fd, zone_size(MAX_TASKS, MAX_OBJECTS))
        self._shm = shm
        self.fd = shm.fd                       # kept open: flock() is taken on it
        self.map = mmap.mmap(shm.fd, shm.size)
        if create is not None:
            for name, value in (("magic", MAGIC), ("supervisor_pid", create["supervisor_pid"]),
                                ("uid", os.getuid()), ("supervisor_ctime", create["supervisor_ctime"]),
                                ("speed", create["speed"]), ("total_pages", create["total_pages"]),
                                ("swap_pages", create.get("swap_pages", 0)),
                                ("nr_tasks", len(tasks)), ("nr_objects", len(objects)),
                                ("scenario", create["scenario"].encode()),
                                ("policy", create["policy"].encode())):
                ZONE_HEADER.set(self.map, name, value)         # a name too long is cut to the field
            # (name, limit, parent index, oom_group), parents first
            memcgs = [("", NO_LIMIT, -1, False)] + list(create.get("memcgs", []))
            MemcgTree(tuple(m[0] for m in memcgs), tuple(m[2] for m in memcgs),
                      tuple(m[3] for m in memcgs))                # AssertionError unless a tree
            for i, (mname, limit, parent, group) in enumerate(memcgs):
                for field, value in (("limit_pages", limit), ("name", mname.encode()), ("parent", parent),
                                     ("oom_group", int(group))):
                    MEMCG_RECORD.set(self.map, field, value, _memcg_off(i))
            self._layout()
            for k, (kind, memcg, size, dirty, oname) in enumerate(objects):
                for field, value in (("kind", OBJ_KINDS[kind]), ("memcg", memcg), ("size", size),
                                     ("dirty", dirty), ("name", oname.encode())):
                    OBJECT_RECORD.set(self.map, field, value, self._object_off(k))
            struct.pack_into(f"={len(tasks)}i", self.map, self._memcg_of_off, *tasks)
            self.dues.pack_into(self.map, self.dues_off, *[math.inf] * (len(tasks) + SLOTS_AFTER_TASKS))
            ZONE_HEADER.set(self.map, "min_due", math.inf)
            self._index_memcgs()
        elif (why := self._not_a_zone()) is not None:
            self.close()
            raise ValueError(f"{names.zone(run_id)}: not an oomemu zone ({why})")
        else:
            self._layout()
            self._index_memcgs()

    def _not_a_zone(self) -> str | None:
        """Why an existing segment is not this run's zone as oomemu lays it out (None: it is):
        its magic, its exact size for its task table, facts in range, the supervisor's pid
        the run id's."""
        if len(self.map) < _TASKS_OFF:
            return f"{len(self.map)} bytes, too small"
        pid, uid, ctime, t0, speed, total = (ZONE_HEADER.get(self.map, f) for f in (
            "supervisor_pid", "uid", "supervisor_ctime", "t0", "speed", "total_pages"))
        if ZONE_HEADER.get(self.map, "magic") != MAGIC:
            return "no magic"
        n = ZONE_HEADER.get(self.map, "nr_tasks")
        nobj = ZONE_HEADER.get(self.map, "nr_objects")
        if not 0 <= n <= MAX_TASKS or not 0 <= nobj <= MAX_OBJECTS or len(self.map) != zone_size(n, nobj):
            return f"{len(self.map)} bytes, not what a table of {n} tasks and {nobj} objects takes"
        if pid != names.run_pid(self.run_id):
            return f"its supervisor pid {pid} is not the run id's"
        if uid < 0 or not (0 < speed <= 1e6 and total > 0 and math.isfinite(ctime) and math.isfinite(t0)):
            return "facts out of range"
        memcg_of = struct.unpack_from(f"={n}i", self.map, _offsets(n)[1])
        if any(not 0 <= m < MAX_MEMCGS for m in memcg_of):
            return "a task's memcg out of range"
        parents = [MEMCG_RECORD.get(self.map, "parent", _memcg_off(i)) for i in range(MAX_MEMCGS)]
        if parents[0] != -1 or any(not 0 <= p < i for i, p in enumerate(parents) if i):
            return "a memcg's parent out of order"
        objs = _offsets(n)[-1]
        for k in range(nobj):
            get = lambda f: OBJECT_RECORD.get(self.map, f, objs + k * OBJECT_RECORD.size)
            if get("kind") not in OBJ_KINDS.values() or not 0 <= get("memcg") < MAX_MEMCGS \
                    or not 0 <= get("dirty") <= get("charged") <= get("size"):
                return f"object {k} out of range"
        return None

    def _layout(self) -> None:
        n = ZONE_HEADER.get(self.map, "nr_tasks")
        self.nr_tasks = n
        self.nr_objects = ZONE_HEADER.get(self.map, "nr_objects")
        self._charged = struct.Struct(f"={n}q")
        self._memcg_of = struct.Struct(f"={n}i")
        self.dues_off, self._memcg_of_off, self.freezes_off, self.killable_off, self._objects_off = _offsets(n)
        self.dues = struct.Struct(f"={n + SLOTS_AFTER_TASKS}d")
        # every object's charge and memcg in one read: free_pages() is called on every
        # charge and every trace event, and a run may have thousands of objects
        self._object_columns = OBJECT_RECORD.columns(self.nr_objects, "charged", "memcg")
        rec = lambda field: tuple(MEMCG_RECORD.get(self.map, field, _memcg_off(i)) for i in range(MAX_MEMCGS))
        self.memcg_tree = MemcgTree(tuple(names.c_string(b) for b in rec("name")), rec("parent"),
                                    tuple(bool(g) for g in rec("oom_group")))
        self._limits = rec("limit_pages")        # fixed for the run, as the tree
        self._members: list = []                 # see _index_memcgs

    def _index_memcgs(self) -> None:
        """Each memcg's tasks (fixed for the run, as the tree): a memcg's own usage is then
        one C-level pick and sum of the charge table."""
        members: dict[int, list[int]] = {}
        for task, memcg in enumerate(self._memcg_of.unpack_from(self.map, self._memcg_of_off)):
            members.setdefault(memcg, []).append(task)
        self._members = [(m, operator.itemgetter(*tasks) if len(tasks) > 1 else _one(tasks[0]))
                         for m, tasks in sorted(members.items())]

    def own_lock(self) -> None:
        """An open file of our own for the zone's flock, in a process that inherited this Zone
        (a fork server's clone): flock locks an open file, which a fork shares, so clones
        locking the inherited one would not exclude each other."""
        fd = os.open(names.shm_path(names.zone(self.run_id), False), os.O_RDWR | os.O_CLOEXEC)
        mine, theirs = os.fstat(fd), os.fstat(self.fd)
        if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
            os.close(fd)
            raise ValueError(f"{names.zone(self.run_id)}: not the zone this process maps (replaced?)")
        self._shm.close_fd()
        self._own_fd = self.fd = fd

    def close(self) -> None:
        unmap(self.map, self._shm)
        if self._own_fd >= 0:
            os.close(self._own_fd)
            self._own_fd = -1

    def facts(self) -> RunFacts:
        get = lambda name: ZONE_HEADER.get(self.map, name)
        return RunFacts(self.run_id, get("supervisor_pid"), get("uid"), get("supervisor_ctime"), get("t0"),
                        get("speed"), get("total_pages"), self.free_pages(),
                        names.c_string(get("scenario")), names.c_string(get("policy")))     # never raises

    @property
    def total_pages(self) -> int:
        return ZONE_HEADER.get(self.map, "total_pages")

    @property
    def t0(self) -> float:
        """time.monotonic() of the run's time 0 (0: not started)."""
        return ZONE_HEADER.get(self.map, "t0")

    @property
    def speed(self) -> float:
        return ZONE_HEADER.get(self.map, "speed")

    def set_t0(self, t0: float, live: list[int] | None = None) -> None:
        """Time 0 of the run; the run clock starts frozen at 0 until every task in ``live``
        (default: all) has reached the start line (emulator.runtime.clock.start_clock)."""
        from .clock import start_clock
        with self.lock():
            start_clock(self, t0, range(self.nr_tasks) if live is None else live)
            ZONE_HEADER.set(self.map, "t0", t0)

    # -- where the run clock's shared state lives (emulator.runtime.clock) -----------
    @property
    def supervisor_slot(self) -> int:
        """The clock slot of the supervisor (the tasks' are their indexes)."""
        return self.nr_tasks

    @property
    def daemon_slot(self) -> int:
        """The clock slot of the run's user-space process (workers/userspace.py)."""
        return self.nr_tasks + 1

    @property
    def nr_slots(self) -> int:
        return self.nr_tasks + SLOTS_AFTER_TASKS

    # -- memory pressure and swap, as the supervisor publishes them ------------------
    def publish_psi(self, figures: tuple[int, ...], at: float) -> None:
        """The PSI figures (PSI_FIELDS' order) as the run's PsiGroup showed them at ``at``."""
        for name, value in zip(PSI_FIELDS, figures):
            ZONE_HEADER.set(self.map, name, value)
        ZONE_HEADER.set(self.map, "psi_at", at)

    def psi(self) -> tuple[tuple[int, ...], float]:
        """(the PSI figures in PSI_FIELDS' order, the emulated time they are of)."""
        return tuple(ZONE_HEADER.get(self.map, n) for n in PSI_FIELDS), ZONE_HEADER.get(self.map, "psi_at")

    def swap(self) -> tuple[int, int]:
        """(the swap device's pages, pages on it)."""
        return ZONE_HEADER.get(self.map, "swap_pages"), ZONE_HEADER.get(self.map, "swap_used")

    def charge_swap(self, pages: int) -> int:
        """Take up to ``pages`` swap slots (get_swap_page); returns how many (0: swap full)."""
        with self.lock():
            total, used = self.swap()
            n = max(0, min(pages, total - used))
            ZONE_HEADER.set(self.map, "swap_used", used + n)
            return n

    def uncharge_swap(self, pages: int) -> None:
        """Give back ``pages`` swap slots (swap_free: a swap-in, or a zap of swapped pages)."""
        if pages <= 0:
            return
        with self.lock():
            ZONE_HEADER.set(self.map, "swap_used", max(0, self.swap()[1] - pages))

    def set_swap_used(self, pages: int) -> None:
        """After a repair: the slots in use are what the mms count."""
        with self.lock():
            ZONE_HEADER.set(self.map, "swap_used", pages)

    @property
    def clock_word(self) -> float:
        return ZONE_HEADER.get(self.map, "clock")             # one aligned 8-byte load

    @property
    def min_due(self) -> float:
        return ZONE_HEADER.get(self.map, "min_due")

    def held(self) -> tuple[float, float]:
        """(real seconds the clock held for late sleepers in all, the longest hold)."""
        return ZONE_HEADER.get(self.map, "held_s"), ZONE_HEADER.get(self.map, "held_max_s")

    # -- charges: one counter per task, everything else is a sum of them ----------
    def charged_by(self, task: int) -> int:
        """Pages charged on behalf of task ``task``'s mm."""
        return CHARGE.unpack_from(self.map, _TASKS_OFF + CHARGE.size * task)[0]

    def _set_charged(self, task: int, pages: int) -> None:
        CHARGE.pack_into(self.map, _TASKS_OFF + CHARGE.size * task, pages)   # one aligned store

    def memcg_of(self, task: int) -> int:
        return MEMCG_OF.unpack_from(self.map, self._memcg_of_off + MEMCG_OF.size * task)[0]

    def charged(self) -> int:
        """Pages charged in all: the tasks' (anon, page tables) and the objects' (page cache, shmem)."""
        return sum(self._charged.unpack_from(self.map, _TASKS_OFF)) + sum(self._objects_charged()[0::2])

    def _objects_charged(self) -> tuple[int, ...]:
        """(charged, memcg) of every object, flat: charged pages at even indices."""
        return self._object_columns.unpack_from(self.map, self._objects_off)

    def task_charges(self) -> tuple[int, ...]:
        """Every task's charge, in task order: one read of the whole table (unlocked)."""
        return self._charged.unpack_from(self.map, _TASKS_OFF)

    def tasks_charged(self) -> int:
        return sum(self._charged.unpack_from(self.map, _TASKS_OFF))

    def free_pages(self) -> int:
        return self.total_pages - self.charged()

    def memcg_usages(self) -> list[int]:
        """Every memcg's usage, hierarchical: its own tasks' charges plus its descendants'."""
        charged = self._charged.unpack_from(self.map, _TASKS_OFF)
        own = [0] * MAX_MEMCGS
        for m, pick in self._members:
            own[m] = sum(pick(charged))
        objects = self._objects_charged()             # page cache and shmem, charged apart
        for c, m in zip(objects[0::2], objects[1::2]):
            own[m] += c
        return self.memcg_tree.usage(own)

    def memcg_usage(self, index: int) -> int:
        return self.memcg_usages()[index]

    # -- objects: page cache and shmem, each with its own charge ---------------------
    def _object_off(self, k: int) -> int:
        return self._objects_off + k * OBJECT_RECORD.size

    def object_field(self, k: int, field: str):
        return OBJECT_RECORD.get(self.map, field, self._object_off(k))

    def set_object_field(self, k: int, field: str, value) -> None:
        OBJECT_RECORD.set(self.map, field, value, self._object_off(k))

    def object_charged(self, k: int) -> int:
        return OBJECT_RECORD.get(self.map, "charged", self._object_off(k))

    def object_kind(self, k: int) -> str:
        return "shmem" if self.object_field(k, "kind") == OBJ_SHMEM else "file"

    def object_name(self, k: int) -> str:
        return names.c_string(self.object_field(k, "name"))

    def charge_object(self, k: int, pages: int) -> None:
        """Charge an object's pages (set-up: the scenario made sure they fit)."""
        with self.lock():
            self.set_object_field(k, "charged", self.object_charged(k) + pages)

    def try_charge_object(self, k: int, pages: int) -> Short | None:
        """Charge ``pages`` more to object ``k`` (a refault brings them back) if they fit in
        the zone and its memcg's limits; None on success, else why not (nothing charged)."""
        with self.lock():
            short = self.room(pages, self.object_field(k, "memcg"))
            if short is None:
                self.set_object_field(k, "charged", self.object_charged(k) + pages)
            return short

    def uncharge_object(self, k: int, pages: int) -> None:
        """Its last ``pages`` pages are gone; its dirty pages can only be among those left."""
        if pages <= 0:
            return
        with self.lock():
            left = self.object_charged(k) - pages
            self.set_object_field(k, "charged", left)
            if self.object_field(k, "dirty") > left:
                self.set_object_field(k, "dirty", left)

    def memcg(self, index: int) -> tuple[int, int, str]:
        """(limit pages or -1, usage pages (hierarchical), name) of a memcg."""
        return self._limits[index], self.memcg_usage(index), self.memcg_tree.names[index]

    def room(self, pages: int, memcg: int = 0) -> Short | None:
        """Would a charge of ``pages`` in ``memcg`` succeed now? None if so, else why not
        (an unlocked peek)."""
        if self.free_pages() < pages:
            return Short(GLOBAL)
        if memcg:
            over = page_counter_try_charge(self.memcg_tree, self.memcg_usages(), self._limits, memcg, pages)
            if over is not None:
                return Short(MEMCG, over)
        return None

    def lock(self):
        """The zone lock (a context manager): flock on the segment + a thread lock."""
        return _ZoneLock(self)

    def try_charge(self, task: int, pages: int) -> Short | None:
        """Charge ``pages`` to the zone and to the task's memcg and its ancestors, all or
        nothing.

        Returns None on success, else why not: Short(GLOBAL) (the zone is short: a global
        OOM) or Short(MEMCG, mem_over_limit) (that memcg's limit: a memcg OOM in its subtree)."""
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
