"""Memcg trees: the loader's rules, page_counter_try_charge, a memcg OOM's domain, and
memory.oom.group's kill (mem_cgroup_get_oom_group + mem_cgroup_scan_tasks). Pure."""

from pathlib import Path

import pytest

from emulator import ScenarioError, load_scenario
from emulator.kernel.memcontrol import NO_LIMIT, MemcgTree, mem_cgroup_get_oom_group, page_counter_try_charge
from emulator.kernel.oom_kill import GLOBAL, MEMCG, MemcgState, OomAction, TaskView, out_of_memory
from tests.helpers import write_scenario

pytestmark = pytest.mark.timeout(10)
TOTAL = 65536

#   /  -  /a (oom_group)  -  /a/b  -  /a/b/d (oom_group)
#                         -  /a/c
#      -  /e
TREE = MemcgTree(names=("", "a", "b", "c", "d", "e"), parents=(-1, 0, 1, 1, 2, 0),
                 oom_group=(False, True, False, False, True, False))
A, B, C, D, E = 1, 2, 3, 4, 5
FLAT = MemcgTree(TREE.names, TREE.parents, (False,) * 6)      # the same tree, no oom_group


def task(pid, rss, memcg=0, adj=0, **kw):
    return TaskView(pid=pid, name=f"t{pid}", oom_score_adj=adj, rss_pages=rss, pgtables_pages=0, memcg=memcg, **kw)


def state(index, limit, usage):
    return MemcgState(index, TREE.path(index), limit, usage, frozenset(TREE.subtree(index)))


def oom(requester, tasks, where=MEMCG, memcg=None, victims=(), tree=TREE):
    return out_of_memory(requester, False, where, False, list(victims), list(tasks), TOTAL, memcg, tree)


def test_paths_walks_and_hierarchical_usage():
    assert [TREE.path(i) for i in range(6)] == ["/", "/a", "/a/b", "/a/c", "/a/b/d", "/e"]
    assert TREE.ancestors(D) == [D, B, A, 0]
    assert TREE.subtree(A) == [A, B, D, C] and TREE.subtree(0) == [0, A, B, D, C, E]
    assert TREE.is_descendant(D, A) and not TREE.is_descendant(E, A) and TREE.is_descendant(A, A)
    assert TREE.usage([0, 1, 10, 100, 1000, 5]) == [1116, 1111, 1010, 100, 1000, 5]


def test_a_charge_fails_at_the_first_level_over_its_limit_going_up():
    limits = [NO_LIMIT, 100, 500, 20, NO_LIMIT, 10]      # /a/b's 500 is above /a's 100: /a binds
    usage = TREE.usage([0, 0, 50, 10, 30, 0])              # /a: 90
    assert page_counter_try_charge(TREE, usage, limits, D, 10) is None
    assert page_counter_try_charge(TREE, usage, limits, D, 11) == A
    assert page_counter_try_charge(TREE, usage, limits, C, 11) == C    # its own, before /a's
    assert page_counter_try_charge(TREE, usage, limits, 0, 10 ** 9) is None   # the root: no limit


def test_a_child_limit_hit_kills_inside_the_child_only():
    alloc, small, big_sibling = task(1, 10, C), task(2, 300, C), task(3, 9000, B)
    d = oom(alloc, [alloc, small, big_sibling, task(4, 60000, E)], memcg=state(C, 400, 400))
    assert d.action is OomAction.KILL and d.victim is small and d.memcg == C
    assert d.lines[1:3] == ("Task in /a/c killed as a result of limit of /a/c", "memory: usage 1600kB, limit 1600kB")


def test_a_parent_limit_hit_chooses_among_all_its_descendants_and_prints_both_paths():
    alloc, in_c, in_d, outside = task(1, 10, C), task(2, 300, C), task(3, 900, D), task(4, 60000, E)
    d = oom(alloc, [alloc, in_c, in_d, outside], memcg=state(A, 1210, 1210), tree=FLAT)
    assert d.action is OomAction.KILL and d.victim is in_d and d.memcg == A and d.group == ()
    assert d.lines[1] == "Task in /a/b/d killed as a result of limit of /a"
    assert d.lines[-1] == "Memory cgroup out of memory: Kill process 3 (t3) score 743 or sacrifice child"
    # a victim in the domain, still holding its memory, aborts it; one outside does not
    assert oom(alloc, [alloc, in_c], memcg=state(A, 1, 1),
               victims=[task(5, 10, D, oom_victim=True)]).action is OomAction.ABORT
    assert oom(alloc, [alloc, in_c], memcg=state(A, 1, 1), tree=FLAT,
               victims=[task(5, 10, E, oom_victim=True)]).action is OomAction.KILL


def test_the_highest_oom_group_up_to_the_domain_is_killed():
    assert mem_cgroup_get_oom_group(TREE, D, None) == A         # global: up to the root
    assert mem_cgroup_get_oom_group(TREE, D, A) == A
    assert mem_cgroup_get_oom_group(TREE, D, B) == D            # /a is above the domain
    assert mem_cgroup_get_oom_group(TREE, D, D) == D
    assert mem_cgroup_get_oom_group(TREE, C, C) is None         # /a/c has none, /a is above
    assert mem_cgroup_get_oom_group(TREE, E, None) is None
    assert mem_cgroup_get_oom_group(TREE, 0, None) is None      # a victim in the root memcg
    assert mem_cgroup_get_oom_group(TREE, E, A) is None         # outside the domain


