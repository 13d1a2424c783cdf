"""The mm: one POSIX shared-memory segment per task, laid out like this:

    page 0       header (``MM_HEADER``, one field table): pid, task state, mm
                 flags, page tables, the mailbox, the journal, the VMA table
    page 1 ...   the page tables (``pgtables_mb``), then the pages of the VMAs,
                 each VMA a contiguous range

Faulting a page in allocates it (``posix_fallocate``: a full /dev/shm is an
ENOSPC error, not a SIGBUS) and writes to it, so the memory is really there
(tmpfs holds it: it shows in /dev/shm and in ``st_blocks``). Freeing punches
the range out with ``MADV_REMOVE``, so it is really gone.

Each VMA's ``nr_pages`` is the one count of its resident pages: the rss
counters are derived from the VMA table. Every change of a count is made
under the mm's *guard* (``flock`` on the segment plus a thread lock:
:meth:`Mm.guard`), so that the owner's faults and exit and the reaper (in
the supervisor), which may work on the mm at once under mmap_sem held for
read, never race on them: a zap *claims* a VMA's pages (reads the count and
stores 0 in one guarded section) and only the claimant punches them out and
uncharges them, so each page is counted once. A worker writes what it is
about to do in the mm's *journal* first, so that if it dies half-way, the
supervisor can finish or undo it (``repair``).

The header also holds the mm's mmap_sem, a read-write semaphore shared
between processes (its state: ``emulator.runtime.rwsem``), and ``mm_users``.

Names follow the kernel: ``MMF_OOM_SKIP`` and ``MMF_UNSTABLE`` are bits in
``flags``; ``MM_FILEPAGES``/``MM_ANONPAGES``/``MM_SHMEMPAGES`` index the rss
counters; ``VM_*`` are the VMA flags the reaper looks at.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
from contextlib import contextmanager
from typing import Callable

import posix_ipc

from ..kernel.mm_types import (KIND_COUNTER, MAX_VMAS, MM_ANONPAGES, MM_FILEPAGES, MM_HEADER_PAGES, MM_SWAPENTS,
                               MM_SHMEMPAGES, MMF_BITS, MMF_UNSTABLE, MMU_NOTIFIERS, NR_MM_COUNTERS, PAGE_SIZE, TASK_COMM_LEN,
                               VMA_KINDS, MmLayout, TaskState, Vma)
from .layout import Record
from .names import c_string
from .shm_trust import Segment, unmap

HEADER_SIZE = MM_HEADER_PAGES * PAGE_SIZE
#: madvise(2): map a range writable, as writing each page would (Linux 5.14; not in Python 3.11's mmap)
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)

#: one VMA in the header's table (vm_area_struct, the little of it the emulator needs)
VMA_RECORD = Record(("kind", "I"), ("vm_flags", "I"), ("start", "q"), ("capacity", "q"), ("nr_pages", "q"),
                    ("object", "i"),         # the object it maps (runtime/objects.py; -1: none, its own pages)
                    ("swapped", "i"))        # of its pages, on swap (swap entries): the supervisor's swap-out
                                             # and swap-in change it, a zap frees them
#: one waiter in mmap_sem's queue (struct rwsem_waiter): its pid and what it wants (rwsem.READ or
#: rwsem.WRITE, plus rwsem.GRANTED once the lock is handed to it and it has not yet woken)
WAITER_RECORD = Record(("pid", "i"), ("mode", "I"))
MMAP_SEM_WAITERS = 32            # waiters an mmap_sem can queue: a 33rd is an error (room in the header)
MMAP_SEM_READER_SLOTS = 16       # readers whose pid is kept; the count stays exact beyond them
#: the mm's header, page 0 of its segment
MM_HEADER = Record(
    ("magic", "4s"),
    ("pid", "i"),
    # mm_users and mmap_sem (emulator.runtime.rwsem): read and written under the guard only.
    # First in the header, so that their offsets (documented for programs outside, in
    # docs/by-hand.md) stay put whatever else the header gains.
    # mm_users and mmap_sem (emulator.runtime.rwsem): read and written under the guard only
    ("mm_users", "i"),               # the owner's reference + one per foreign holder or waiter; 0: gone
    ("sem_writer", "i"),             # pid that holds mmap_sem for write (0: none)
    ("sem_readers", "i"),            # how many hold it for read (exact)
    ("sem_nr_waiters", "i"),         # entries in sem_waiters, granted ones included
    ("sem_mmput", "i"),              # pid of the exiting owner waiting for mm_users to reach 0 (0: none)
    ("sem_reader_pids", f"{MMAP_SEM_READER_SLOTS * 4}s"),   # int32 each, 0: a free slot
    ("sem_waiters", f"{MMAP_SEM_WAITERS * WAITER_RECORD.size}s"),   # WAITER_RECORDs, in arrival order
    ("state", "I"),                  # TaskState
    ("oom_score_adj", "i"),
    ("mmu_notifier", "I"),           # a value of MMU_NOTIFIERS
    ("nr_vmas", "I"),
    ("memcg", "I"),                  # index of the memcg the mm is charged to (0: the root)
    ("pgtables_pages", "q"),         # page tables resident
    ("pgtables_capacity", "q"),
    ("total_vm", "q"),
    ("reap_deadline", "d"),          # emulated time by which the reaper gives up (0: none known)
    ("killed_at", "d"),              # emulated time of the OOM kill (0: not killed)
    ("oom_retry_at", "d"),           # the supervisor's answer to a stalled allocation: retry at this
                                     # emulated time (after reclaim); < 0: after a jiffy (OOM killer)
    ("cmd_seq", "I"),                # the mailbox (oomemu inject): written last, it posts the command
    ("cmd_op", "I"),
    ("cmd_arg", "d"),
    ("journal_pages", "q"),          # the journal: what the owner is doing, for repair
    ("journal_vma", "i"),            # VMA index, -1: the page tables
    ("journal_op", "I"),             # written last: it commits the entry
    ("flags", f"{MMF_BITS}s"),       # mm->flags, a byte per bit (see Mm.set_bit)
    ("comm", f"{TASK_COMM_LEN}s"),   # the task's name
    ("vmas", f"{MAX_VMAS * VMA_RECORD.size}s"),
    ("mm_tasks", "i"),               # of mm_users, the processes that use the mm as theirs (CLONE_VM)
    ("shares_mm", "i"),              # this task's: 1 + the index of the task whose mm it uses; 0: its own
    ("sigterm_ms", "d"),             # how the task answers SIGTERM: SIGTERM_DEFAULT (fatal),
                                     # SIGTERM_IGNORE, or its handler exits after this many ms
)
SIGTERM_DEFAULT, SIGTERM_IGNORE = -1.0, -2.0
_FLAGS_OFF = MM_HEADER.offset("flags")
_COMM = MM_HEADER.fields["comm"]
_VMAS_OFF = MM_HEADER.offset("vmas")
assert MM_HEADER.size <= HEADER_SIZE
MM_HEADER.check_aligned("pgtables_pages", "total_vm", "reap_deadline", "killed_at", "oom_retry_at", "cmd_arg",
                        "journal_pages", "vmas", "mm_users", "mm_tasks", "shares_mm", "sem_writer", "sem_readers",
                        "sem_nr_waiters", "sem_mmput")
assert MM_HEADER.offset("sem_reader_pids") % 4 == 0 and MM_HEADER.offset("sem_waiters") % 4 == 0
VMA_RECORD.check_aligned("nr_pages")
assert _VMAS_OFF % 8 == 0 and VMA_RECORD.size % 8 == 0    # every VMA's nr_pages one aligned store

CMD_ALLOC = 1                    # the mailbox's one command: allocate cmd_arg MB

# What a worker is doing to its own mm (the journal's op), for repair after a crash.
J_NONE, J_CHARGE, J_ZAP = 0, 1, 2
MAGIC = b"OOMM"


_STATES = frozenset(s.value for s in TaskState)


def _vma_off(index: int) -> int:
    return _VMAS_OFF + index * VMA_RECORD.size


def _field(name: str, doc: str | None = None, writable: bool = True) -> property:
    """A header field of the mm as a property, read and written through MM_HEADER."""
    def get(self):
        return MM_HEADER.get(self.map, name)

    def put(self, value):
        MM_HEADER.set(self.map, name, value)
    return property(get, put if writable else None, doc=doc)


class Mm:
    """An mm segment, opened (or created) in this process.

    Counts change only under the mm's guard (:meth:`fault_in`, :meth:`zap_vma`),
    so callers that work on the mm at once (the owner and the reaper, each with
    mmap_sem held for read) never lose each other's changes. Which mmap_sem a
    caller holds is the kernel's rule, kept by the callers (emulator.runtime.rwsem).
    """

    def __init__(self, name: str, create: MmLayout | None = None, fd: int | None = None):
        """Create the mm ``name`` with ``create``'s layout, or open an existing one: by name,
        or from ``fd``, opened and checked by emulator.runtime.shm_trust (which it takes over; a
        read-only fd gives a private copy of the header). An existing segment that is not
        laid out as :meth:`_init` lays it out is closed again: ValueError."""
        self.name = name
        if create is not None:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=create.pages * PAGE_SIZE)
        else:
            shm = posix_ipc.SharedMemory(name) if fd is None else Segment(fd, HEADER_SIZE)
        self.fd = shm.fd
        self.size = shm.size
        self.map = mmap.mmap(shm.fd, shm.size)
        self._shm = shm
        self._tlock = threading.Lock()          # the guard among this process's threads
        if create is not None:
            self._init(create)
        elif (why := self._not_an_mm()) is not None:
            self.close()
            raise ValueError(f"{name}: not an oomemu mm ({why})")

    def _not_an_mm(self) -> str | None:
        """Why an existing segment is not an mm as _init lays it out (None: it is). What
        is checked is what a reader indexes or acts on: the VMA table must account for
        the segment's size exactly, and every field a reader uses must be in range."""
        if self.size < HEADER_SIZE or self.size % PAGE_SIZE:
            return f"{self.size} bytes"
        head = MM_HEADER.get
        if head(self.map, "magic") != MAGIC:
            return "no magic"
        nr_vmas = head(self.map, "nr_vmas")
        if head(self.map, "pid") < 0 or head(self.map, "state") not in _STATES \
                or not -1000 <= head(self.map, "oom_score_adj") <= 1000 \
                or head(self.map, "mmu_notifier") not in MMU_NOTIFIERS.values() or nr_vmas > MAX_VMAS:
            return "header fields out of range"
        if min(head(self.map, f) for f in ("mm_users", "mm_tasks", "shares_mm", "sem_writer", "sem_readers",
                                           "sem_mmput")) < 0 \
                or not 0 <= head(self.map, "sem_nr_waiters") <= MMAP_SEM_WAITERS:
            return "mmap_sem fields out of range"
        pgtables, pages = head(self.map, "pgtables_pages"), head(self.map, "pgtables_capacity")
        if not 0 <= pgtables <= pages:
            return "page tables out of range"
        for i in range(nr_vmas):
            kind, start, cap, nr, obj = (VMA_RECORD.get(self.map, f, _vma_off(i))
                                         for f in ("kind", "start", "capacity", "nr_pages", "object"))
            if kind >= len(VMA_KINDS) or start != pages or cap < 0 or not 0 <= nr <= cap or obj < -1:
                return f"VMA {i} out of range"
            if obj < 0:
                pages += cap
        if HEADER_SIZE + pages * PAGE_SIZE != self.size:
            return f"{self.size} bytes, but its VMA table says {HEADER_SIZE + pages * PAGE_SIZE}"
        return None

    def _init(self, layout: MmLayout) -> None:
        if len(layout.vmas) > MAX_VMAS:
            raise ValueError(f"{self.name}: {len(layout.vmas)} VMAs, the header has room for {MAX_VMAS}")
        self.map[0:HEADER_SIZE] = b"\0" * HEADER_SIZE   # the header is always resident
        MM_HEADER.set(self.map, "magic", MAGIC)
        MM_HEADER.set(self.map, "state", TaskState.TASK_NEW)
        MM_HEADER.set(self.map, "nr_vmas", len(layout.vmas))
        MM_HEADER.set(self.map, "mm_users", 1)             # the owner's
        MM_HEADER.set(self.map, "mm_tasks", 1)
        MM_HEADER.set(self.map, "pgtables_capacity", layout.pgtables)
        start = layout.pgtables
        objects = layout.objects or (-1,) * len(layout.vmas)
        for i, ((kind, flags, cap), obj) in enumerate(zip(layout.vmas, objects)):
            for name, value in (("kind", VMA_KINDS.index(kind)), ("vm_flags", flags), ("start", start),
                                ("capacity", cap), ("object", obj)):
                VMA_RECORD.set(self.map, name, value, _vma_off(i))
            if obj < 0:
                start += cap

    def close(self) -> None:
        unmap(self.map, self._shm)

    @contextmanager
    def guard(self):
        """The mm's guard: ``flock(LOCK_EX)`` on the segment (the kernel drops it if the
        holder dies) plus a thread lock (this process's threads share one fd). Held only
        for a few field reads and writes: never wait or punch pages under it."""
        with self._tlock:          # lock order: the guard, then the zone lock (zap_vma)
            while True:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX)
                    break
                except InterruptedError:
                    continue
            try:
                yield self
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)

    # -- header fields ----------------------------------------------------
    pid = _field("pid")
    oom_score_adj = _field("oom_score_adj")
    mmu_notifier = _field("mmu_notifier")
    memcg = _field("memcg", "Index of the memory cgroup the mm is charged to (0: the root).")
    reap_deadline = _field("reap_deadline", "Emulated time by which the reaper gives up on this mm "
                                            "(0: none known).")
    killed_at = _field("killed_at", "Emulated time the OOM killer chose the task (0: it did not): its exit "
                                    "is planned from then.")
    oom_retry_at = _field("oom_retry_at", "When a stalled allocation retries, as the supervisor answered "
                                          "(emulated time; < 0: a jiffy after the OOM killer's answer).")
    state = _field("state", "The task's TaskState, as an int (a reader of a copy may meet any value).")
    sigterm_ms = _field("sigterm_ms", "How the task answers SIGTERM (SIGTERM_DEFAULT, SIGTERM_IGNORE, or "
                                      "the ms its handler takes before it exits).")
    shares_mm = _field("shares_mm", "1 + the index of the task whose mm this task uses (CLONE_VM), 0: its "
                                    "own. Such a task's segment holds only its task fields (pid, state, "
                                    "comm, killed_at, mailbox); the mm is the owner's segment.")

    @property
    def comm(self) -> str:
        return c_string(self.map[_COMM.offset:_COMM.offset + _COMM.size])       # never raises

    @comm.setter
    def comm(self, value: str) -> None:
        MM_HEADER.set(self.map, "comm", value.encode()[:_COMM.size])          # NUL-padded

    def post_command(self, op: int, arg: float) -> int:
        """Leave a command for the task (then wake it with SIGWAKE); returns its sequence."""
        seq = MM_HEADER.get(self.map, "cmd_seq") + 1
        MM_HEADER.set(self.map, "cmd_op", op)
        MM_HEADER.set(self.map, "cmd_arg", arg)
        MM_HEADER.set(self.map, "cmd_seq", seq)          # last: it posts the command
        return seq

    def command(self) -> tuple[int, int, float]:
        """(sequence, op, argument) of the last command posted."""
        return tuple(MM_HEADER.get(self.map, f) for f in ("cmd_seq", "cmd_op", "cmd_arg"))

    # Each flag bit lives in a byte of its own, so that processes setting
    # different bits never lose each other's write (no read-modify-write).
    @property
    def flags(self) -> int:
        raw = self.map[_FLAGS_OFF:_FLAGS_OFF + MMF_BITS]
        return sum(1 << bit for bit in range(MMF_BITS) if raw[bit])

    def test_bit(self, bit: int) -> bool:
        return bool(self.map[_FLAGS_OFF + bit])

    def set_bit(self, bit: int) -> bool:
        """Set a flag bit; returns whether it was already set (test_and_set_bit)."""
        old = bool(self.map[_FLAGS_OFF + bit])
        self.map[_FLAGS_OFF + bit] = 1
        return old

    # -- counters (derived from the VMA table: one count per VMA) --------------
    def counters(self) -> list[int]:
        c = [0] * NR_MM_COUNTERS
        for v in self.vmas():
            counter = KIND_COUNTER[v.kind]
            if counter is not None:          # hugetlb, pfnmap: not in the kernel's rss counters
                c[counter] += v.nr_pages
            c[MM_SWAPENTS] += v.swapped
        return c

    def swapents(self) -> int:
        """MM_SWAPENTS: the mm's pages on swap."""
        return sum(v.swapped for v in self.vmas())

    def get_mm_rss(self) -> int:
        c = self.counters()
        return c[MM_FILEPAGES] + c[MM_ANONPAGES] + c[MM_SHMEMPAGES]

    pgtables_pages = _field("pgtables_pages", "Pages of page tables resident.", writable=False)
    pgtables_capacity = _field("pgtables_capacity", writable=False)
    total_vm = _field("total_vm", "Pages ever faulted in (the kernel's total_vm, roughly).", writable=False)

    def fault_pgtables(self) -> int:
        """Populate the page tables (at start-up: the zone is already charged)."""
        cap = self.pgtables_capacity
        self._allocate(HEADER_SIZE, cap)
        MM_HEADER.set(self.map, "pgtables_pages", cap)
        self._write(HEADER_SIZE, cap)
        return cap

    def free_pgtables(self) -> int:
        """free_pgtables(): release the page tables for real; returns how many pages."""
        n = self.pgtables_pages
        if n:
            self.map.madvise(mmap.MADV_REMOVE, HEADER_SIZE, self.pgtables_capacity * PAGE_SIZE)
            MM_HEADER.set(self.map, "pgtables_pages", 0)
        return n

    def mapped_pages(self) -> int:
        """Every page the mm maps or owns: its rss, hugetlb/pfnmap pages and page tables."""
        return sum(v.nr_pages for v in self.vmas()) + self.pgtables_pages

    def resident_pages(self) -> int:
        """Every page this mm owns in the zone: anon, hugetlb/pfnmap pages and page tables
        (not the pages it maps of page-cache and shmem objects: those are the objects')."""
        return sum(v.nr_pages for v in self.vmas() if v.object < 0) + self.pgtables_pages

    # -- VMAs -------------------------------------------------------------
    def vmas(self) -> list[Vma]:
        n = min(MM_HEADER.get(self.map, "nr_vmas"), MAX_VMAS)
        return [self.vma(i) for i in range(n)]

    def vma(self, i: int) -> Vma:
        """VMA ``i`` alone (reclaim asks each mapper of an object for one VMA, not all)."""
        kind, flags, start, cap, nr, obj, swapped = (
            VMA_RECORD.get(self.map, f, _vma_off(i))
            for f in ("kind", "vm_flags", "start", "capacity", "nr_pages", "object", "swapped"))
        return Vma(i, VMA_KINDS[kind], flags, start, cap, nr, obj, swapped)

    def map_object(self, vma_index: int, pages: int) -> None:
        """Map ``pages`` pages of the VMA's object (they are the object's, already charged
        and resident): the VMA's rss. The owner at start-up only."""
        with self.guard():
            self._set_nr_pages(vma_index, pages)
            MM_HEADER.set(self.map, "total_vm", self.total_vm + pages)

    def shrink_mapped(self, vma_index: int, resident: int) -> int:
        """The VMA's object has only ``resident`` pages left (reclaim, truncate): it maps
        no more than those. Returns how many pages it stopped mapping."""
        with self.guard():
            nr = self.vmas()[vma_index].nr_pages
            if nr > resident:
                self._set_nr_pages(vma_index, resident)
                return nr - resident
        return 0

    def map_more(self, vma_index: int, resident: int) -> int:
        """A refault: the VMA maps its object's first ``resident`` pages again (at most its
        capacity), unless the mm is being torn down (MMF_UNSTABLE). Returns the pages it
        maps now."""
        with self.guard():
            vma = self.vma(vma_index)
            if self.test_bit(MMF_UNSTABLE) or resident <= vma.nr_pages:
                return vma.nr_pages
            nr = min(resident, vma.capacity)
            self._set_nr_pages(vma_index, nr)
            return nr

    def swap_out(self, vma_index: int, pages: int, uncharge: Callable[[int], object]) -> int:
        """Reclaim moves up to ``pages`` of an anon VMA's resident pages to swap: in one
        guarded section the count drops, the swap entries rise, ``uncharge`` (the zone's)
        is called and the pages are punched out (inside: a fault that began before sees
        the count changed and starts again, one that begins after writes past the new
        count, never into the punched range). None if the mm is being torn down
        (MMF_UNSTABLE). Returns the pages swapped out."""
        with self.guard():
            vma = self.vma(vma_index)
            n = min(pages, vma.nr_pages)
            if n <= 0 or self.test_bit(MMF_UNSTABLE):
                return 0
            self._set_nr_pages(vma_index, vma.nr_pages - n)
            VMA_RECORD.set(self.map, "swapped", vma.swapped + n, _vma_off(vma_index))
            uncharge(n)
            self.map.madvise(mmap.MADV_REMOVE, HEADER_SIZE + (vma.start + vma.nr_pages - n) * PAGE_SIZE,
                             n * PAGE_SIZE)
        return n

    def swap_in(self, vma_index: int, pages: int) -> int:
        """A fault on swapped pages brings up to ``pages`` of them back (already charged by
        the caller): written after the resident ones, counted, their swap entries gone.
        The owner waits meanwhile (it asked for it). Returns the pages brought back (0 if
        the mm is being torn down: the caller uncharges what it charged)."""
        with self.guard():
            vma = self.vma(vma_index)
            n = min(pages, vma.swapped, vma.capacity - vma.nr_pages)
            if n <= 0 or self.test_bit(MMF_UNSTABLE):
                return 0
            off = HEADER_SIZE + (vma.start + vma.nr_pages) * PAGE_SIZE
            self._allocate(off, n)
            self._write(off, n)
            self._set_nr_pages(vma_index, vma.nr_pages + n)
            VMA_RECORD.set(self.map, "swapped", vma.swapped - n, _vma_off(vma_index))
        return n

    def _set_nr_pages(self, vma_index: int, nr: int) -> None:
        VMA_RECORD.set(self.map, "nr_pages", nr, _vma_off(vma_index))      # one aligned store

    def fault_in(self, vma_index: int, pages: int) -> bool:
        """Touch ``pages`` more pages of a VMA (the zone is already charged). The owner
        only. Returns False, with nothing counted and nothing left resident, if the mm
        became unstable (``MMF_UNSTABLE``: the reaper or exit_mmap is tearing it down)
        meanwhile: check_stable_address_space(), where the kernel's fault gives SIGBUS.
        If the count changed meanwhile with the mm stable (reclaim swapped some of the
        VMA out: :meth:`swap_out`), the pages are given back and the fault starts again."""
        while True:
            done = self._fault_in_once(vma_index, pages)
            if done is not None:
                return done

    def _fault_in_once(self, vma_index: int, pages: int) -> bool | None:
        """:meth:`fault_in`'s one try; None: the count changed under it, try again."""
        with self.guard():
            vma = self.vmas()[vma_index]
            unstable = self.test_bit(MMF_UNSTABLE)
        if unstable:
            return False
        if vma.nr_pages + pages > vma.capacity:
            raise ValueError(f"{self.name}: VMA {vma_index} has room for {vma.capacity} pages")
        off = HEADER_SIZE + (vma.start + vma.nr_pages) * PAGE_SIZE
        # Allocate, write, then count. A full /dev/shm fails the allocation with
        # nothing counted; a count always names pages allocated and written, so
        # whoever frees the VMA (the reaper, the exit, or the supervisor's repair if
        # this process dies half-way) frees exactly what was counted, and no write
        # can bring back a page that a zap has punched out.
        self._allocate(off, pages)
        self._write(off, pages)
        with self.guard():
            now = self.vmas()[vma_index].nr_pages
            unstable = self.test_bit(MMF_UNSTABLE)
            if now == vma.nr_pages and not unstable:
                self._set_nr_pages(vma_index, now + pages)
                MM_HEADER.set(self.map, "total_vm", self.total_vm + pages)
                return True
        self.map.madvise(mmap.MADV_REMOVE, off, pages * PAGE_SIZE)      # a zap came first: give back
        return False if unstable else None

    def shared_fault(self, vma_index: int, pages: int, try_charge: Callable[[int], str | None],
                     repair: Callable[[], None]) -> str | bool:
        """A fault in an mm that several processes use (CLONE_VM): the charge, the pages
        and the count are taken in one guarded section, so that two faulters never
        write the same range, and at any guarded moment at most one charge is not yet
        counted: the journal's one slot is the faulter's, and repair can tell what to
        undo. A slot left busy is a faulter that died in here: ``repair()`` (called under
        the guard) finishes it first. Returns True if counted, False if the mm became
        unstable (MMF_UNSTABLE: nothing charged), else try_charge's reason (nothing done)."""
        with self.guard():
            if self.journal()[0] == J_CHARGE:
                repair()
            if self.test_bit(MMF_UNSTABLE):
                return False
            vma = self.vmas()[vma_index]
            if vma.nr_pages + pages > vma.capacity:
                raise ValueError(f"{self.name}: VMA {vma_index} has room for {vma.capacity} pages")
            self.journal_begin(J_CHARGE, vma_index, pages)
            short = try_charge(pages)
            if short is None:
                off = HEADER_SIZE + (vma.start + vma.nr_pages) * PAGE_SIZE
                self._allocate(off, pages)
                self._write(off, pages)
                self._set_nr_pages(vma_index, vma.nr_pages + pages)
                MM_HEADER.set(self.map, "total_vm", self.total_vm + pages)
            self.journal_end()
            return True if short is None else short

    _CHUNK = b"\xa5" * (PAGE_SIZE * 256)

    def _allocate(self, off: int, pages: int) -> None:
        """The pages become real (OSError ENOSPC if /dev/shm is full, rather than a SIGBUS)."""
        if pages > 0:
            os.posix_fallocate(self.fd, off, pages * PAGE_SIZE)

    def _write(self, off: int, pages: int) -> None:
        """Touch allocated pages, as a program uses its memory. They are mapped first in one
        call (MADV_POPULATE_WRITE, Linux 5.14), not by a page fault each: on a VM a fault
        costs some microseconds, a quarter of a millisecond per MB."""
        if pages <= 0:
            return
        try:
            self.map.madvise(MADV_POPULATE_WRITE, off, pages * PAGE_SIZE)
        except OSError:
            pass                                  # EINVAL before 5.14: the writes fault them in
        end = off + pages * PAGE_SIZE
        while off < end:
            n = min(len(self._CHUNK), end - off)
            self.map[off:off + n] = self._CHUNK[:n]
            off += n

    def zap_vma(self, vma: Vma, uncharge: Callable[[int], object] | None = None,
                free_swap: Callable[[int], object] | None = None) -> int:
        """Free a VMA's resident pages for real, and its swap entries (``free_swap``, the
        zone's); returns how many resident pages. The pages are *claimed*
        first: in one guarded section the count is read and set to 0, and ``uncharge`` (the
        zone's, for the mm's task) is called with it; then they are punched out. The reaper
        and exit_mmap may zap the same VMA at once (both under mmap_sem held for read):
        only the claimant frees and uncharges, so each page is counted once; and as the
        charge drops with the count, the OOM killer never sees a count of 0 with the pages
        still charged (the kernel's rss counters and free pages move together)."""
        with self.guard():
            fresh = self.vma(vma.index)                         # fresh: someone may have zapped it
            claimed = fresh.nr_pages
            if claimed:
                self._set_nr_pages(vma.index, 0)
                if uncharge is not None and vma.object < 0:
                    uncharge(claimed)                           # the zone lock, inside the guard
            if fresh.swapped:                                   # its swap entries go too (free_swap_and_cache)
                VMA_RECORD.set(self.map, "swapped", 0, _vma_off(vma.index))
                if free_swap is not None:
                    free_swap(fresh.swapped)
        if vma.object >= 0:
            return 0            # unmapped only: the pages are the object's (page cache, shmem)
        if claimed:
            self.map.madvise(mmap.MADV_REMOVE, HEADER_SIZE + vma.start * PAGE_SIZE, claimed * PAGE_SIZE)
        return claimed

    def _punch_uncounted(self, vma: Vma) -> None:
        """Give back every page of a VMA beyond its count (allocated but not counted, or
        claimed but not yet punched: left only by a worker that died half-way)."""
        if vma.object < 0 and vma.capacity > vma.nr_pages:
            self.map.madvise(mmap.MADV_REMOVE, HEADER_SIZE + (vma.start + vma.nr_pages) * PAGE_SIZE,
                             (vma.capacity - vma.nr_pages) * PAGE_SIZE)

    def real_pages(self) -> int:
        """Pages the segment really holds now, header excluded (tmpfs st_blocks)."""
        return os.fstat(self.fd).st_blocks * 512 // PAGE_SIZE - HEADER_SIZE // PAGE_SIZE

    # -- the journal: what the owner is doing, for repair after it dies -------
    def journal(self) -> tuple[int, int, int]:
        """(op, VMA index or -1 for page tables, pages)."""
        return tuple(MM_HEADER.get(self.map, f) for f in ("journal_op", "journal_vma", "journal_pages"))

    def journal_begin(self, op: int, vma_index: int, pages: int) -> None:
        MM_HEADER.set(self.map, "journal_pages", pages)
        MM_HEADER.set(self.map, "journal_vma", vma_index)
        MM_HEADER.set(self.map, "journal_op", op)          # the op last: it commits

    def journal_end(self) -> None:
        MM_HEADER.set(self.map, "journal_op", J_NONE)

    def repair(self, charged: int) -> tuple[int, str | None]:
        """Make a dead owner's mm whole again; returns (the charge it should have, a
        complaint or None). Call with the owner dead and no one else working on the
        mm (the supervisor holds oom_lock, which the reaper takes).

        ``charged`` is the task's charge in the zone. The journal says what the owner
        was doing: charging and faulting in pages (undo a charge not yet counted,
        finish touching pages counted), or zapping a VMA or the page tables
        (finish it)."""
        op, vi, pages = self.journal()
        complaint = None
        if op == J_CHARGE:
            delta = charged - self.resident_pages()
            if delta == pages:                # charged, not yet counted: undo the charge
                charged -= pages
            if delta in (0, pages):
                # Allocated but not counted: give back. Counted: allocated, so
                # finish writing (writing a written page changes nothing).
                if vi < 0:
                    n = self.pgtables_pages
                    if n == 0:
                        self.map.madvise(mmap.MADV_REMOVE, HEADER_SIZE, self.pgtables_capacity * PAGE_SIZE)
                    self._write(HEADER_SIZE, n)
                else:
                    v = self.vmas()[vi]
                    self._punch_uncounted(v)
                    n = min(pages, v.nr_pages)
                    self._write(HEADER_SIZE + (v.start + v.nr_pages - n) * PAGE_SIZE, n)
            else:
                complaint = f"charged {charged} pages, mm counts {self.resident_pages()}, journal {pages}"
        elif op == J_ZAP:
            if vi < 0:
                self.free_pgtables()
            else:                              # claimed (count 0) but maybe not yet punched
                self.zap_vma(self.vmas()[vi])
                self._punch_uncounted(self.vmas()[vi])
            charged = self.resident_pages() if charged - self.resident_pages() in (0, pages) else charged
        self.journal_end()
        if complaint is None and charged != self.resident_pages():
            complaint = f"charged {charged} pages, mm counts {self.resident_pages()}"
        return charged, complaint

    def rss_kb(self) -> dict[str, int]:
        c = self.counters()
        k = PAGE_SIZE // 1024
        return {"total_vm": self.total_vm * k, "anon_rss": c[MM_ANONPAGES] * k,
                "file_rss": c[MM_FILEPAGES] * k, "shmem_rss": c[MM_SHMEMPAGES] * k}
