"""Shared mms (CLONE_VM, issue 11 part 4), pure: the loader's ``mm`` and ``mm_pin``, and
what the OOM killer decides for processes sharing the victim's mm (__oom_kill_process,
task_will_free_mem). No processes."""

import pytest

from emulator import ScenarioError, load_scenario
from emulator.kernel.oom_kill import (GLOBAL, OomAction, TaskView, mm_sharers, out_of_memory,
                                      task_will_free_mem)
from tests.helpers import write_scenario

pytestmark = pytest.mark.timeout(10)
TOTAL = 65536

OWNER = """
    memory_mb = 64
    [[task]]
    name = "owner"
    oom_score_adj = 300
    memcg = "box"
    vma = [{ kind = "anon", mb = 8 }]
"""
BOX = """
    [[memcg]]
    name = "box"
    limit_mb = 32
"""


def load(tmp_path, text: str):
    return load_scenario(write_scenario(tmp_path, text))


def refused(tmp_path, text: str, key: str, says: str) -> str:
    with pytest.raises(ScenarioError) as e:
        load(tmp_path, text)
    msg = str(e.value)
    assert f": {key}: " in msg and says in msg and "\n" not in msg, msg
    return msg


def test_a_sharer_takes_its_owners_mm_keys_and_count_makes_every_copy_share(tmp_path):
    s = load(tmp_path, OWNER + BOX + """
    [[task]]
    name = "thread"
    mm = "owner"
    count = 2
    step = [{ op = "alloc", mb = 1 }]
    """)
    owner, t0, t1 = s.tasks
    assert [t.name for t in s.tasks] == ["owner", "thread-0", "thread-1"]
    assert t0.mm == t1.mm == "owner" and owner.mm == ""
    assert (t0.oom_score_adj, t0.memcg, t0.vmas) == (300, "box", ())


@pytest.mark.parametrize("key, value", [("vma", '[{ kind = "anon", mb = 1 }]'), ("pgtables_mb", "1"),
                                        ("oom_score_adj", "0"), ("mmu_notifier", '"none"'),
                                        ("memcg", '"box"'), ("exit_unmap_ms_per_mb", "1"),
                                        ("exit_free_pgtables_ms", "1")])
def test_a_sharer_has_none_of_the_mms_keys_of_its_own(tmp_path, key, value):
    refused(tmp_path, OWNER + BOX + f"""
    [[task]]
    name = "thread"
    mm = "owner"
    {key} = {value}
    """, f"task[1].{key}", "a task sharing an mm has none of its own")


@pytest.mark.parametrize("mm, key, says", [
    ('"thread"', "task.mm", "mm names the task itself"),
    ('"nobody"', "task.mm", "no task is called 'nobody'"),
    ("3", "task[1].mm", "must be the name of the task whose mm it shares, not 3"),
    ('""', "task[1].mm", "must be the name of the task"),
])
def test_mm_mistakes_are_one_line(tmp_path, mm, key, says):
    refused(tmp_path, OWNER + BOX + f"""
    [[task]]
    name = "thread"
    mm = {mm}
    """, key, says)


def test_a_chain_of_sharers_is_refused(tmp_path):
    refused(tmp_path, OWNER + BOX + """
    [[task]]
    name = "a"
    mm = "owner"
    [[task]]
    name = "b"
    mm = "a"
    """, "task.mm", "'a' shares the mm of 'owner' itself: name the owner")


def test_mm_pin_mistakes_are_one_line(tmp_path):
    pin = OWNER + BOX + """
    [[task]]
    name = "reader"
    step = [{ op = "mm_pin", %s }]
    """
    refused(tmp_path, pin % 'task = "reader", ms = 5', "task.step.task", "mm_pin names itself")
    refused(tmp_path, pin % 'task = "nobody", ms = 5', "task.step.task", "no task is called 'nobody'")
    refused(tmp_path, pin % 'task = "owner"', "task[1].step[0].ms", "is required")
    refused(tmp_path, pin % 'task = 1, ms = 5', "task[1].step[0].task", "non-empty string")
    s = load(tmp_path, pin % 'task = "owner", ms = 5')
    assert s.tasks[1].steps[0].task == "owner" and s.tasks[1].steps[0].ms == 5


# -- the OOM killer --------------------------------------------------------------------

def view(pid, rss, mm_id=0, **kw):
    return TaskView(pid=pid, name=f"t{pid}", oom_score_adj=0, rss_pages=rss, pgtables_pages=0, mm_id=mm_id,
                    **kw)


def test_every_process_sharing_the_victims_mm_is_killed_with_it():
    owner, sharer, other = view(1, 5000, mm_id=1), view(2, 5000, mm_id=1), view(3, 100)
    d = out_of_memory(other, False, GLOBAL, False, [], [owner, sharer, other], TOTAL)
    # for_each_process with equal badness: the later one wins (points < chosen: next)
    assert d.action is OomAction.KILL and d.victim is sharer and d.sharers == (owner,)
    assert sum(" Kill process " in line for line in d.lines) == 1


def test_an_unshared_victim_kills_no_one_else_and_an_exited_sharer_is_not_signalled():
    a, b = view(1, 5000), view(2, 100)
    assert out_of_memory(b, False, GLOBAL, False, [], [a, b], TOTAL).sharers == ()
    owner, gone = view(1, 5000, mm_id=1), view(2, 5000, mm_id=1, has_mm=False)
    assert mm_sharers(owner, [owner, gone]) == ()


def test_task_will_free_mem_only_if_every_user_of_its_mm_is_dying():
    dying, alive = view(1, 10, mm_id=1, exiting=True), view(2, 10, mm_id=1)
    assert not task_will_free_mem(dying, [dying, alive])            # alive keeps the mm
    assert task_will_free_mem(dying, [dying, view(2, 10, mm_id=1, exiting=True)])
    assert task_will_free_mem(dying, [dying, view(2, 10, mm_id=1, has_mm=False)])
    assert not task_will_free_mem(view(1, 10, mm_id=1, exiting=True, mmf_oom_skip=True), [])
    assert not task_will_free_mem(alive, [dying, alive])            # not dying itself


def test_the_every_key_example_of_the_docs_loads_with_its_sharer_and_pin(tmp_path):
    import os
    import re
    from tests.helpers import REPO
    with open(os.path.join(REPO, "docs", "scenario-format.md")) as f:
        doc = f.read()
    example = re.search(r"## A file that uses every key.*?```toml\n(.*?)```", doc, re.S).group(1)
    s = load(tmp_path, example)
    helper = next(t for t in s.tasks if t.mm)
    assert (helper.mm, helper.memcg) == ("gpu", "batch")
    assert any(st.op == "mm_pin" for t in s.tasks for st in t.steps)
