"""Page cache and shmem: memory that belongs to a file, not to an mm.

Each page-cache or shmem object of a run (``scenario.objects``) is a POSIX
shared-memory segment of its own whose pages are really there: the
supervisor faults them all in at set-up and charges them to the object's
counter in the zone (``Zone.charge_object``), in the memcg of its first
mapper. A VMA over an object (``Vma.object``) only *maps* its pages: the
mm's rss counters count them (file-rss, shmem-rss, as ``get_mm_rss`` does
and so ``oom_badness``), but the mm does not own them. So:

* the reaper and exit_mmap unmap such a VMA and free nothing of it;
* page cache stays when its mappers are gone (unmapped page cache), until
  reclaim takes it: clean pages at once, dirty ones once written back;
* an anonymous shmem object goes with its last mapper's exit; a named one
  stays charged until ``shm_unlink`` and its last mapper's exit, or until
  ``shm_truncate`` frees its pages.

Only the supervisor's main thread changes objects (reclaim runs there, on a
stalled allocator's behalf, as do the shm steps it is asked to carry out), so
an object's pages, its charge and its mappers' counts change together here.
The one rule for mappers: a VMA maps a prefix of its object, so when the
object keeps ``n`` pages, no mapper maps more than ``n``
(``Mm.shrink_mapped``), and reclaim takes pages from the end.
"""

from __future__ import annotations

import mmap
import os

import posix_ipc

from ..kernel.mm_types import PAGE_SIZE
from ..kernel.vmscan import CacheView
from ..scenario import Scenario
from .zone import OBJ_FREED, OBJ_UNLINKED, Zone

_CHUNK = b"\x5a" * (PAGE_SIZE * 256)


