#!/usr/bin/env python3
"""Take a task's mmap_sem in a live oomemu run from outside oomemu, hold it, let go.

    python3 examples/hold_mmap_sem.py RUN INDEX read|write SECONDS

RUN is the run's id (``oomemu runs``), INDEX the task's index (its row in
``oomemu ps``, from 0). Set OOMEMU_PREFIX if the run uses another prefix.
Needs only posix_ipc (``pip install posix_ipc``) and the standard library:
it follows the protocol in docs/by-hand.md ("Taking mmap_sem from another
program") and imports nothing of oomemu. It holds a reference to the task's
mm while it holds or waits (as a /proc/PID/mem reader does), so the task's
exit_mmap waits for it. The wait is uninterruptible (as down_read and
down_write are): a process killed while it waits keeps its place.
"""

import fcntl
import mmap
import os
import signal
import struct
import sys
import time

import posix_ipc

# The mm header's fields (docs/by-hand.md; a test checks them against oomemu's table)
MM_USERS = 8          # int32: the owner's reference + one per other holder or waiter; 0: gone
SEM_WRITER = 12        # int32: pid holding it for write, 0: none
SEM_READERS = 16       # int32: how many hold it for read
SEM_NR_WAITERS = 20    # int32: entries in the waiters' FIFO
SEM_MMPUT = 24         # int32: pid of the exiting owner waiting for mm_users to reach 0
SEM_READER_PIDS = 28   # 16 x int32: pids of readers, 0: a free slot
READER_SLOTS = 16
SEM_WAITERS = 92       # 32 x {int32 pid, uint32 mode}, in arrival order
MAX_WAITERS = 32
READ, WRITE, GRANTED = 1, 2, 4


