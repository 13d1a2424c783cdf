"""mmap_sem as a real read-write semaphore between processes (emulator.runtime.rwsem).

Each locker is a forked process of its own (a pid of its own, its own fd on
the mm, so the flock guard really excludes), driven over a pipe: the rules
checked are the kernel's (kernel/locking/rwsem.c): readers share, a queued
writer blocks new readers and the reaper's trylock, the hand-off on release
(a writer at the head, else every queued reader), a dead holder keeps what
it held and a dead waiter its place, and mm_users keeps an exiting mm's
exit_mmap waiting for the other tasks that hold or wait for its mmap_sem.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import posix_ipc
import pytest

from emulator.kernel.mm_types import PAGES_PER_MB, MmLayout
from emulator.runtime import names
from emulator.runtime.mm import MMAP_SEM_WAITERS, Mm
from emulator.runtime.rwsem import READ, WRITE, MmapSem, TooManyWaiters
from tests.helpers import tie_to_parent, wait_for

pytestmark = pytest.mark.timeout(30)
_fork = multiprocessing.get_context("fork")


def _locker(conn, run_id: str, parent: int) -> None:
    if not tie_to_parent(parent, signal.SIGKILL):
        os._exit(1)
    mm = Mm(names.mm(run_id, 0))
    sem = MmapSem.open(run_id, 0, mm)
    me = os.getpid()
    while True:
        op, mode, foreign = conn.recv()
        if op == "down":
            conn.send(("got", sem.down(me, mode, foreign=foreign)))
        elif op == "trydown":
            try_ = sem.down_read_trylock if mode == "read" else sem.down_write_trylock
            conn.send(("got", try_(me, foreign=foreign)))
        elif op == "up":
            sem.up(me, mode, foreign=foreign)
            conn.send(("upped", True))
        else:
            os._exit(0)


class Locker:
    """A process that takes and lets go of the mm's mmap_sem when told."""

    def __init__(self, run_id: str):
        self.conn, child = _fork.Pipe()
        self.proc = _fork.Process(target=_locker, args=(child, run_id, os.getpid()), daemon=True)
        self.proc.start()
        self.pid = self.proc.pid

    def ask(self, op: str, mode: str = "read", foreign: bool = False) -> None:
        self.conn.send((op, mode, foreign))

    def reply(self, timeout: float = 10.0):
        """The locker's answer, or None if it has none within ``timeout`` (it is waiting)."""
        return self.conn.recv()[1] if self.conn.poll(timeout) else None

    def down(self, mode: str, foreign: bool = False, wait: bool = True):
        self.ask("down", mode, foreign)
        return self.reply() if wait else None

    def up(self, mode: str, foreign: bool = False) -> None:
        self.ask("up", mode, foreign)
        assert self.reply() is True

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.join(10)

    def close(self) -> None:
        if self.proc.is_alive():
            self.kill()


@pytest.fixture
def rw():
    """An mm with its mmap_sem (both queues at 0), and lockers that go with the test."""
    run_id = names.new_run_id()
    made = [names.mm(run_id, 0)]
    mm = Mm(made[0], create=MmLayout((("anon", 0, 4 * PAGES_PER_MB),)))
    sems = []
    for name in (names.mmap_sem_readers(run_id, 0), names.mmap_sem_writers(run_id, 0)):
        sems.append(posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600, initial_value=0))
    lockers: list[Locker] = []

    class Rw:
        sem = MmapSem(mm, *sems)

        @staticmethod
        def locker() -> Locker:
            lockers.append(Locker(run_id))
            return lockers[-1]

        @staticmethod
        def state():
            return Rw.sem.state()

    Rw.mm, Rw.run_id = mm, run_id
    try:
        yield Rw
    finally:
        for lk in lockers:
            lk.close()
        mm.close()
        posix_ipc.unlink_shared_memory(made[0])
        for s in sems:
            s.unlink()
            s.close()


def queued(rw) -> list[tuple[int, int]]:
    return list(rw.state().queued)


