"""mmap_sem as the kernel has it: a read-write semaphore, here shared between processes.

The state lives in the mm's header page (``MM_HEADER``'s ``mm_users`` and
``sem_*`` fields): the readers' count and their pids (the first
``MMAP_SEM_READER_SLOTS``; the count stays exact beyond them), the writer's
pid, and a FIFO of waiters (pid and mode, in arrival order). It is read
and written only under the mm's *guard* (:meth:`Mm.guard`: ``flock`` on the
segment plus a thread lock), a few fields at a time: nobody waits or
touches pages under it. Waiting is on two POSIX semaphores per mm, both at
0: the readers' queue and the writers' queue.

The rules are the kernel's (kernel/locking/rwsem.c):

* ``down_read`` takes it at once if no writer holds it and nobody waits; a
  queued writer blocks new readers. ``down_write`` takes it at once if
  nobody holds it and nobody waits. Otherwise the caller joins the FIFO.
  The trylock forms never queue.
* On release, :meth:`_wake` hands the lock over as ``rwsem_mark_wake`` does:
  to the first waiter if it is a writer (``writer`` := its pid, one post of
  the writers' semaphore); else to *every* queued reader (``readers += n``,
  their pids into the slots, n posts of the readers' semaphore). A waiter
  that was handed the lock is marked ``GRANTED`` and stays in the FIFO until
  it wakes and takes itself out.
* A POSIX semaphore does not pick which of its waiters wakes: a waiter that
  wakes to find that the lock was handed to another waiter of its kind
  takes that one's grant and gives it its own place in the FIFO (they swap);
  if that other waiter is dead, its grant stands and the token was its own:
  the one that woke waits again. So the tokens on each semaphore always
  equal the GRANTED entries of its kind.

What happens when a process dies: whatever it held stays held (as the one
exclusive semaphore did before: kept on purpose), and a waiter that dies
keeps its place and, in its turn, the lock. ``oomemu ps`` marks them, and
the supervisor says so in the log when one of its tasks dies that way.

``mm_users`` is the kernel's: the owner's reference, plus one for each
process that holds or waits for *another* task's mmap_sem (a step with
``task``, ``oomemu inject``, a program outside oomemu: as /proc/PID/mem
readers take ``mmget``). The owner's exit (:meth:`mmput`) waits, in D
state, until they are gone before ``exit_mmap``; the last one to go posts
the writers' semaphore to wake it. Once ``mm_users`` is 0 the mm is gone: a
foreign down fails (``mmget_not_zero``). The reaper takes no reference (its
``mmgrab`` does not stop the exit).

docs/by-hand.md spells this protocol out for programs outside oomemu.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import posix_ipc

from . import names
from .mm import MM_HEADER, MMAP_SEM_READER_SLOTS, MMAP_SEM_WAITERS, WAITER_RECORD, Mm

READ, WRITE = 1, 2               # what a waiter wants (its mode)
GRANTED = 4                      # added to a waiter's mode when the lock is handed to it
MODE_NAMES = {READ: "read", WRITE: "write"}

_READERS_OFF = MM_HEADER.offset("sem_reader_pids")
_WAITERS_OFF = MM_HEADER.offset("sem_waiters")


class TooManyWaiters(RuntimeError):
    """A 33rd waiter: the mm's header has room for MMAP_SEM_WAITERS."""


class Interrupted(Exception):
    """A killable wait was interrupted by a signal (the caller is out of the queue)."""


