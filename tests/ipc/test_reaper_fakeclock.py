"""The real oom_reaper executor, stepped under a FakeClock against real mms.

``OomReaper.step(now)`` is the code a run's reaper thread calls: here a test
calls it instead, at the times it says to come back, so a policy's timing
(v4.17's ten tries and give-up, timeout's 10 s deadline, handover's
hand-over, v6.6's OOM_REAPER_DELAY) is checked exactly, in no real time,
against real segments, a real zone and a real mmap_sem (an rwsem: readers do
not stop the reaper's down_read_trylock, a writer holding or queued does).
"""

from __future__ import annotations

import os
import threading

import posix_ipc
import psutil
import pytest

from emulator.kernel.clock import FakeClock
from emulator.kernel.mm_types import (MMF_OOM_HANDOVER, MMF_OOM_SKIP, MMF_UNSTABLE, PAGES_PER_MB, VM_LOCKED,
                                      MmLayout, TaskState)
from emulator.policies import get_policy
from emulator.result import VictimRecord
from emulator.runtime import names
from emulator.runtime.mm import Mm
from emulator.runtime.reaper import OomReaper
from emulator.runtime.rwsem import WRITE, MmapSem
from emulator.runtime.zone import Zone

pytestmark = pytest.mark.timeout(30)


class Victim:
    """What the reaper needs of the supervisor's task record."""

    def __init__(self, run_id: str, index: int, name: str, mb: float, mlocked: bool):
        self.run_id, self.index, self.name, self.pid = run_id, index, name, 40000 + index
        pages = round(mb * PAGES_PER_MB)
        self.mm = Mm(names.mm(run_id, index), create=MmLayout((("anon", VM_LOCKED if mlocked else 0, pages),)))
        self.mm.state = TaskState.TASK_RUNNING
        self._sems = [posix_ipc.Semaphore(n, posix_ipc.O_CREX, mode=0o600, initial_value=0)
                      for n in (names.mmap_sem_readers(run_id, index), names.mmap_sem_writers(run_id, index))]
        self.mmap_sem = MmapSem(self.mm, *self._sems)
        self.victim = VictimRecord(name, self.pid, 0.0)
        self.has_mm = self.oom_mm_live = True
        self.mm_index = index
        self.pages = pages

    def close(self):
        self.mm.close()
        posix_ipc.unlink_shared_memory(self.mm.name)
        for sem in self._sems:
            sem.unlink()
            sem.close()


HOLDER = 4_000_001          # the pid of "someone" who holds a victim's mmap_sem (no wait: it is free)