def test_an_oom_group_is_killed_whole_in_pre_order_sparing_oom_score_adj_min_and_earlier_victims():
    alloc = task(1, 10, E)
    tasks = [alloc, task(2, 100, C), task(3, 100, D), task(4, 50000, B), task(5, 100, B, adj=-1000),
             task(6, 100, A), task(7, 100, D, oom_victim=True, mmf_oom_skip=True), task(8, 100, C, has_mm=False),
             task(9, 100, E)]
    d = oom(alloc, tasks, where=GLOBAL)
    assert d.action is OomAction.KILL and d.victim.pid == 4 and d.oom_group == A and d.memcg is None
    assert d.group_lines == ("Tasks in /a are going to be killed due to memory.oom.group set",)
    assert [t.pid for t in d.group] == [6, 3, 2]       # /a, then /a/b (4 is the victim, 5 is -1000), /a/b/d, /a/c
    # constrained to /a/b, the group is /a/b/d's at most: /a is above the domain
    d = oom(alloc, tasks, memcg=state(B, 50400, 50400))
    assert d.victim.pid == 4 and d.oom_group is None and d.group == ()


def test_a_victim_in_a_memcg_without_oom_group_dies_alone():
    d = oom(task(1, 10), [task(1, 10), task(2, 100, C), task(3, 900, C)], where=GLOBAL, tree=FLAT)
    assert d.victim.pid == 3 and d.oom_group is None and d.group == () and d.group_lines == ()


# -- the loader's rules ----------------------------------------------------------------

def scenario(memcgs: str, task_memcg: str = "b", mb: int = 8) -> str:
    return f"""
        memory_mb = 64
        {memcgs}
        [[task]]
        name = "t"
        memcg = "{task_memcg}"
          [[task.vma]]
          kind = "anon"
          mb = {mb}
    """


def memcg(name, limit=16, **kw):
    extra = "".join(f"\n        {k} = {v}" for k, v in kw.items())
    return f"\n        [[memcg]]\n        name = \"{name}\"\n        limit_mb = {limit}{extra}"


def refused(tmp_path, text, key, says):
    with pytest.raises(ScenarioError) as e:
        load_scenario(write_scenario(tmp_path, text))
    msg = str(e.value)
    assert f": {key}: " in msg and says in msg and "\n" not in msg, msg


def test_a_tree_in_any_file_order_loads_parents_first(tmp_path):
    text = scenario(memcg("b", 32, parent='"a"') + memcg("a", 16, oom_group="true") + memcg("c", 8, parent='"b"'))
    s = load_scenario(write_scenario(tmp_path, text))
    assert [(m.name, m.parent, m.oom_group) for m in s.memcgs] == [("a", "", True), ("b", "a", False),
                                                                     ("c", "b", False)]
    assert s.memcg_path("c") == "/a/b/c" and s.memcg_path("") == "/"
    assert s.memcg_index("a") < s.memcg_index("b") < s.memcg_index("c")


@pytest.mark.parametrize("memcgs, key, says", [
    (memcg("b", parent='"nosuch"'), "memcg[0].parent", "no [[memcg]] is called 'nosuch'"),
    (memcg("b", parent='"b"'), "memcg[0].parent", "b: a memcg cannot be its own parent"),
    (memcg("a", parent='"c"') + memcg("b", parent='"a"') + memcg("c", parent='"b"'), "memcg[0].parent",
     "its parents make a cycle (a -> c -> b -> a)"),
    (memcg("b", parent="3"), "memcg[0].parent", "must be a non-empty string, not 3"),
    (memcg("b", oom_group='"yes"'), "memcg[0].oom_group", "must be true or false, not 'yes'"),
    (memcg("a", 4) + memcg("b", 16, parent='"a"'), "memcg.limit_mb",
     "a: its tasks and its descendants' need 2048 pages at start, the limit is 1024"),
])
def test_tree_mistakes_exit_in_one_line(tmp_path, memcgs, key, says):
    refused(tmp_path, scenario(memcgs), key, says)


def test_a_childs_limit_may_exceed_its_parents(tmp_path):
    s = load_scenario(write_scenario(tmp_path, scenario(memcg("a", 10) + memcg("b", 40, parent='"a"'))))
    assert [m.limit_mb for m in s.memcgs] == [10, 40]


def test_the_every_key_example_in_the_docs_loads_with_its_memcg_tree(tmp_path):
    doc = (Path(__file__).parents[2] / "docs" / "scenario-format.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    s = load_scenario(write_scenario(tmp_path, example))
    assert [(m.name, m.parent) for m in s.memcgs] == [("jobs", ""), ("batch", "jobs")]
    assert s.memcg_path("batch") == "/jobs/batch"
