"""The mm: one POSIX shared-memory segment per task, laid out like this:

    page 0       header: pid, mm flags, task state, rss counters, VMA table
    page 1 ...   the page tables (``pgtables_mb``), then the pages of the VMAs,
                 each VMA a contiguous range

Faulting a page in allocates it (``posix_fallocate``: a full /dev/shm is an
ENOSPC error, not a SIGBUS) and writes to it, so the memory is really there
(tmpfs holds it: it shows in /dev/shm and in ``st_blocks``). Freeing punches
the range out with ``MADV_REMOVE``, so it is really gone.

Each VMA's ``nr_pages`` is the one count of its resident pages: the rss
counters are derived from the VMA table, and every change of a count is one
aligned 8-byte store, made with the mm's mmap_sem held, so the worker
(faults, exit) and the reaper (in the supervisor) never race on them. A
worker writes what it is about to do in the mm's *journal* first, so that
if it dies half-way, the supervisor can finish or undo it (``repair``).

Names follow the kernel: ``MMF_OOM_SKIP`` and ``MMF_UNSTABLE`` are bits in
``flags``; ``MM_FILEPAGES``/``MM_ANONPAGES``/``MM_SHMEMPAGES`` index the rss
counters; ``VM_*`` are the VMA flags the reaper looks at.
"""

from __future__ import annotations

import mmap
import os
import struct

import posix_ipc

from ..kernel.mm_types import (KIND_COUNTER, MAX_VMAS, MM_ANONPAGES, MM_FILEPAGES, MM_HEADER_PAGES,
                               MM_SHMEMPAGES, MMU_NOTIFIERS, NR_MM_COUNTERS, PAGE_SIZE, VMA_KINDS, MmLayout,
                               TaskState, Vma)
from .names import c_string
from .shm_trust import Segment

HEADER_SIZE = MM_HEADER_PAGES * PAGE_SIZE
STATE_NAMES = {s.value: s.label for s in TaskState}

#            magic pid flags state victim adj notifier nr_vmas sem_holder memcg
_HEAD = struct.Struct("=4s i I I I i I I i I")
_COUNTERS = struct.Struct("=5q")          # NR_MM_COUNTERS
_EXTRA = struct.Struct("=q q q")          # pgtables pages, pgtables capacity, total_vm
_VMA = struct.Struct("=I I q q q")        # kind, vm_flags, start, capacity, nr_pages
_HEAD_OFF = 0
_COUNTERS_OFF = 64
_EXTRA_OFF = _COUNTERS_OFF + _COUNTERS.size
_FLAGS_OFF = 128                          # 32 bytes, a byte per flag bit
_COMM_OFF = 160                           # 16 bytes: the task's name
_CMD = struct.Struct("=I I d")            # mailbox: sequence, op, argument (oomemu inject)
_CMD_OFF = 176
_DEADLINE_OFF = 192                       # double: the reaper's deadline, time.monotonic()
_JOURNAL = struct.Struct("=q i I")        # pages, VMA index (-1: page tables), op (written last)
_JOURNAL_OFF = 208
_VMA_OFF = 256
_VMA_NR_OFF = 24                          # nr_pages within a VMA record: 8-byte aligned
CMD_ALLOC = 1
assert _VMA_OFF + MAX_VMAS * _VMA.size <= HEADER_SIZE
assert _VMA.size % 8 == 0 and _VMA_OFF % 8 == 0 and _EXTRA_OFF % 8 == 0

# What a worker is doing to its own mm (the journal's op), for repair after a crash.
J_NONE, J_CHARGE, J_ZAP = 0, 1, 2
MAGIC = b"OOMM"


