"""The one owner of a run's objects in /dev/shm: it creates them all and removes them all.

A run has a zone, a start semaphore, a semaphore per named lock, a segment
per page-cache or shmem object, and per task an mm (whose header holds its mmap_sem's state), the mmap_sem's two
wait queues (readers', writers') and an oom_reply semaphore, plus the event FIFO
(``names`` says what each is called). :class:`RunResources` makes each one,
records its name *before* the call that creates it, and :meth:`remove`
closes and unlinks everything recorded, whatever was made or not, so that
a run that fails half-way through its set-up leaves nothing behind.
:meth:`remove` may be called any number of times; it never raises for an
object that is already gone.
"""

from __future__ import annotations

import os

import posix_ipc

from ..kernel.mm_types import PAGE_SIZE, MmLayout
from . import names
from .mm import Mm
from .rwsem import MmapSem
from .zone import Zone


class RunResources:
    def __init__(self, run_id: str):
        self.run_id = run_id
        self.zone: Zone | None = None
        self.start_sem: posix_ipc.Semaphore | None = None
        self.lock_sems: list[posix_ipc.Semaphore] = []
        self.mms: list[Mm] = []
        self.semaphores: list[posix_ipc.Semaphore] = []    # every task's mmap_sem queues and oom_reply
        self.fifo: str | None = None
        self.events_rfd = self.events_wfd = -1
        self._created: list[tuple[str, bool]] = []          # (posix name, is a semaphore)

    # -- creating --------------------------------------------------------------------
    def _semaphore(self, name: str, initial: int) -> posix_ipc.Semaphore:
        self._created.append((name, True))
        return posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600, initial_value=initial)

    def create_zone(self, facts: dict) -> Zone:
        """The zone, with the run's facts (see ``Zone``); the run's sign in /dev/shm."""
        self._created.append((names.zone(self.run_id), False))
        self.zone = Zone(self.run_id, create=facts)
        return self.zone

    def create_start_and_locks(self, lock_names: list[str]) -> None:
        """The start semaphore (released once per task at time 0) and one per named lock."""
        self.start_sem = self._semaphore(names.start(self.run_id), 0)
        for lname in lock_names:
            self.lock_sems.append(self._semaphore(names.lock(self.run_id, lname), 1))

    def create_object(self, index: int, pages: int) -> posix_ipc.SharedMemory:
        """Object ``index``'s segment, room for ``pages`` pages (at least one), empty."""
        self._created.append((names.obj(self.run_id, index), False))
        return posix_ipc.SharedMemory(names.obj(self.run_id, index), posix_ipc.O_CREX, mode=0o600,
                                      size=max(pages, 1) * PAGE_SIZE)

    def create_task(self, index: int, layout: MmLayout, label: str = "") -> tuple[Mm, MmapSem, posix_ipc.Semaphore]:
        """Task ``index``'s mm, its mmap_sem (free: both queues at 0) and its oom_reply (taken)."""
        self._created.append((names.mm(self.run_id, index), False))
        mm = Mm(names.mm(self.run_id, index), create=layout)
        self.mms.append(mm)
        readers = self._semaphore(names.mmap_sem_readers(self.run_id, index), 0)
        self.semaphores.append(readers)
        writers = self._semaphore(names.mmap_sem_writers(self.run_id, index), 0)
        self.semaphores.append(writers)
        mmap_sem = MmapSem(mm, readers, writers, label or f"the mmap_sem of task {index}")
        oom_reply = self._semaphore(names.oom_reply(self.run_id, index), 0)
        self.semaphores.append(oom_reply)
        return mm, mmap_sem, oom_reply

    def open_events(self) -> tuple[int, int]:
        """The event FIFO, opened to read (non-blocking) and to write (for the workers
        to inherit). A FIFO, not a pipe, so that ``oomemu inject`` can write to it too;
        the read end is opened O_RDWR so that it never sees EOF."""
        self.fifo = names.events(self.run_id)
        os.mkfifo(self.fifo, 0o600)
        self.events_rfd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
        self.events_wfd = os.open(self.fifo, os.O_WRONLY)
        return self.events_rfd, self.events_wfd

    def close_events_write_end(self) -> None:
        """Once every worker has its copy."""
        if self.events_wfd >= 0:
            os.close(self.events_wfd)
            self.events_wfd = -1

    # -- removing --------------------------------------------------------------------
    def remove(self) -> None:
        """Close every object and unlink every name created. Call once the workers are
        gone (they map the segments); calling it again does nothing."""
        for mm in self.mms:
            mm.close()
        self.mms.clear()
        for sem in [*self.semaphores, self.start_sem, *self.lock_sems]:
            if sem is not None:
                sem.close()
        self.semaphores.clear()
        self.lock_sems.clear()
        self.start_sem = None
        self.close_events_write_end()
        if self.events_rfd >= 0:
            os.close(self.events_rfd)
            self.events_rfd = -1
        if self.fifo is not None:
            try:
                os.unlink(self.fifo)
            except FileNotFoundError:
                pass
            self.fifo = None
        if self.zone is not None:
            self.zone.close()
            self.zone = None
        for name, is_sem in self._created:
            try:
                (posix_ipc.unlink_semaphore if is_sem else posix_ipc.unlink_shared_memory)(name)
            except posix_ipc.ExistentialError:
                pass
        self._created.clear()
