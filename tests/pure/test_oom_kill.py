"""select_bad_process, oom_badness and out_of_memory's decision: pure, no processes."""

import pytest

from emulator.kernel.oom_kill import (GFP, GLOBAL, MEMCG, MemcgState, OomAction, OomControl, Selection, TaskView,
                                      killed_process_line, oom_badness, out_of_memory, select_bad_process)

pytestmark = pytest.mark.timeout(10)
TOTAL = 65536   # 256 MB of 4 KiB pages


def task(pid, rss, adj=0, **kw):
    return TaskView(pid=pid, name=f"t{pid}", oom_score_adj=adj, rss_pages=rss, pgtables_pages=0, **kw)


def test_badness_counts_rss_and_page_tables():
    t = TaskView(1, "a", 0, rss_pages=1000, pgtables_pages=300, swapents=20)
    assert oom_badness(t, TOTAL) == 1320


def test_badness_adj_is_in_thousandths_of_totalpages():
    assert oom_badness(task(1, 1000, adj=500), TOTAL) == 1000 + 500 * (TOTAL // 1000)
    assert oom_badness(task(1, 1000, adj=-999), TOTAL) == 1      # eligible: never 0


def test_unkillable_and_skipped_mms_score_zero():
    assert oom_badness(task(1, 5000, adj=-1000), TOTAL) == 0
    assert oom_badness(task(1, 5000, mmf_oom_skip=True), TOTAL) == 0
    assert oom_badness(task(1, 5000, has_mm=False), TOTAL) == 0


def test_the_biggest_task_is_chosen():
    oc = OomControl(TOTAL)
    assert select_bad_process([task(1, 10), task(2, 300), task(3, 200)], oc) is Selection.CHOSEN
    assert oc.chosen.pid == 2


def test_a_victim_still_holding_its_memory_aborts_the_scan():
    oc = OomControl(TOTAL)
    tasks = [task(1, 10), task(2, 300, oom_victim=True), task(3, 200)]
    assert select_bad_process(tasks, oc) is Selection.ABORT
    assert oc.chosen is None and oc.aborted_by.pid == 2


def test_a_victim_with_mmf_oom_skip_is_passed_over():
    oc = OomControl(TOTAL)
    tasks = [task(1, 10), task(2, 300, oom_victim=True, mmf_oom_skip=True), task(3, 200)]
    assert select_bad_process(tasks, oc) is Selection.CHOSEN
    assert oc.chosen.pid == 3


def test_nobody_eligible_means_none():
    oc = OomControl(TOTAL)
    tasks = [task(1, 10, adj=-1000), task(2, 300, oom_victim=True, mmf_oom_skip=True)]
    assert select_bad_process(tasks, oc) is Selection.NONE


# -- out_of_memory: what it decides, and what it prints ---------------------------------

def oom(requester, tasks, victims=(), where=GLOBAL, memcg=None, exiting=False, would_succeed=False):
    return out_of_memory(requester, exiting, where, would_succeed, list(victims), list(tasks), TOTAL, memcg)


def test_out_of_memory_kills_the_biggest_task_and_prints_the_kernels_lines():
    alloc, big = task(1, 10, adj=-1000), task(2, 16384)
    d = oom(alloc, [alloc, big, task(3, 100)])
    assert d.action is OomAction.KILL and d.victim is big and d.points == 16384 and d.memcg is None
    assert d.lines == (f"t1 invoked oom-killer: {GFP}, oom_score_adj=-1000",
                       "Out of memory: Kill process 2 (t2) score 250 or sacrifice child")
    assert killed_process_line(2, "t2", {"total_vm": 4, "anon_rss": 3, "file_rss": 2, "shmem_rss": 1}) == \
        "Killed process 2 (t2) total-vm:4kB, anon-rss:3kB, file-rss:2kB, shmem-rss:1kB"


def test_out_of_memory_waits_for_a_victim_that_still_holds_its_memory_without_a_scan():
    alloc, victim = task(1, 10), task(2, 300, oom_victim=True)

    def no_scan():
        raise AssertionError("the fast path must not scan every task")
        yield
    d = out_of_memory(alloc, False, GLOBAL, False, [victim], no_scan(), TOTAL)
    assert d.action is OomAction.ABORT and d.aborted_by is victim and d.lines == ()


def test_out_of_memory_does_nothing_for_an_exiting_requester_or_an_allocation_that_now_fits():
    alloc, big = task(1, 10), task(2, 300)
    assert oom(alloc, [alloc, big], exiting=True).action is OomAction.NOTHING
    assert oom(task(1, 10, oom_victim=True), [alloc, big]).action is OomAction.NOTHING
    assert oom(alloc, [alloc, big], would_succeed=True).action is OomAction.NOTHING


def test_out_of_memory_with_nobody_to_kill_panics():
    alloc = task(1, 10, adj=-1000)
    d = oom(alloc, [alloc, task(2, 300, oom_victim=True, mmf_oom_skip=True)])
    assert d.action is OomAction.PANIC
    assert d.lines[1:] == ("Out of memory and no killable processes...",
                           "Kernel panic - not syncing: Out of memory and no killable processes...")


def test_a_memcg_oom_looks_only_inside_its_memcg_scores_against_its_limit_and_never_panics():
    cg = MemcgState(index=1, path="/box", limit_pages=4096, usage_pages=4096)
    alloc, inside, outside = task(1, 10, memcg=1), task(2, 2048, memcg=1), task(3, 60000)
    d = oom(alloc, [alloc, inside, outside], where=MEMCG, memcg=cg)
    assert d.action is OomAction.KILL and d.victim is inside and d.memcg == 1
    assert d.lines[1:] == ("Task in /box killed as a result of limit of /box", "memory: usage 16384kB, limit 16384kB",
                           "Memory cgroup out of memory: Kill process 2 (t2) score 500 or sacrifice child")
    # a victim outside the memcg does not hold up a memcg OOM
    d = oom(alloc, [alloc, inside, outside], victims=[task(4, 900, oom_victim=True)], where=MEMCG, memcg=cg)
    assert d.action is OomAction.KILL
    only_unkillable = [task(1, 10, memcg=1, adj=-1000), outside]
    assert oom(only_unkillable[0], only_unkillable, where=MEMCG, memcg=cg).action is OomAction.NO_VICTIM