class RunObjects:
    """The objects of one run, as the supervisor holds them (segments mapped)."""

    def __init__(self, scenario: Scenario, zone: Zone):
        self.scenario = scenario
        self.zone = zone
        self.maps: list[mmap.mmap] = []
        self.fds: list[int] = []
        # per object: (task index, VMA index) of every VMA that maps it, in file order
        self.mappers: list[list[tuple[int, int]]] = [[] for _ in scenario.objects]
        for ti, t in enumerate(scenario.tasks):
            for vi, k in enumerate(t.vma_objects):
                if k >= 0:
                    self.mappers[k].append((ti, vi))

    def __len__(self) -> int:
        return len(self.scenario.objects)

    # -- set-up ------------------------------------------------------------------
    def attach(self, k: int, shm: posix_ipc.SharedMemory) -> None:
        """Object ``k``'s segment (just created, empty): fault every page in and charge it."""
        pages = self.scenario.objects[k].pages
        self.fds.append(shm.fd)
        m = mmap.mmap(shm.fd, max(shm.size, PAGE_SIZE))
        self.maps.append(m)
        if pages:
            os.posix_fallocate(shm.fd, 0, pages * PAGE_SIZE)
            off, end = 0, pages * PAGE_SIZE
            while off < end:
                n = min(len(_CHUNK), end - off)
                m[off:off + n] = _CHUNK[:n]
                off += n
        self.zone.charge_object(k, pages)

    def close(self) -> None:
        for m in self.maps:
            try:
                m.close()
            except (BufferError, ValueError):
                pass
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.maps.clear()
        self.fds.clear()

    # -- what reclaim sees --------------------------------------------------------
    def views(self, tasks, in_domain) -> list[CacheView]:
        """A CacheView of every object; ``in_domain(memcg index)`` says whether an object
        charged there is in the OOM domain; ``tasks`` are the supervisor's TaskRecords.
        A shmem object's mappers are not looked at: reclaim never takes shmem (no swap), and
        one cache mapped by hundreds of tasks would cost a VMA read each, at every retry."""
        out = []
        for k in range(len(self)):
            if self.zone.object_field(k, "flags") & OBJ_FREED:
                continue
            mapped, unevictable = False, 0
            for ti, vi in self.mappers[k] if self.scenario.objects[k].kind == "file" else ():
                t = tasks[ti]
                if not _mm_lives(t):
                    continue
                vma = t.mm.vma(vi)
                if vma.nr_pages:
                    mapped = True
                    if vma.mlocked:
                        unevictable = max(unevictable, vma.nr_pages)
            out.append(CacheView(k, self.zone.object_kind(k), self.zone.object_charged(k),
                                 self.zone.object_field(k, "dirty"), unevictable, mapped,
                                 in_domain(self.zone.object_field(k, "memcg"))))
        return out

    def dirty(self) -> list[tuple[int, int]]:
        """(object, dirty pages) of every page-cache object with dirty pages, in order."""
        return [(k, d) for k in range(len(self)) if (d := self.zone.object_field(k, "dirty")) > 0]

    def cleaned(self, k: int, pages: int) -> None:
        """Writeback wrote ``pages`` of object ``k``'s dirty pages: they are clean."""
        with self.zone.lock():
            self.zone.set_object_field(k, "dirty", max(0, self.zone.object_field(k, "dirty") - pages))

    def refault(self, k: int, pages: int) -> int:
        """Bring back ``pages`` pages at the end of object ``k`` (a refault reads them from
        the file): real pages first, then charged if they fit (zone.try_charge_object), else
        given back. Returns the pages brought back (0 or ``pages``)."""
        if pages <= 0:
            return 0
        resident = self.zone.object_charged(k)
        off, end = resident * PAGE_SIZE, (resident + pages) * PAGE_SIZE
        os.posix_fallocate(self.fds[k], off, end - off)
        m = self.maps[k]
        if len(m) < end:                       # mapped at set-up for its size: never smaller
            raise ValueError(f"object {k}: no room for {resident + pages} pages")
        while off < end:
            n = min(len(_CHUNK), end - off)
            m[off:off + n] = _CHUNK[:n]
            off += n
        if self.zone.try_charge_object(k, pages) is not None:
            m.madvise(mmap.MADV_REMOVE, resident * PAGE_SIZE, pages * PAGE_SIZE)
            return 0
        return pages

    # -- taking pages away ----------------------------------------------------------
    def shrink(self, k: int, pages: int, tasks) -> int:
        """Free the last ``pages`` pages of object ``k`` (reclaim; truncate): its mappers
        map no more than what is left, the charge drops, the pages are punched out.
        Returns the pages freed."""
        resident = self.zone.object_charged(k)
        pages = min(pages, resident)
        if pages <= 0:
            return 0
        left = resident - pages
        for ti, vi in self.mappers[k]:
            t = tasks[ti]
            if t.mm is not None:
                t.mm.shrink_mapped(vi, left)
        self.zone.uncharge_object(k, pages)
        self.maps[k].madvise(mmap.MADV_REMOVE, left * PAGE_SIZE, pages * PAGE_SIZE)
        return pages

    def free(self, k: int, tasks) -> int:
        """All of object ``k``'s pages go (truncate, or the object is gone)."""
        with self.zone.lock():
            self.zone.set_object_field(k, "dirty", 0)
        return self.shrink(k, self.zone.object_charged(k), tasks)

    def unlink(self, k: int) -> None:
        with self.zone.lock():
            self.zone.set_object_field(k, "flags", self.zone.object_field(k, "flags") | OBJ_UNLINKED)

    def unlinked(self, k: int) -> bool:
        return bool(self.zone.object_field(k, "flags") & OBJ_UNLINKED)

    def mapped_by_live(self, k: int, tasks) -> bool:
        """Does an mm that is still there map it (a user of it has not exited, or crashed:
        its mm stays)?"""
        return any(_mm_lives(tasks[ti]) for ti, _ in self.mappers[k])

    def release_if_unused(self, k: int, tasks) -> int:
        """An anonymous shmem object whose mapper is gone, or a named one unlinked with
        no mapper left, is freed (the last fput). Returns the pages freed (0: it stays)."""
        spec = self.scenario.objects[k]
        if spec.kind != "shmem" or self.zone.object_field(k, "flags") & OBJ_FREED:
            return 0
        if (spec.name and not self.unlinked(k)) or self.mapped_by_live(k, tasks):
            return 0
        freed = self.free(k, tasks)
        with self.zone.lock():
            self.zone.set_object_field(k, "flags", self.zone.object_field(k, "flags") | OBJ_FREED)
        return freed

    # -- the accounting check ---------------------------------------------------------
    def real_pages(self, k: int) -> int:
        """Pages object ``k``'s segment really holds (tmpfs st_blocks)."""
        return os.fstat(self.fds[k]).st_blocks * 512 // PAGE_SIZE


def _mm_lives(t) -> bool:
    """The mm of task record ``t`` is still there: one of its users (the processes sharing
    it, ``t`` included) has not exited, or crashed (what a crashed task held stays)."""
    return any(not u.exited or u.crashed for u in (getattr(t, "users", None) or (t,)))
