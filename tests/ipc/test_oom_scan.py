"""OomScan against real mm segments and a real zone: each task's badness bound is never
below what its mm counts, half-way through a fault or a zap too, and the OOM killer
decides over it as over every task's view. No workers: the test does what they do."""

import types

import pytest

from emulator.kernel.oom_kill import GLOBAL, MEMCG, NOT_A_CANDIDATE, MemcgState, OomAction, out_of_memory
from emulator.runtime.oom_scan import OomScan
from emulator.runtime.supervisor import Run
from emulator.scenario import parse_scenario

pytestmark = pytest.mark.timeout(60)
MB = 256


def raw_points(v, totalpages):
    return v.rss_pages + v.swapents + v.pgtables_pages + v.oom_score_adj * (totalpages // 1000)


@pytest.fixture
def run():
    s = parse_scenario({"memory_mb": 256, "memcg": [{"name": "m", "limit_mb": 64}], "task": [
        {"name": "small", "count": 3, "vma": [{"kind": "anon", "mb": 2}]},
        {"name": "db", "pgtables_mb": 1, "vma": [{"kind": "file_shared", "mb": 8}, {"kind": "anon", "mb": 4}]},
        {"name": "owner", "oom_score_adj": 5, "memcg": "m", "vma": [{"kind": "anon", "mb": 3}]},
        {"name": "sharer", "mm": "owner"},
        {"name": "allocator", "oom_score_adj": -1000, "memcg": "m", "step": [{"op": "alloc", "mb": 1}]}]},
        source="<test>")
    r = Run(s, policy="v6.6")
    try:
        r._create()
        for t in r.tasks:                           # as each worker does at start-up: fault in, map
            t.proc = types.SimpleNamespace(pid=40000 + t.index)
            for vi, pages in enumerate(t.initial_pages):
                if pages and t.mm.vmas()[vi].object >= 0:
                    t.mm.map_object(vi, pages)
                elif pages:
                    assert r.zone.try_charge(t.index, pages) is None
                    assert t.mm.fault_in(vi, pages)
            if t.spec.pgtables_mb:
                assert r.zone.try_charge(t.index, t.mm.pgtables_capacity) is None
                t.mm.fault_pgtables()
        yield r
    finally:
        r.resources.remove()


def check_bounds(r, scan, totalpages):
    for i, (b, t) in enumerate(zip(scan.badness_bounds(None, totalpages), r.tasks)):
        v = r._view(t)
        assert b < NOT_A_CANDIDATE // 2 or b >= raw_points(v, totalpages), (t.name, b, v)


def by_name(r, name):
    return next(t for t in r.tasks if t.name == name)


def decide(r, tasks, memcg=None):
    where = GLOBAL if memcg is None else MEMCG
    return out_of_memory(r._view(by_name(r, "allocator")), False, where, False, [], tasks,
                         r.zone.total_pages if memcg is None else memcg.limit_pages, memcg, r.zone.memcg_tree)


def test_bounds_hold_through_a_fault_and_a_zap_and_decide_as_every_view(run):
    r = run
    scan = OomScan(r.zone, r.tasks, r._view)
    total = r.zone.total_pages
    check_bounds(r, scan, total)
    assert decide(r, scan) == decide(r, [r._view(t) for t in r.tasks])
    small = by_name(r, "small-1")
    assert r.zone.try_charge(small.index, 20 * MB) is None      # charged, not yet counted: loose
    check_bounds(r, scan, total)
    d = decide(r, scan)
    assert d == decide(r, [r._view(t) for t in r.tasks]) and d.victim.name == "db"   # it is not what it seemed
    small.mm.fault_in(small.grow_vma, 20 * MB)                  # counted: now the biggest
    d = decide(r, scan)
    assert d == decide(r, [r._view(t) for t in r.tasks]) and d.victim.name == "small-1"
    vma = small.mm.vmas()[small.grow_vma]
    small.mm.zap_vma(vma, lambda n: r.zone.uncharge(small.index, n))    # the count drops before the charge
    check_bounds(r, scan, total)
    assert decide(r, scan) == decide(r, [r._view(t) for t in r.tasks])


def test_a_memcg_oom_kills_the_owner_and_its_sharer_and_reads_nobody_outside(run):
    r = run
    read = []
    scan = OomScan(r.zone, r.tasks, lambda t: read.append(t.name) or r._view(t))
    m = r.zone.memcg_tree.names.index("m")
    state = MemcgState(m, "/m", 64 * MB, 64 * MB, frozenset({m}))
    d = decide(r, scan, state)
    assert d == decide(r, [r._view(t) for t in r.tasks], state)
    assert d.action is OomAction.KILL and d.victim.name == "sharer" and [s.name for s in d.sharers] == ["owner"]
    assert set(read) <= {"owner", "sharer", "allocator"}


def test_a_retired_victim_is_never_read_again(run):
    r = run
    read = []
    scan = OomScan(r.zone, r.tasks, lambda t: read.append(t.name) or r._view(t))
    db = by_name(r, "db")
    assert decide(r, scan).victim.name == "db"
    scan.retire(db.index)
    read.clear()
    d = decide(r, scan)
    assert d.victim.name == "sharer" and "db" not in read
    assert read == ["sharer", "owner", "sharer"]        # the winner; then its mm's users, for the kill


def test_a_mapped_file_counts_as_much_as_is_left_of_it_after_reclaim(run):
    r = run
    read = []
    scan = OomScan(r.zone, r.tasks, lambda t: read.append(t.name) or r._view(t))
    total = r.zone.total_pages
    db = by_name(r, "db")
    assert decide(r, scan).victim.name == "db" and read == ["db"]
    r.objects.shrink(0, 7 * MB, r.tasks)           # reclaim takes 7 of its 8 MB of page cache
    check_bounds(r, scan, total)
    assert db.mm.get_mm_rss() == 5 * MB
    read.clear()
    d = decide(r, scan)
    assert d == decide(r, [r._view(t) for t in r.tasks]) and d.victim.name == "db"
    assert read == ["db"]                          # its bound is what it maps now: exact, one read
