"""The accounting invariant holds after any crash, and every run checks it.

For every task: the zone's charge == the pages its mm counts == the pages its
segment really holds. A worker writes what it is about to do in its mm's
journal; if it dies half-way, the supervisor finishes or undoes it. These
tests stop a worker at each point of a change by doing the change's first
half by hand (the same calls the worker makes), then repair; real workers
killed mid-allocation: tests/cli/test_accounting.py.
"""

import os

import posix_ipc
import pytest

from emulator.runtime import names
from emulator.kernel.mm_types import PAGES_PER_MB, MmLayout
from emulator.runtime.mm import J_CHARGE, J_ZAP, Mm
from emulator.runtime.zone import Zone

pytestmark = pytest.mark.timeout(60)

PAGES = 2 * PAGES_PER_MB


@pytest.fixture
def world():
    rid = names.new_run_id()
    zone = Zone(rid, create={"supervisor_pid": os.getpid(), "supervisor_ctime": 0.0, "speed": 1.0,
                             "total_pages": 16 * PAGES_PER_MB, "scenario": "s", "policy": "p",
                             "tasks": [0]})
    mm = Mm(names.mm(rid, 0), create=MmLayout((("anon", 0, 8 * PAGES_PER_MB),), pgtables=PAGES_PER_MB))
    yield zone, mm
    mm.close()
    zone.close()
    for name in (names.mm(rid, 0), names.zone(rid)):
        try:
            posix_ipc.unlink_shared_memory(name)
        except posix_ipc.ExistentialError:
            pass


def consistent(zone, mm):
    return zone.charged_by(0) == mm.resident_pages() == mm.real_pages() == zone.charged()


def repair(zone, mm):
    charged, complaint = mm.repair(zone.charged_by(0))
    zone.set_charged(0, charged)
    assert complaint is None
    assert mm.journal()[0] == 0
    return charged


def test_a_complete_fault_and_zap_keep_the_invariant(world):
    zone, mm = world
    mm.journal_begin(J_CHARGE, 0, PAGES)
    assert zone.try_charge(0, PAGES) is None
    mm.fault_in(0, PAGES)
    mm.journal_end()
    assert consistent(zone, mm) and mm.resident_pages() == PAGES
    assert repair(zone, mm) == PAGES and consistent(zone, mm)


def test_death_after_the_charge_before_the_count_undoes_the_charge(world):
    zone, mm = world
    mm.journal_begin(J_CHARGE, 0, PAGES)
    assert zone.try_charge(0, PAGES) is None          # ... and the worker dies here
    assert zone.charged_by(0) == PAGES != mm.resident_pages()
    assert repair(zone, mm) == 0
    assert consistent(zone, mm)


def test_death_after_the_allocation_before_the_count_gives_the_pages_back(world):
    zone, mm = world
    mm.journal_begin(J_CHARGE, 0, PAGES)
    assert zone.try_charge(0, PAGES) is None
    v = mm.vmas()[0]
    mm._allocate(4096 + v.start * 4096, PAGES)         # fault_in's first half; then death
    assert mm.real_pages() == PAGES and mm.resident_pages() == 0
    repair(zone, mm)
    assert consistent(zone, mm) and mm.real_pages() == 0


def test_death_after_the_count_before_the_writes_keeps_the_pages(world):
    zone, mm = world
    mm.journal_begin(J_CHARGE, 0, PAGES)
    assert zone.try_charge(0, PAGES) is None
    v = mm.vmas()[0]
    mm._allocate(4096 + v.start * 4096, PAGES)
    mm._set_nr_pages(0, PAGES)                         # counted; the worker dies before writing
    assert repair(zone, mm) == PAGES
    assert consistent(zone, mm)


@pytest.mark.parametrize("stage", ["before_claim", "claimed_before_uncharge", "claimed_before_punch",
                                   "punched"])
def test_death_in_the_middle_of_a_zap_finishes_it(world, stage):
    """A zap claims (count to 0, uncharge: one guarded step), then punches; a worker
    may die between any two of these (even inside the guard: the flock dies with it)."""
    zone, mm = world
    mm.journal_begin(J_CHARGE, 0, PAGES)
    zone.try_charge(0, PAGES)
    mm.fault_in(0, PAGES)
    mm.journal_end()
    mm.journal_begin(J_ZAP, 0, PAGES)
    if stage == "punched":
        assert mm.zap_vma(mm.vmas()[0], lambda n: zone.uncharge(0, n)) == PAGES
    elif stage != "before_claim":
        with mm.guard():
            mm._set_nr_pages(0, 0)
            if stage == "claimed_before_punch":
                zone.uncharge(0, PAGES)
        assert mm.real_pages() == PAGES                 # claimed pages are still there
    repair(zone, mm)
    assert consistent(zone, mm) and mm.resident_pages() == 0 and mm.real_pages() == 0


