"""select_bad_process_bounded and out_of_memory over a TaskTable decide as the plain scan
over every task's view does, reading in full only the tasks that can win. Pure."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.kernel.memcontrol import MemcgTree
from emulator.kernel.oom_kill import (GLOBAL, MEMCG, NOT_A_CANDIDATE, OOM_SCORE_ADJ_MIN, MemcgState, OomControl,
                                      Selection, TaskTable, TaskView, out_of_memory, select_bad_process,
                                      select_bad_process_bounded)

pytestmark = pytest.mark.timeout(60)
TOTAL = 65536
#   /  -  /a (oom_group)  -  /a/b
#      -  /c
TREE = MemcgTree(names=("", "a", "b", "c"), parents=(-1, 0, 1, 0), oom_group=(False, True, False, False))


def raw_points(v: TaskView, totalpages: int) -> int:
    return v.rss_pages + v.swapents + v.pgtables_pages + v.oom_score_adj * (totalpages // 1000)


class Table(TaskTable):
    """Views, with a bound per task: exact, or ``slack`` pages above (a task half-way through
    a fault, a mapped object), or the mark for one that can never be chosen. Counts reads."""

    def __init__(self, views, slack):
        self.views, self.slack = views, slack
        self.memcgs = [v.memcg for v in views]
        self.mm_ids = [v.mm_id for v in views]
        self.reads = 0

    def view(self, i):
        self.reads += 1
        return self.views[i]

    def badness_bounds(self, members, totalpages):
        out = []
        for v, slack in zip(self.views, self.slack):
            gone = v.oom_victim or not v.has_mm or v.oom_score_adj == OOM_SCORE_ADJ_MIN
            outside = members is not None and v.memcg not in members
            out.append(NOT_A_CANDIDATE + slack if gone or outside else raw_points(v, totalpages) + slack)
        return out


@st.composite
def tasks(draw, max_size=40):
    n = draw(st.integers(0, max_size))
    views, slack = [], []
    for pid in range(1, n + 1):
        victim = draw(st.booleans()) and draw(st.booleans())
        views.append(TaskView(
            pid=pid, name=f"t{pid}", oom_score_adj=draw(st.sampled_from([0, 0, 0, -1000, -999, -500, 300, 1000])),
            rss_pages=draw(st.sampled_from([0, 1, 256, 256, 256, 1000])), pgtables_pages=draw(st.sampled_from([0, 0, 7])),
            has_mm=draw(st.booleans()) or not victim and draw(st.booleans()),
            oom_victim=victim, mmf_oom_skip=victim or draw(st.integers(0, 9)) == 0,   # a victim holds no memory
            memcg=draw(st.integers(0, 3)), mm_id=draw(st.sampled_from([0, 0, 0, 1, 2]))))
        slack.append(draw(st.sampled_from([0, 0, 0, 1, 300])))
    return views, slack


def plain(views, totalpages=TOTAL):
    oc = OomControl(totalpages)
    return select_bad_process(views, oc), oc


@settings(max_examples=400, deadline=None)
@given(tasks())
def test_the_bounded_scan_chooses_as_the_full_scan(drawn):
    views, slack = drawn
    table = Table(views, slack)
    oc = OomControl(TOTAL)
    got = select_bad_process_bounded(table.badness_bounds(None, TOTAL), table.view, oc)
    want, ref = plain(views)
    assert got is want
    assert oc.chosen is ref.chosen and oc.chosen_points == ref.chosen_points
    exact = all(s == 0 for s in slack) and not any(v.mmf_oom_skip and not v.oom_victim for v in views)
    if exact and got is Selection.CHOSEN and ref.chosen_points > 1:
        assert table.reads == 1                 # exact bounds: the winner is the only task read


def test_a_thousand_equal_tasks_take_one_read_and_the_last_one_wins():
    views = [TaskView(pid, f"t{pid}", 0, rss_pages=256, pgtables_pages=0) for pid in range(1, 1001)]
    table = Table(views, [0] * 1000)
    oc = OomControl(TOTAL)
    assert select_bad_process_bounded(table.badness_bounds(None, TOTAL), table.view, oc) is Selection.CHOSEN
    assert oc.chosen.pid == 1000 and oc.chosen_points == 256 and table.reads == 1


def test_a_loose_bound_reads_on_until_no_bound_can_win():
    views = [TaskView(1, "a", 0, rss_pages=500, pgtables_pages=0), TaskView(2, "b", 0, rss_pages=10, pgtables_pages=0),
             TaskView(3, "c", 0, rss_pages=400, pgtables_pages=0)]
    table = Table(views, [0, 1000, 0])          # b looks biggest (a fault half-way?) but is not
    oc = OomControl(TOTAL)
    assert select_bad_process_bounded(table.badness_bounds(None, TOTAL), table.view, oc) is Selection.CHOSEN
    assert oc.chosen.pid == 1 and table.reads == 2          # b, then a; c's bound cannot beat a


def test_a_victim_that_still_holds_its_memory_still_aborts():
    views = [TaskView(1, "a", 0, rss_pages=500, pgtables_pages=0, oom_victim=True)]
    table = Table(views, [0])
    oc = OomControl(TOTAL)
    assert select_bad_process_bounded([500], table.view, oc) is Selection.ABORT and oc.aborted_by is views[0]


def test_only_marked_tasks_means_none():
    oc = OomControl(TOTAL)
    assert select_bad_process_bounded([NOT_A_CANDIDATE, NOT_A_CANDIDATE + 5], lambda i: None, oc) is Selection.NONE
    assert select_bad_process_bounded([], lambda i: None, oc) is Selection.NONE


@settings(max_examples=300, deadline=None)
@given(tasks(), st.sampled_from([None, 1, 2, 3]), st.booleans())
def test_out_of_memory_over_a_table_decides_as_over_every_view(drawn, over, grouped):
    views, slack = drawn
    tree = TREE if grouped else MemcgTree(TREE.names, TREE.parents, (False,) * 4)
    requester = TaskView(999, "req", 0, rss_pages=1, pgtables_pages=0, memcg=over or 0)
    memcg = None if over is None else MemcgState(over, tree.path(over), 4096, 4096, frozenset(tree.subtree(over)))
    where = GLOBAL if over is None else MEMCG
    want = out_of_memory(requester, False, where, False, [], list(views), TOTAL, memcg, tree)
    got = out_of_memory(requester, False, where, False, [], Table(views, slack), TOTAL, memcg, tree)
    assert got == want