class Rwsem:
    def __init__(self, prefix, run, index):
        self.fd = os.open(f"/dev/shm/{prefix}.{run}.mm.{index}", os.O_RDWR)
        self.hdr = mmap.mmap(self.fd, 4096)
        if self.hdr[:4] != b"OOMM":
            sys.exit("not an oomemu mm")
        self.sem = {READ: posix_ipc.Semaphore(f"/{prefix}.{run}.mmap_sem_readers.{index}"),
                    WRITE: posix_ipc.Semaphore(f"/{prefix}.{run}.mmap_sem_writers.{index}")}

    # the guard: every read and write of the fields below is made holding it
    def lock(self):
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def unlock(self):
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def get(self, off):
        return struct.unpack_from("=i", self.hdr, off)[0]

    def put(self, off, value):
        struct.pack_into("=i", self.hdr, off, value)

    def waiters(self):
        return [struct.unpack_from("=iI", self.hdr, SEM_WAITERS + 8 * k) for k in range(self.get(SEM_NR_WAITERS))]

    def set_waiters(self, entries):
        for k in range(MAX_WAITERS):
            struct.pack_into("=iI", self.hdr, SEM_WAITERS + 8 * k, *(entries[k] if k < len(entries) else (0, 0)))
        self.put(SEM_NR_WAITERS, len(entries))

    def replace_slot(self, old, new):
        for k in range(READER_SLOTS):
            if self.get(SEM_READER_PIDS + 4 * k) == old:
                self.put(SEM_READER_PIDS + 4 * k, new)
                return True
        return False

    def add_reader(self, pid):
        self.put(SEM_READERS, self.get(SEM_READERS) + 1)
        self.replace_slot(0, pid)

    def wake(self):
        """Hand the lock over: to the first waiting writer if the lock is free, or to
        every waiting reader if the first waiting entry is a reader and no writer holds it."""
        entries = self.waiters()
        head = next((k for k, (_, m) in enumerate(entries) if not m & GRANTED), None)
        if head is None:
            return
        pid, mode = entries[head]
        if mode == WRITE:
            if self.get(SEM_WRITER) == 0 and self.get(SEM_READERS) == 0:
                self.put(SEM_WRITER, pid)
                entries[head] = (pid, WRITE | GRANTED)
                self.sem[WRITE].release()
        elif self.get(SEM_WRITER) == 0:
            for k, (p, m) in enumerate(entries):
                if m == READ:
                    self.add_reader(p)
                    entries[k] = (p, READ | GRANTED)
                    self.sem[READ].release()
        self.set_waiters(entries)

    def claim(self, me, mode):
        """After a wake-up: True if the lock is now ours."""
        entries = self.waiters()
        mine = next(k for k, (p, m) in enumerate(entries) if p == me and m & ~GRANTED == mode)
        if entries[mine][1] & GRANTED:
            del entries[mine]
            self.set_waiters(entries)
            return True
        others = [k for k, (_, m) in enumerate(entries) if m == mode | GRANTED]
        dead = [k for k in others if not alive(entries[k][0])]
        if dead:                                  # a dead waiter's token: its grant stands
            del entries[dead[0]]
            self.set_waiters(entries)
            return False
        if not others:
            return False
        k = others[0]                             # swap places with the one it was meant for
        other = entries[k][0]
        entries[mine] = (other, mode)
        del entries[k]
        self.set_waiters(entries)
        if mode == WRITE:
            self.put(SEM_WRITER, me)
        elif not self.replace_slot(other, me):
            self.replace_slot(0, me)
        self.wake()
        return True

    def down(self, me, mode):
        """down_read/down_write with a reference to the mm; False if the mm is gone."""
        self.lock()
        try:
            if self.get(MM_USERS) <= 0:
                return False
            self.put(MM_USERS, self.get(MM_USERS) + 1)            # mmget_not_zero
            waiting = any(not m & GRANTED for _, m in self.waiters())
            free = self.get(SEM_WRITER) == 0 and (mode == READ or self.get(SEM_READERS) == 0)
            if free and not waiting:
                self.add_reader(me) if mode == READ else self.put(SEM_WRITER, me)
                return True
            entries = self.waiters()
            if len(entries) >= MAX_WAITERS:
                self.put(MM_USERS, self.get(MM_USERS) - 1)
                sys.exit(f"{MAX_WAITERS} waiters are queued already")
            self.set_waiters(entries + [(me, mode)])
        finally:
            self.unlock()
        print(f"waiting for it for {'read' if mode == READ else 'write'} (pid {me})", flush=True)
        while True:
            try:
                self.sem[mode].acquire()
            except posix_ipc.SignalError:
                continue
            self.lock()
            try:
                if self.claim(me, mode):
                    return True
            finally:
                self.unlock()

    def up(self, me, mode):
        self.lock()
        try:
            if mode == READ:
                self.put(SEM_READERS, self.get(SEM_READERS) - 1)
                self.replace_slot(me, 0)
                if self.get(SEM_READERS) == 0:
                    self.wake()
            else:
                self.put(SEM_WRITER, 0)
                self.wake()
            users = self.get(MM_USERS) - 1                       # mmput
            self.put(MM_USERS, users)
            if users == 0 and self.get(SEM_MMPUT):
                self.sem[WRITE].release()                        # wake the exiting owner
        finally:
            self.unlock()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def main():
    if len(sys.argv) != 5 or sys.argv[3] not in ("read", "write"):
        sys.exit(__doc__.strip().splitlines()[2])
    run, index, mode, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    rw = Rwsem(os.environ.get("OOMEMU_PREFIX", "oomemu"), run, index)
    want = READ if mode == "read" else WRITE
    me = os.getpid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # the wait is uninterruptible
    if not rw.down(me, want):
        sys.exit("the task's mm is gone")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"holding it for {mode} (pid {me}) at {time.monotonic()}", flush=True)
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        pass
    finally:
        rw.up(me, want)
        print(f"released at {time.monotonic()}", flush=True)


if __name__ == "__main__":
    main()