def pid_alive(pid: int) -> bool:
    """kill(pid, 0): is there a process ``pid`` (of anyone's)? A zombie counts as alive."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class RwsemState:
    """A snapshot of an mmap_sem, as ``oomemu ps`` shows it."""
    mm_users: int
    writer: int                                  # pid, 0: none
    readers: int                                 # the exact count
    reader_pids: tuple[int, ...]                 # those known (the slots)
    queued: tuple[tuple[int, int], ...]          # (pid, READ or WRITE) waiting, in FIFO order
    granted: tuple[tuple[int, int], ...] = ()    # handed the lock, not yet awake (already holders)
    mmput: int = 0                               # the exiting owner waiting for mm_users to reach 0
    dead: frozenset[int] = field(default_factory=frozenset)   # pids above whose process is gone

    @property
    def free(self) -> bool:
        return not self.writer and not self.readers and not self.queued

    def holds(self, pid: int) -> str | None:
        """"read" or "write" if ``pid`` holds it (as far as the slots tell), else None."""
        if self.writer == pid:
            return "write"
        return "read" if pid in self.reader_pids else None

    def waits(self, pid: int) -> str | None:
        return next((MODE_NAMES[m] for p, m in self.queued if p == pid), None)

    def describe(self) -> str:
        """Compact, for ps: ``w:1234``, ``r:1234,1240``, ``+1w queued``; dead pids marked."""
        def who(pid: int) -> str:
            return f"{pid}(dead)" if pid in self.dead else str(pid)
        parts = []
        if self.writer:
            parts.append(f"w:{who(self.writer)}")
        if self.readers:
            known = [who(p) for p in self.reader_pids]
            more = self.readers - len(known)
            parts.append("r:" + ",".join(known + ([f"+{more}"] if more > 0 else [])))
        if self.queued:
            nw = sum(1 for _, m in self.queued if m == WRITE)
            nr = len(self.queued) - nw
            dead = sum(1 for p, _ in self.queued if p in self.dead)
            parts.append("+" + (f"{nw}w" if nw else "") + (f"{nr}r" if nr else "") + " queued"
                         + (f" ({dead} dead)" if dead else ""))
        return " ".join(parts) or "-"


class MmapSem:
    """One mm's mmap_sem, opened in this process. Every method takes the caller's pid
    (the reaper thread uses the supervisor's). ``foreign``: the caller holds or waits
    for another task's mmap_sem and so holds a reference to its mm (mm_users)."""

    def __init__(self, mm: Mm, readers: posix_ipc.Semaphore, writers: posix_ipc.Semaphore,
                 label: str = "mmap_sem"):
        self.mm = mm
        self.readers_sem, self.writers_sem = readers, writers
        self.label = label

    @classmethod
    def open(cls, run_id: str, index: int, mm: Mm, label: str | None = None) -> MmapSem:
        """Task ``index``'s mmap_sem: its two semaphores, opened by name, over ``mm``."""
        r = posix_ipc.Semaphore(names.mmap_sem_readers(run_id, index))
        try:
            w = posix_ipc.Semaphore(names.mmap_sem_writers(run_id, index))
        except BaseException:
            r.close()
            raise
        return cls(mm, r, w, label or f"the mmap_sem of task {index}")

    def close(self) -> None:
        self.readers_sem.close()
        self.writers_sem.close()

    # -- the fields (call under the guard) ------------------------------------------
    def _get(self, name: str) -> int:
        return MM_HEADER.get(self.mm.map, name)

    def _set(self, name: str, value: int) -> None:
        MM_HEADER.set(self.mm.map, name, value)

    def _waiter(self, k: int) -> tuple[int, int]:
        base = _WAITERS_OFF + k * WAITER_RECORD.size
        return WAITER_RECORD.get(self.mm.map, "pid", base), WAITER_RECORD.get(self.mm.map, "mode", base)

    def _put_waiter(self, k: int, pid: int, mode: int) -> None:
        base = _WAITERS_OFF + k * WAITER_RECORD.size
        WAITER_RECORD.set(self.mm.map, "pid", pid, base)
        WAITER_RECORD.set(self.mm.map, "mode", mode, base)

    def _waiters(self) -> list[tuple[int, int]]:
        n = min(self._get("sem_nr_waiters"), MMAP_SEM_WAITERS)
        return [self._waiter(k) for k in range(n)]

    def _remove_waiter(self, k: int) -> None:
        """Take entry k out of the FIFO: the later ones move up one."""
        entries = self._waiters()
        del entries[k]
        for j, (pid, mode) in enumerate(entries):
            self._put_waiter(j, pid, mode)
        self._put_waiter(len(entries), 0, 0)
        self._set("sem_nr_waiters", len(entries))

    def _slot(self, k: int) -> int:
        return int.from_bytes(self.mm.map[_READERS_OFF + 4 * k:_READERS_OFF + 4 * k + 4], "little", signed=True)

    def _put_slot(self, k: int, pid: int) -> None:
        self.mm.map[_READERS_OFF + 4 * k:_READERS_OFF + 4 * k + 4] = pid.to_bytes(4, "little", signed=True)

    def _replace_slot(self, old: int, new: int) -> bool:
        """Put ``new`` in the first slot that holds ``old`` (0: a free slot); False if none does."""
        for k in range(MMAP_SEM_READER_SLOTS):
            if self._slot(k) == old:
                self._put_slot(k, new)
                return True
        return False

    def _add_reader(self, pid: int) -> None:
        self._set("sem_readers", self._get("sem_readers") + 1)
        self._replace_slot(0, pid)            # beyond the slots, only the count knows

    def _waiting(self) -> bool:
        """Is anyone queued and not yet handed the lock?"""
        return any(not mode & GRANTED for _, mode in self._waiters())

    def _may_read(self) -> bool:
        return self._get("sem_writer") == 0 and not self._waiting()

    def _may_write(self) -> bool:
        return self._get("sem_writer") == 0 and self._get("sem_readers") == 0 and not self._waiting()

    def _mmget(self) -> bool:
        """mmget_not_zero(): False if the mm is gone (mm_users is 0)."""
        users = self._get("mm_users")
        if users <= 0:
            return False
        self._set("mm_users", users + 1)
        return True

    def _mmput(self) -> None:
        """Drop a foreign reference; the last one wakes the owner waiting in mmput."""
        users = self._get("mm_users") - 1
        self._set("mm_users", max(users, 0))
        if users <= 0 and self._get("sem_mmput"):
            self.writers_sem.release()

    def _wake(self) -> None:
        """rwsem_mark_wake(): hand the lock to the first waiter if it is a writer and the
        lock is free, or to every queued reader if the first is a reader and no writer holds it."""
        entries = self._waiters()
        head = next(((k, pid, mode) for k, (pid, mode) in enumerate(entries) if not mode & GRANTED), None)
        if head is None:
            return
        k, pid, mode = head
        if mode == WRITE:
            if self._get("sem_writer") == 0 and self._get("sem_readers") == 0:
                self._set("sem_writer", pid)
                self._put_waiter(k, pid, WRITE | GRANTED)
                self.writers_sem.release()
        elif self._get("sem_writer") == 0:
            for j, (p, m) in enumerate(entries):
                if m == READ:
                    self._add_reader(p)
                    self._put_waiter(j, p, READ | GRANTED)
                    self.readers_sem.release()

    def _enqueue(self, pid: int, mode: int) -> None:
        n = self._get("sem_nr_waiters")
        if n >= MMAP_SEM_WAITERS:
            raise TooManyWaiters(f"{self.label}: {MMAP_SEM_WAITERS} waiters are queued already, "
                                 f"the most the mm's header holds")
        self._put_waiter(n, pid, mode)
        self._set("sem_nr_waiters", n + 1)

    def _claim(self, pid: int, mode: int) -> bool:
        """After a wake-up on ``mode``'s semaphore: True if ``pid`` now holds the lock."""
        entries = self._waiters()
        mine = next((k for k, (p, m) in enumerate(entries) if p == pid and m & ~GRANTED == mode), None)
        if mine is None:
            return False                                     # not queued: a stray token
        if entries[mine][1] & GRANTED:
            self._remove_waiter(mine)
            return True
        others = [(k, p) for k, (p, m) in enumerate(entries) if m == mode | GRANTED]
        dead = next((k for k, p in others if not pid_alive(p)), None)
        if dead is not None:
            self._remove_waiter(dead)                        # its token: its grant stands, wait on
            return False
        if not others:
            return False
        k, other = others[0]                                 # swap places: take its grant
        self._put_waiter(mine, other, mode)
        self._put_waiter(k, pid, mode | GRANTED)
        self._remove_waiter(k)
        if mode == WRITE:
            self._set("sem_writer", pid)
        elif not self._replace_slot(other, pid):
            self._replace_slot(0, pid)
        self._wake()                # ``other``, back in the FIFO, may be let in at once (readers)
        return True

    # -- waiting -----------------------------------------------------------------------
    def _wait(self, pid: int, mode: int, on_wait: Callable[[bool], None] | None, killable: bool) -> bool:
        """Sleep on ``mode``'s semaphore until the lock is ours. Returns False if it is, True
        if a killable wait was interrupted: then the caller is out of the FIFO, or it was
        handed the lock meanwhile and holds it (it must let go at once: see :meth:`_down`)."""
        sem = self.readers_sem if mode == READ else self.writers_sem
        interrupted = False
        if on_wait is not None:
            on_wait(True)
        try:
            while True:
                try:
                    sem.acquire()
                except (posix_ipc.SignalError, KeyboardInterrupt):
                    if not killable:
                        continue                             # uninterruptible
                    interrupted = True
                    if self._cancel(pid, mode):
                        raise Interrupted from None
                    continue                                 # handed to us meanwhile: take it
                with self.mm.guard():
                    if self._claim(pid, mode):
                        return interrupted
        finally:
            if on_wait is not None:
                on_wait(False)

    def _cancel(self, pid: int, mode: int) -> bool:
        """A killable wait ends: leave the FIFO. False if the lock was handed to us
        meanwhile (then the token is ours: take it, and the caller lets go at once)."""
        with self.mm.guard():
            entries = self._waiters()
            k = next((k for k, (p, m) in enumerate(entries) if p == pid and m & ~GRANTED == mode), None)
            if k is None or entries[k][1] & GRANTED:
                return False
            self._remove_waiter(k)
            self._wake()                   # a writer that leaves the head may let readers in
            return True

    def _down(self, pid: int, mode: int, foreign: bool, on_wait, killable: bool) -> bool:
        with self.mm.guard():
            if foreign and not self._mmget():
                return False
            if self._may_read() if mode == READ else self._may_write():
                if mode == READ:
                    self._add_reader(pid)
                else:
                    self._set("sem_writer", pid)
                return True
            try:
                self._enqueue(pid, mode)
            except TooManyWaiters:
                if foreign:
                    self._mmput()
                raise
        try:
            interrupted = self._wait(pid, mode, on_wait, killable)
        except Interrupted:
            if foreign:
                with self.mm.guard():
                    self._mmput()
            raise
        if interrupted:                            # it came with the signal: let go at once
            (self.up_read if mode == READ else self.up_write)(pid, foreign=foreign)
            raise Interrupted
        return True

    # -- the API -------------------------------------------------------------------------
    def down_read(self, pid: int, *, foreign: bool = False, on_wait: Callable[[bool], None] | None = None,
                  killable: bool = False) -> bool:
        """Take it for read, waiting in the FIFO if need be (``on_wait(True)`` before the
        wait, ``on_wait(False)`` after). Uninterruptible unless ``killable`` (then a signal
        ends the wait: Interrupted). Returns False only if ``foreign`` and the mm is gone."""
        return self._down(pid, READ, foreign, on_wait, killable)

    def down_write(self, pid: int, *, foreign: bool = False, on_wait: Callable[[bool], None] | None = None,
                   killable: bool = False) -> bool:
        """Take it for write; as :meth:`down_read`."""
        return self._down(pid, WRITE, foreign, on_wait, killable)

    def down_read_trylock(self, pid: int, *, foreign: bool = False) -> bool:
        """Take it for read if that needs no wait: no writer holds it or waits for it."""
        with self.mm.guard():
            if not self._may_read() or (foreign and not self._mmget()):
                return False
            self._add_reader(pid)
            return True

    def down_write_trylock(self, pid: int, *, foreign: bool = False) -> bool:
        with self.mm.guard():
            if not self._may_write() or (foreign and not self._mmget()):
                return False
            self._set("sem_writer", pid)
            return True

    def up_read(self, pid: int, *, foreign: bool = False) -> None:
        with self.mm.guard():
            self._set("sem_readers", max(self._get("sem_readers") - 1, 0))
            self._replace_slot(pid, 0)
            if self._get("sem_readers") == 0:
                self._wake()
            if foreign:
                self._mmput()

    def up_write(self, pid: int, *, foreign: bool = False) -> None:
        with self.mm.guard():
            if self._get("sem_writer") == pid:
                self._set("sem_writer", 0)
                self._wake()
            if foreign:
                self._mmput()

    def up(self, pid: int, mode: str, *, foreign: bool = False) -> None:
        (self.up_read if mode == "read" else self.up_write)(pid, foreign=foreign)

    def down(self, pid: int, mode: str, **kw) -> bool:
        return (self.down_read if mode == "read" else self.down_write)(pid, **kw)

    def mmget_not_zero(self) -> bool:
        """A reference to the mm, as a /proc/PID reader takes it (False: the mm is gone).
        Drop it with :meth:`mmput_ref`."""
        with self.mm.guard():
            return self._mmget()

    def mmput_ref(self) -> None:
        """Drop a reference taken by :meth:`mmget_not_zero`; the last one wakes the exit
        waiting in :meth:`mmput`."""
        with self.mm.guard():
            self._mmput()

    def mmput(self, pid: int, on_wait: Callable[[bool], None] | None = None) -> int | None:
        """A user's mmput() at exit (exit_mm): drop its reference. None if other processes
        still use the mm as theirs (CLONE_VM, ``mm_tasks``): the last of them tears it
        down. The last waits (uninterruptibly) until every foreign holder and waiter is
        gone, and returns how many there were when it began (0: no wait). Once it
        returns, mm_users is 0: the mm is gone: exit_mmap is the caller's."""
        with self.mm.guard():
            users = self._get("mm_users") - 1
            self._set("mm_users", max(users, 0))
            tasks = self._get("mm_tasks") - 1
            self._set("mm_tasks", max(tasks, 0))
            if tasks > 0:
                return None
            if users <= 0:
                return 0
            self._set("sem_mmput", pid)
        if on_wait is not None:
            on_wait(True)
        try:
            while True:
                try:
                    self.writers_sem.acquire()
                except posix_ipc.SignalError:
                    continue
                with self.mm.guard():
                    if self._get("mm_users") <= 0:
                        self._set("sem_mmput", 0)
                        return users
        finally:
            if on_wait is not None:
                on_wait(False)

    def state(self, check_alive: bool = True) -> RwsemState:
        """A snapshot, read under the guard (``dead``: pids whose process is gone)."""
        with self.mm.guard():
            return self.snapshot(check_alive)

    def snapshot(self, check_alive: bool = True) -> RwsemState:
        """The same without the guard: for a private copy of the header (``ps``)."""
        entries = self._waiters()
        slots = tuple(p for p in (self._slot(k) for k in range(MMAP_SEM_READER_SLOTS)) if p > 0)
        queued = tuple((p, m) for p, m in entries if not m & GRANTED and m in (READ, WRITE))
        granted = tuple((p, m & ~GRANTED) for p, m in entries if m & GRANTED)
        writer = self._get("sem_writer")
        pids = {writer, *slots, *(p for p, _ in entries)} - {0}
        dead = frozenset(p for p in pids if not pid_alive(p)) if check_alive else frozenset()
        return RwsemState(self._get("mm_users"), writer, self._get("sem_readers"), slots, queued, granted,
                          self._get("sem_mmput"), dead)