def test_readers_share_it_and_a_queued_writer_blocks_new_readers_and_the_trylock(rw):
    me = os.getpid()
    a, b, w = rw.locker(), rw.locker(), rw.locker()
    assert a.down("read") is True and b.down("read") is True
    assert rw.sem.down_read_trylock(me)               # the reaper's trylock: readers do not stop it
    rw.sem.up_read(me)
    assert w.down("write", wait=False) is None and w.reply(0.3) is None     # waits for the readers
    assert wait_for(lambda: queued(rw) == [(w.pid, WRITE)], 5)
    assert not rw.sem.down_read_trylock(me)           # a queued writer blocks new readers
    late = rw.locker()
    late.ask("down", "read")
    assert late.reply(0.3) is None                    # and so it queues behind the writer
    st = rw.state()
    assert (st.readers, set(st.reader_pids), st.writer) == (2, {a.pid, b.pid}, 0)
    assert st.describe() == f"r:{a.pid},{b.pid} +1w1r queued"
    a.up("read")
    assert w.reply(0.3) is None                       # one reader still holds it
    b.up("read")
    assert w.reply() is True                          # handed over to the writer
    assert late.reply(0.3) is None                    # the late reader waits for the writer
    assert rw.state().writer == w.pid and queued(rw) == [(late.pid, READ)]
    w.up("write")
    assert late.reply() is True
    assert rw.state().describe() == f"r:{late.pid}"


def test_a_released_write_lock_goes_to_the_first_writer_or_to_every_queued_reader(rw):
    me = os.getpid()
    assert rw.sem.down_write_trylock(me)
    r1, r2, w2, r3 = rw.locker(), rw.locker(), rw.locker(), rw.locker()
    for lk, mode in ((r1, "read"), (r2, "read"), (w2, "write"), (r3, "read")):
        lk.ask("down", mode)
        assert wait_for(lambda: lk.pid in [p for p, _ in queued(rw)], 5)
    assert [m for _, m in queued(rw)] == [READ, READ, WRITE, READ]
    rw.sem.up_write(me)
    # rwsem_mark_wake: the head is a reader, so every queued reader gets it, even r3 behind w2
    assert r1.reply() is True and r2.reply() is True and r3.reply() is True
    assert w2.reply(0.3) is None
    st = rw.state()
    assert st.readers == 3 and st.queued == ((w2.pid, WRITE),)
    for lk in (r1, r2, r3):
        lk.up("read")
    assert w2.reply() is True and rw.state().writer == w2.pid


def test_two_queued_writers_get_it_one_at_a_time(rw):
    me = os.getpid()
    assert rw.sem.down_write_trylock(me)
    w1, w2 = rw.locker(), rw.locker()
    for lk in (w1, w2):
        lk.ask("down", "write")
        assert wait_for(lambda: lk.pid in [p for p, _ in queued(rw)], 5)
    rw.sem.up_write(me)
    # Whichever wakes holds it (a POSIX semaphore does not pick: they may swap places);
    # the other stays queued, and gets it when the first lets go.
    first = wait_for(lambda: next((lk for lk in (w1, w2) if lk.conn.poll()), None), 10)
    assert first is not None and first.reply() is True
    second = w2 if first is w1 else w1
    assert second.reply(0.3) is None
    assert rw.state().writer == first.pid and queued(rw) == [(second.pid, WRITE)]
    first.up("write")
    assert second.reply() is True and rw.state().writer == second.pid


def test_a_dead_holder_keeps_it_and_a_dead_waiter_keeps_its_place(rw):
    holder, dead_waiter, waiter = rw.locker(), rw.locker(), rw.locker()
    assert holder.down("read") is True
    dead_waiter.ask("down", "write")
    assert wait_for(lambda: queued(rw) == [(dead_waiter.pid, WRITE)], 5)
    waiter.ask("down", "write")
    assert wait_for(lambda: len(queued(rw)) == 2, 5)
    dead_waiter.kill()
    st = rw.state()
    assert st.dead == {dead_waiter.pid}
    assert st.describe() == f"r:{holder.pid} +2w queued (1 dead)"
    holder.up("read")
    # the dead waiter, first in the queue, is handed the lock and keeps it; the live one
    # woke on the dead one's token, found it was not its own, and waits on
    assert wait_for(lambda: rw.state().writer == dead_waiter.pid, 5)
    assert waiter.reply(0.5) is None
    st = rw.state()
    assert st.queued == ((waiter.pid, WRITE),) and st.describe() == (
        f"w:{dead_waiter.pid}(dead) +1w queued")
    holder.kill()
    assert rw.state().describe() == f"w:{dead_waiter.pid}(dead) +1w queued"


