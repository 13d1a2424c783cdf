"""select_bad_process and oom_badness: pure, no processes."""

import pytest

from emulator.kernel.oom_kill import OomControl, Selection, TaskView, oom_badness, select_bad_process

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