def test_death_in_the_middle_of_free_pgtables_finishes_it(world):
    zone, mm = world
    mm.journal_begin(J_CHARGE, -1, PAGES_PER_MB)
    zone.try_charge(0, PAGES_PER_MB)
    mm.fault_pgtables()
    mm.journal_end()
    assert consistent(zone, mm)
    mm.journal_begin(J_ZAP, -1, PAGES_PER_MB)
    mm.free_pgtables()                                  # ... and dies before the uncharge
    repair(zone, mm)
    assert consistent(zone, mm) and mm.pgtables_pages == 0


def test_a_memcg_is_charged_with_the_zone_in_one_store(world):
    zone, mm = world
    rid = names.new_run_id()
    z = Zone(rid, create={"supervisor_pid": os.getpid(), "supervisor_ctime": 0.0, "speed": 1.0,
                          "total_pages": 100, "scenario": "s", "policy": "p",
                          "memcgs": [("tight", 30, 0, False)], "tasks": [0, 1]})
    try:
        assert z.try_charge(0, 60) is None
        assert z.try_charge(0, 60) == ("global", 0)
        assert z.try_charge(1, 31) == ("memcg", 1)       # over the memcg's limit
        assert z.try_charge(1, 30) is None
        assert z.charged() == 90 and z.memcg(1) == (30, 30, "tight") and z.free_pages() == 10
        z.uncharge(0, 60)
        z.set_charged(1, 0)                              # the repair of a dead task
        assert z.free_pages() == 100 and z.memcg(1)[1] == 0
    finally:
        z.close()
        posix_ipc.unlink_shared_memory(names.zone(rid))


def test_a_charge_walks_up_the_memcg_tree_and_fails_at_the_first_level_over_its_limit(world):
    rid = names.new_run_id()
    # /a (limit 50) holds /a/b (limit 80: above its parent's, which binds) and /a/c (limit 10)
    z = Zone(rid, create={"supervisor_pid": os.getpid(), "supervisor_ctime": 0.0, "speed": 1.0,
                          "total_pages": 100, "scenario": "s", "policy": "p",
                          "memcgs": [("a", 50, 0, True), ("b", 80, 1, False), ("c", 10, 1, False)],
                          "tasks": [2, 3, 0]})
    try:
        assert z.try_charge(1, 11) == ("memcg", 3)       # /a/c's own limit, before /a's
        assert z.try_charge(0, 51) == ("memcg", 1)       # /a/b is under its 80: /a's 50 binds
        assert z.try_charge(0, 45) is None and z.try_charge(1, 5) is None
        assert z.memcg(1) == (50, 50, "a") and z.memcg(2)[1] == 45 and z.memcg(3)[1] == 5
        assert z.try_charge(1, 1) == ("memcg", 1)        # /a/c has room, /a has none
        assert z.try_charge(2, 50) is None               # the root memcg: only the zone binds
        assert z.try_charge(2, 1) == ("global", 0)
        tree = z.memcg_tree
        assert [tree.path(i) for i in range(4)] == ["/", "/a", "/a/b", "/a/c"] and tree.oom_group[1]
    finally:
        z.close()
        posix_ipc.unlink_shared_memory(names.zone(rid))


def test_the_zones_usage_counts_every_object_in_its_memcg_read_in_one_pass():
    """free_pages and memcg_usages read all the objects' charges in one struct call (they
    run at every charge and every trace event): the same sums as object by object."""
    import random
    rid = names.new_run_id()
    rnd = random.Random(13)
    objects = [("shmem" if k % 3 else "file", k % 3, 64, 0, "") for k in range(500)]
    zone = Zone(rid, create={"supervisor_pid": os.getpid(), "supervisor_ctime": 0.0, "speed": 1.0,
                             "total_pages": 64 * PAGES_PER_MB, "scenario": "s", "policy": "p", "tasks": [0, 1, 2],
                             "memcgs": [("a", -1, 0, False), ("b", -1, 1, False)], "objects": objects})
    try:
        for k in range(len(objects)):
            zone.charge_object(k, rnd.randrange(0, 65))
        zone.uncharge_object(7, zone.object_charged(7))
        assert zone.try_charge(1, 100) is None and zone.try_charge(2, 30) is None
        by_object = [zone.object_charged(k) for k in range(len(objects))]
        assert zone.free_pages() == 64 * PAGES_PER_MB - 130 - sum(by_object)
        own = [sum(c for k, c in enumerate(by_object) if k % 3 == m) for m in range(3)]
        assert zone.memcg_usages()[:3] == [own[0] + own[1] + own[2] + 130, own[1] + own[2] + 130, own[2] + 30]
    finally:
        zone.close()
        posix_ipc.unlink_shared_memory(names.zone(rid))