class Bench:
    """A zone, victims with their memory charged and faulted in, and a reaper under a FakeClock."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.clock = FakeClock()
        self.zone = Zone(run_id, create={"supervisor_pid": os.getpid(), "supervisor_ctime":
                                         psutil.Process().create_time(), "speed": 1.0,
                                         "total_pages": 64 * PAGES_PER_MB, "scenario": "bench",
                                         "policy": "-", "tasks": [0, 0]})
        self.victims: list[Victim] = []
        self.log: list[tuple[float, str]] = []
        self.skips: list[tuple[float, str, str]] = []       # (t, victim, by)

    def victim(self, name: str, mb: float = 4, mlocked: bool = False) -> Victim:
        v = Victim(self.run_id, len(self.victims), name, mb, mlocked)
        self.victims.append(v)
        assert self.zone.try_charge(v.index, v.pages) is None
        v.mm.fault_in(0, v.pages)
        return v

    def reaper(self, policy: str, **overrides) -> OomReaper:
        return OomReaper(get_policy(policy, overrides), self.clock, self.zone, threading.Lock(),
                         lambda line: self.log.append((self.clock.now(), line)),
                         lambda t, by: self.skips.append((self.clock.now(), t.name, by)))

    def run_until(self, reaper: OomReaper, horizon: float, at: dict | None = None) -> None:
        """Step the reaper as its thread would, jumping the clock to each time it names;
        ``at``: {time: callable} things that happen to the victims meanwhile."""
        todo = sorted((at or {}).items())
        while True:
            while todo and todo[0][0] <= self.clock.now():
                todo.pop(0)[1]()
            back = reaper.step(self.clock.now())
            if back is not None and back <= self.clock.now():
                continue
            nexts = [x for x in (back, todo[0][0] if todo else None) if x is not None]
            if not nexts or min(nexts) > horizon:
                self.clock.advance_to(horizon)
                return
            self.clock.advance_to(min(nexts))

    def close(self):
        for v in self.victims:
            v.close()
        self.zone.close()
        posix_ipc.unlink_shared_memory(names.zone(self.run_id))


@pytest.fixture
def bench():
    b = Bench(f"{os.getpid()}-{os.urandom(2).hex()}")
    try:
        yield b
    finally:
        b.close()


def reaped_lines(bench):
    return [(round(t, 6), line) for t, line in bench.log]


def test_v417_tries_ten_times_100ms_apart_then_gives_up(bench):
    a = bench.victim("a")
    reaper = bench.reaper("v4.17")
    a.mmap_sem.down_write(HOLDER)                # someone holds the victim's mmap_sem throughout
    try:
        reaper.wake_oom_reaper(a)
        bench.run_until(reaper, 30)
    finally:
        a.mmap_sem.up_write(HOLDER)
    assert reaped_lines(bench) == [(pytest.approx(1.0), "oom_reaper: unable to reap pid:40000 (a)")]
    assert bench.skips == [(pytest.approx(1.0), "a", "oom_reaper")]
    assert a.mm.test_bit(MMF_OOM_SKIP) and a.victim.unable_to_reap
    assert a.mm.resident_pages() == a.pages == bench.zone.charged_by(0)     # nothing freed
    assert reaper.pending() == 0


def test_v417_reaps_anonymous_memory_and_sets_mmf_oom_skip_at_once(bench):
    a = bench.victim("a", mb=4)
    reaper = bench.reaper("v4.17")
    reaper.wake_oom_reaper(a)
    bench.run_until(reaper, 30)
    assert reaped_lines(bench) == [(0.0, "oom_reaper: reaped process 40000 (a), now anon-rss:0kB, "
                                         "file-rss:0kB, shmem-rss:0kB")]
    assert bench.skips == [(0.0, "a", "oom_reaper")]
    assert a.mm.test_bit(MMF_UNSTABLE) and a.mm.test_bit(MMF_OOM_SKIP)
    assert a.mm.resident_pages() == 0 == bench.zone.charged_by(0) and a.mm.real_pages() == 0
    assert a.victim.reaped_kb == 4096


def test_timeout_retries_every_pass_until_the_mms_deadline(bench):
    a = bench.victim("a", mlocked=True)
    reaper = bench.reaper("timeout")
    reaper.wake_oom_reaper(a)
    assert a.mm.reap_deadline == pytest.approx(10.0)     # published for 'oomemu ps' (t0 0, speed 1)
    bench.run_until(reaper, 60)
    # the first pass "reaps" (nothing reapable: MEMORY_LEFT) and the victim waits for its exit;
    # nobody exits, so the deadline ends it, exactly at 10 s
    assert reaped_lines(bench)[-1] == (pytest.approx(10.0), "oom_reaper: unable to reap pid:40000 (a)")
    assert bench.skips == [(pytest.approx(10.0), "a", "oom_reaper")]
    assert a.mm.resident_pages() == a.pages                 # mlocked: the reaper frees none of it


def test_timeout_reaps_a_second_victim_while_the_first_is_stuck_on_its_mmap_sem(bench):
    a, b = bench.victim("a"), bench.victim("b")
    reaper = bench.reaper("timeout", reap_timeout_s=3)
    a.mmap_sem.down_write(HOLDER)
    try:
        reaper.wake_oom_reaper(a)
        bench.run_until(reaper, 0.05)
        reaper.wake_oom_reaper(b)
        bench.run_until(reaper, 60)
    finally:
        a.mmap_sem.up_write(HOLDER)
    assert [(t, line.split(" (")[0]) for t, line in reaped_lines(bench)] == [
        (pytest.approx(0.1), "oom_reaper: reaped process 40001"),        # the next pass, not after a's tries
        (pytest.approx(3.0), "oom_reaper: unable to reap pid:40000"),
        (pytest.approx(3.05), "oom_reaper: unable to reap pid:40001")]   # reaped, but never exited
    assert b.mm.resident_pages() == 0 and a.mm.resident_pages() == a.pages


def test_handover_retries_while_memory_is_left_and_leaves_mmf_oom_skip_to_exit_mmap(bench):
    a = bench.victim("a", mlocked=True)
    reaper = bench.reaper("handover")
    reaper.wake_oom_reaper(a)
    # exit_mmap takes the VMAs over at 0.25 s: it marks the mm MMF_OOM_HANDOVER
    bench.run_until(reaper, 30, at={0.25: lambda: a.mm.set_bit(MMF_OOM_HANDOVER)})
    assert [t for t, _ in reaped_lines(bench)] == pytest.approx([0.0, 0.1, 0.2])   # three reaps, memory left
    assert bench.skips == [] and not a.mm.test_bit(MMF_OOM_SKIP)   # exit_mmap's to set, not the reaper's
    assert reaper.pending() == 0


def test_v417_ignores_the_hand_over_mark_and_sets_mmf_oom_skip_itself(bench):
    a = bench.victim("a", mlocked=True)
    a.mm.set_bit(MMF_OOM_HANDOVER)
    reaper = bench.reaper("v4.17")
    reaper.wake_oom_reaper(a)
    bench.run_until(reaper, 30)
    assert bench.skips == [(0.0, "a", "oom_reaper")]


def test_v66_waits_oom_reaper_delay_then_reaps_mlocked_memory_too(bench):
    a = bench.victim("a", mlocked=True)
    reaper = bench.reaper("v6.6")
    reaper.wake_oom_reaper(a)
    assert reaper.step(0.0) == pytest.approx(2.0)              # the timer: come back at 2 s
    bench.run_until(reaper, 30)
    assert reaped_lines(bench) == [(pytest.approx(2.0), "oom_reaper: reaped process 40000 (a), now "
                                                        "anon-rss:0kB, file-rss:0kB, shmem-rss:0kB")]
    assert bench.skips == [(pytest.approx(2.0), "a", "oom_reaper")]
    assert a.mm.resident_pages() == 0 == bench.zone.charged_by(0)


def test_v66_a_victim_that_exits_within_the_delay_loses_nothing_to_the_reaper(bench):
    a = bench.victim("a")
    reaper = bench.reaper("v6.6")
    reaper.wake_oom_reaper(a)

    def exits():
        a.mm.set_bit(MMF_OOM_SKIP)          # its own exit_mmap set it
        reaper.victim_exited(a)
    bench.run_until(reaper, 30, at={1.0: exits})
    assert bench.log == [] and bench.skips == []
    assert a.mm.resident_pages() == a.pages and not a.mm.test_bit(MMF_UNSTABLE)


def test_v66_reaps_a_victim_whose_mmap_sem_another_task_holds_for_read(bench):
    """The first read-hold row of the crosscheck: a reader does not stop down_read_trylock."""
    a = bench.victim("a", mb=4)
    assert a.mmap_sem.down_read(HOLDER, foreign=True)
    reaper = bench.reaper("v6.6")
    reaper.wake_oom_reaper(a)
    bench.run_until(reaper, 30)
    assert reaped_lines(bench) == [(pytest.approx(2.0), "oom_reaper: reaped process 40000 (a), now "
                                                        "anon-rss:0kB, file-rss:0kB, shmem-rss:0kB")]
    assert a.mm.resident_pages() == 0 == bench.zone.charged_by(0)
    assert a.mmap_sem.state().readers == 1                  # the reader still holds it


def test_v66_gives_up_on_a_read_hold_with_a_writer_queued_behind_it(bench):
    """The second row: a queued writer blocks new readers, the reaper's trylock too."""
    a = bench.victim("a", mb=4)
    assert a.mmap_sem.down_read(HOLDER, foreign=True)
    with a.mm.guard():                                      # a writer waits behind the reader
        a.mmap_sem._enqueue(HOLDER + 1, WRITE)
    reaper = bench.reaper("v6.6")
    reaper.wake_oom_reaper(a)
    bench.run_until(reaper, 30)
    assert reaped_lines(bench) == [(pytest.approx(3.0), "oom_reaper: unable to reap pid:40000 (a)")]
    assert a.mm.resident_pages() == a.pages