def test_a_33rd_waiter_is_an_error_with_a_clear_message(rw):
    assert rw.sem.down_write_trylock(os.getpid())
    with rw.mm.guard():                           # fill the queue by hand (no 32 processes)
        for k in range(MMAP_SEM_WAITERS):
            rw.sem._enqueue(4_000_000 + k, READ)
    with pytest.raises(TooManyWaiters, match="32 waiters are queued already"):
        rw.sem.down_read(os.getpid())


def test_mmput_waits_for_every_foreign_holder_and_waiter_then_the_mm_is_gone(rw):
    me = os.getpid()
    reader, writer = rw.locker(), rw.locker()
    assert reader.down("read", foreign=True) is True
    writer.ask("down", "write", True)
    assert wait_for(lambda: len(queued(rw)) == 1, 5)
    assert rw.state().mm_users == 3                   # the owner's, the reader's, the writer's
    done = threading.Event()
    waits = []
    t = threading.Thread(target=lambda: (rw.sem.mmput(me, waits.append), done.set()), daemon=True)
    t.start()
    assert not done.wait(0.3) and waits == [True]     # the exit waits (D state)
    reader.up("read", foreign=True)
    assert writer.reply() is True                     # the queued writer still gets it
    assert not done.wait(0.3)
    assert rw.sem.down_read_trylock(me) is False      # meanwhile the reaper's trylock fails
    writer.up("write", foreign=True)
    assert done.wait(5) and waits == [True, False]    # woken by the last one to let go
    assert rw.state().mm_users == 0
    assert rw.locker().down("read", foreign=True) is False     # mmget_not_zero: the mm is gone
    assert rw.sem.down_read_trylock(me)               # the reaper (mmgrab) still may


def test_the_owner_exits_at_once_when_nobody_else_holds_a_reference(rw):
    assert rw.sem.mmput(os.getpid()) == 0 and rw.state().mm_users == 0


def test_a_killable_wait_interrupted_by_a_signal_leaves_the_queue(rw):
    """What 'oomemu inject hold-mmap-sem' does on Ctrl-C while it waits."""
    me = os.getpid()
    assert rw.sem.down_write_trylock(me)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                      # the child waits, killable, for read
        try:
            tie_to_parent(me, signal.SIGKILL)
            signal.signal(signal.SIGINT, lambda *_: None)
            mm = Mm(names.mm(rw.run_id, 0))
            sem = MmapSem.open(rw.run_id, 0, mm)
            try:
                sem.down_read(os.getpid(), foreign=True, killable=True)
                os.write(w, b"held")
            except Exception as e:
                os.write(w, type(e).__name__.encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert wait_for(lambda: queued(rw) == [(pid, READ)], 5)
        assert rw.state().mm_users == 2
        os.kill(pid, signal.SIGINT)
        assert os.read(r, 64) == b"Interrupted"
        st = rw.state()
        assert (st.queued, st.mm_users, st.writer) == ((), 1, me)
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def test_zaps_at_once_claim_each_page_once(rw):
    """The reaper and exit_mmap zap the same VMA under read locks: one claims it all."""
    mm2 = Mm(rw.mm.name)                              # a second opener: its own fd, its own guard
    try:
        assert rw.mm.fault_in(0, 2 * PAGES_PER_MB)
        uncharged = []
        barrier = threading.Barrier(2)

        def zap(mm):
            barrier.wait()
            uncharged.append(mm.zap_vma(mm.vmas()[0], uncharged.append))

        threads = [threading.Thread(target=zap, args=(m,)) for m in (rw.mm, mm2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(uncharged) == [0, 2 * PAGES_PER_MB, 2 * PAGES_PER_MB]   # returned and uncharged once
        assert rw.mm.resident_pages() == 0 and rw.mm.real_pages() == 0
    finally:
        mm2.close()