class Mm:
    """An mm segment, opened (or created) in this process.

    Methods that change pages or counters must be called with the mm's
    mmap_sem held (by this process) unless the caller owns the mm alone.
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
        magic, pid, _, state, _, adj, notifier, nr_vmas, _, _ = self._head()
        if magic != MAGIC:
            return "no magic"
        if pid < 0 or state not in STATE_NAMES or not -1000 <= adj <= 1000 \
                or notifier not in MMU_NOTIFIERS.values() or nr_vmas > MAX_VMAS:
            return "header fields out of range"
        pgtables, pages = self._extra()[:2]
        if not 0 <= pgtables <= pages:
            return "page tables out of range"
        for i in range(nr_vmas):
            kind, _, start, cap, nr = _VMA.unpack_from(self.map, _VMA_OFF + i * _VMA.size)
            if kind >= len(VMA_KINDS) or start != pages or cap < 0 or not 0 <= nr <= cap:
                return f"VMA {i} out of range"
            pages += cap
        if HEADER_SIZE + pages * PAGE_SIZE != self.size:
            return f"{self.size} bytes, but its VMA table says {HEADER_SIZE + pages * PAGE_SIZE}"
        return None

    def _init(self, layout: MmLayout) -> None:
        if len(layout.vmas) > MAX_VMAS:
            raise ValueError(f"{self.name}: {len(layout.vmas)} VMAs, the header has room for {MAX_VMAS}")
        self.map[0:HEADER_SIZE] = b"\0" * HEADER_SIZE   # the header is always resident
        _HEAD.pack_into(self.map, _HEAD_OFF, MAGIC, 0, 0, TaskState.TASK_NEW, 0, 0, 0, len(layout.vmas), 0, 0)
        _EXTRA.pack_into(self.map, _EXTRA_OFF, 0, layout.pgtables, 0)
        start = layout.pgtables
        for i, (kind, flags, cap) in enumerate(layout.vmas):
            _VMA.pack_into(self.map, _VMA_OFF + i * _VMA.size, VMA_KINDS.index(kind), flags, start, cap, 0)
            start += cap

    def close(self) -> None:
        try:
            self.map.close()
        except (BufferError, ValueError):
            pass
        try:
            self._shm.close_fd()
        except Exception:
            pass

    # -- header fields ----------------------------------------------------
    def _head(self):
        return _HEAD.unpack_from(self.map, _HEAD_OFF)

    @property
    def pid(self) -> int:
        return self._head()[1]

    @pid.setter
    def pid(self, value: int) -> None:
        struct.pack_into("=i", self.map, _HEAD_OFF + 4, value)

    @property
    def comm(self) -> str:
        return c_string(self.map[_COMM_OFF:_COMM_OFF + 16])       # never raises

    @comm.setter
    def comm(self, value: str) -> None:
        self.map[_COMM_OFF:_COMM_OFF + 16] = value.encode()[:16].ljust(16, b"\0")

    def post_command(self, op: int, arg: float) -> int:
        """Leave a command for the task (then wake it with SIGUSR2); returns its sequence."""
        seq = _CMD.unpack_from(self.map, _CMD_OFF)[0] + 1
        struct.pack_into("=I d", self.map, _CMD_OFF + 4, op, arg)
        struct.pack_into("=I", self.map, _CMD_OFF, seq)
        return seq

    def command(self) -> tuple[int, int, float]:
        return _CMD.unpack_from(self.map, _CMD_OFF)

    @property
    def reap_deadline(self) -> float:
        """time.monotonic() by which the reaper gives up on this mm (0: none known)."""
        return struct.unpack_from("=d", self.map, _DEADLINE_OFF)[0]

    @reap_deadline.setter
    def reap_deadline(self, value: float) -> None:
        struct.pack_into("=d", self.map, _DEADLINE_OFF, value)

    @property
    def memcg(self) -> int:
        """Index of the memory cgroup the mm is charged to (0: the root)."""
        return self._head()[9]

    @memcg.setter
    def memcg(self, value: int) -> None:
        struct.pack_into("=I", self.map, _HEAD_OFF + 36, value)

    # Each flag bit lives in a byte of its own, so that processes setting
    # different bits never lose each other's write (no read-modify-write).
    @property
    def flags(self) -> int:
        raw = self.map[_FLAGS_OFF:_FLAGS_OFF + 32]
        return sum(1 << bit for bit in range(32) if raw[bit])

    def test_bit(self, bit: int) -> bool:
        return bool(self.map[_FLAGS_OFF + bit])

    def set_bit(self, bit: int) -> bool:
        """Set a flag bit; returns whether it was already set (test_and_set_bit)."""
        old = bool(self.map[_FLAGS_OFF + bit])
        self.map[_FLAGS_OFF + bit] = 1
        return old

    @property
    def state(self) -> int:
        return self._head()[3]

    @state.setter
    def state(self, value: int) -> None:
        struct.pack_into("=I", self.map, _HEAD_OFF + 12, value)

    @property
    def oom_score_adj(self) -> int:
        return self._head()[5]

    @oom_score_adj.setter
    def oom_score_adj(self, value: int) -> None:
        struct.pack_into("=i", self.map, _HEAD_OFF + 20, value)

    @property
    def mmu_notifier(self) -> int:
        return self._head()[6]

    @mmu_notifier.setter
    def mmu_notifier(self, value: int) -> None:
        struct.pack_into("=I", self.map, _HEAD_OFF + 24, value)

    @property
    def mmap_sem_holder(self) -> int:
        """Pid that took mmap_sem through oomemu (0: none known). Informational only."""
        return self._head()[8]

    @mmap_sem_holder.setter
    def mmap_sem_holder(self, value: int) -> None:
        struct.pack_into("=i", self.map, _HEAD_OFF + 32, value)

    # -- counters (derived from the VMA table: one count per VMA) --------------
    def counters(self) -> list[int]:
        c = [0] * NR_MM_COUNTERS
        for v in self.vmas():
            counter = KIND_COUNTER[v.kind]
            if counter is not None:          # hugetlb, pfnmap: not in the kernel's rss counters
                c[counter] += v.nr_pages
        return c

    def _extra(self) -> list[int]:
        return list(_EXTRA.unpack_from(self.map, _EXTRA_OFF))

    def _set_extra(self, field: int, value: int) -> None:
        struct.pack_into("=q", self.map, _EXTRA_OFF + 8 * field, value)   # one aligned store

    def get_mm_rss(self) -> int:
        c = self.counters()
        return c[MM_FILEPAGES] + c[MM_ANONPAGES] + c[MM_SHMEMPAGES]

    @property
    def pgtables_pages(self) -> int:
        return self._extra()[0]

    @property
    def pgtables_capacity(self) -> int:
        return self._extra()[1]

    def fault_pgtables(self) -> int:
        """Populate the page tables (at start-up: the zone is already charged)."""
        cap = self.pgtables_capacity
        self._allocate(HEADER_SIZE, cap)
        self._set_extra(0, cap)
        self._write(HEADER_SIZE, cap)
        return cap

    def free_pgtables(self) -> int:
        """free_pgtables(): release the page tables for real; returns how many pages."""
        n = self.pgtables_pages
        if n:
            self.map.madvise(mmap.MADV_REMOVE, HEADER_SIZE, self.pgtables_capacity * PAGE_SIZE)
            self._set_extra(0, 0)
        return n

    @property
    def total_vm(self) -> int:
        return self._extra()[2]

    def resident_pages(self) -> int:
        """Every page this mm holds in the zone: rss, hugetlb/pfnmap pages and page tables."""
        return sum(v.nr_pages for v in self.vmas()) + self.pgtables_pages

    # -- VMAs -------------------------------------------------------------
    def vmas(self) -> list[Vma]:
        n = min(self._head()[7], MAX_VMAS)
        out = []
        for i in range(n):
            kind, flags, start, cap, nr = _VMA.unpack_from(self.map, _VMA_OFF + i * _VMA.size)
            out.append(Vma(i, VMA_KINDS[kind], flags, start, cap, nr))
        return out

    def _set_nr_pages(self, vma_index: int, nr: int) -> None:
        struct.pack_into("=q", self.map, _VMA_OFF + vma_index * _VMA.size + _VMA_NR_OFF, nr)

    def fault_in(self, vma_index: int, pages: int) -> None:
        """Touch ``pages`` more pages of a VMA (the zone is already charged)."""
        vma = self.vmas()[vma_index]
        if vma.nr_pages + pages > vma.capacity:
            raise ValueError(f"{self.name}: VMA {vma_index} has room for {vma.capacity} pages")
        off = HEADER_SIZE + (vma.start + vma.nr_pages) * PAGE_SIZE
        # Allocate, count, then write. A full /dev/shm fails the allocation with
        # nothing counted; a count always names allocated pages, so whoever frees
        # the VMA (the reaper, or the supervisor's repair if this process dies
        # half-way) frees exactly what was counted.
        self._allocate(off, pages)
        self._set_nr_pages(vma_index, vma.nr_pages + pages)
        self._set_extra(2, self.total_vm + pages)
        self._write(off, pages)

    _CHUNK = b"\xa5" * (PAGE_SIZE * 256)

    def _allocate(self, off: int, pages: int) -> None:
        """The pages become real (OSError ENOSPC if /dev/shm is full, rather than a SIGBUS)."""
        if pages > 0:
            os.posix_fallocate(self.fd, off, pages * PAGE_SIZE)

    def _write(self, off: int, pages: int) -> None:
        """Touch allocated pages, as a program uses its memory."""
        if pages <= 0:
            return
        end = off + pages * PAGE_SIZE
        while off < end:
            n = min(len(self._CHUNK), end - off)
            self.map[off:off + n] = self._CHUNK[:n]
            off += n

    def zap_vma(self, vma: Vma) -> int:
        """Free a VMA's resident pages for real; returns how many (the caller uncharges)."""
        vma = self.vmas()[vma.index]          # fresh copy: someone may have zapped it
        if vma.nr_pages == 0:
            return 0
        self._punch(vma)
        self._set_nr_pages(vma.index, 0)
        return vma.nr_pages

    def _punch(self, vma: Vma) -> None:
        """Give the counted pages back (pages allocated but not counted exist only in
        the mm of a worker that died half-way: ``repair`` gives those back)."""
        self.map.madvise(mmap.MADV_REMOVE, HEADER_SIZE + vma.start * PAGE_SIZE, vma.nr_pages * PAGE_SIZE)

    def real_pages(self) -> int:
        """Pages the segment really holds now, header excluded (tmpfs st_blocks)."""
        return os.fstat(self.fd).st_blocks * 512 // PAGE_SIZE - HEADER_SIZE // PAGE_SIZE

    # -- the journal: what the owner is doing, for repair after it dies -------
    def journal(self) -> tuple[int, int, int]:
        """(op, VMA index or -1 for page tables, pages)."""
        pages, vma, op = _JOURNAL.unpack_from(self.map, _JOURNAL_OFF)
        return op, vma, pages

    def journal_begin(self, op: int, vma_index: int, pages: int) -> None:
        struct.pack_into("=q i", self.map, _JOURNAL_OFF, pages, vma_index)
        struct.pack_into("=I", self.map, _JOURNAL_OFF + 12, op)      # the op last: it commits

    def journal_end(self) -> None:
        struct.pack_into("=I", self.map, _JOURNAL_OFF + 12, J_NONE)

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
                    if v.capacity > v.nr_pages:
                        self.map.madvise(mmap.MADV_REMOVE, HEADER_SIZE + (v.start + v.nr_pages) * PAGE_SIZE,
                                         (v.capacity - v.nr_pages) * PAGE_SIZE)
                    n = min(pages, v.nr_pages)
                    self._write(HEADER_SIZE + (v.start + v.nr_pages - n) * PAGE_SIZE, n)
            else:
                complaint = f"charged {charged} pages, mm counts {self.resident_pages()}, journal {pages}"
        elif op == J_ZAP:
            if vi < 0:
                self.free_pgtables()
            else:
                self.zap_vma(self.vmas()[vi])
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
