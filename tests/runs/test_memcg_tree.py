"""Memcg trees with real processes: a charge fails at the first level over its limit on the
way up, the OOM is constrained to that memcg's subtree, and memory.oom.group kills a
memcg whole. The accounting check at the end of each run must hold (else: verdict error).
"""

import json

import pytest

import emulator
from tests.helpers import check_documented, write_scenario

pytestmark = pytest.mark.timeout(120)
SPEED = 10

# /jobs (200 MB) holds /jobs/web (80 MB) and /jobs/batch (300 MB: above its parent's, which
# binds, as the kernel allows); "outsider", the biggest task, is in the root memcg.
TREE = """
    memory_mb = 512
    min_kills = 1
    [[memcg]]
    name = "web"
    parent = "jobs"
    limit_mb = 80
    [[memcg]]
    name = "batch"
    parent = "jobs"
    limit_mb = 300
    [[memcg]]
    name = "jobs"
    limit_mb = 200
    [[task]]
    name = "outsider"
      [[task.vma]]
      kind = "anon"
      mb = 250
    [[task]]
    name = "web_a"
    memcg = "web"
    pgtables_mb = {web_pgt}
      [[task.vma]]
      kind = "anon"
      mb = {web_a}
    [[task]]
    name = "batch_big"
    memcg = "batch"
      [[task.vma]]
      kind = "anon"
      mb = {batch_big}
    [[task]]
    name = "grower"
    memcg = "{grower_memcg}"
    oom_score_adj = -1000
      [[task.vma]]
      kind = "anon"
      mb = 10
      [[task.step]]
      op = "sleep"
      ms = 100
      [[task.step]]
      op = "alloc"
      mb = {alloc}
"""


def messages(r) -> list[str]:
    """The log's lines without their dmesg timestamps."""
    return [line.split("] ", 1)[1] for line in r.log]


def run(tmp_path, text, **kw):
    r = emulator.run_scenario(write_scenario(tmp_path, text), policy="v6.6", speed=SPEED, **kw)
    acc = r.accounting
    assert r.verdict == "resolved" and acc["charged_pages"] == acc["rss_pages"] == acc["segment_pages"], r.summary()
    return r


def test_a_childs_limit_hit_kills_inside_the_child(tmp_path):
    # /jobs/web: web_a 30 + its page tables 10 (kmem, charged to its memcg) + grower 10 + 35 > 80;
    # batch_big (100) in the sibling is bigger. Without the page tables it would all fit.
    r = run(tmp_path, TREE.format(web_a=30, web_pgt=10, batch_big=100, grower_memcg="web", alloc=35))
    assert [(v.name, v.memcg, v.oom_memcg) for v in r.victims] == [("web_a", "/jobs/web", "/jobs/web")]
    assert "Task in /jobs/web killed as a result of limit of /jobs/web" in messages(r)
    assert "memory: usage 81920kB, limit 81920kB" in messages(r)


def test_the_parents_limit_hit_chooses_among_both_children(tmp_path, tmp_path_factory):
    # /jobs: web_a 60 + batch_big 100 + grower 10 + 60 > 200, though /jobs/batch (300) has room:
    # the biggest in /jobs is web_a, in the other child; outsider (250) is outside the domain
    trace = tmp_path_factory.mktemp("trace") / "t.jsonl"
    r = run(tmp_path, TREE.format(web_a=60, web_pgt=0, batch_big=50, grower_memcg="batch", alloc=90), trace=str(trace))
    assert [(v.name, v.memcg, v.oom_memcg) for v in r.victims] == [("web_a", "/jobs/web", "/jobs")]
    assert "Task in /jobs/web killed as a result of limit of /jobs" in messages(r)
    assert "memory: usage 204800kB, limit 204800kB" in messages(r)
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    check_documented(events)
    stall = next(e for e in events if e["ev"] == "alloc_stall")
    assert (stall["where"], stall["memcg"]) == ("memcg", 1)      # the charge failed at /jobs (index 1)


GROUP = """
    memory_mb = 512
    min_kills = 1
    [[memcg]]
    name = "svc"
    limit_mb = 100
    oom_group = true
    [[memcg]]
    name = "worker"
    parent = "svc"
    limit_mb = 90
    [[task]]
    name = "outsider"
      [[task.vma]]
      kind = "anon"
      mb = 200
    [[task]]
    name = "svc_main"
    memcg = "svc"
      [[task.vma]]
      kind = "anon"
      mb = 50
    [[task]]
    name = "svc_keep"
    memcg = "svc"
    oom_score_adj = -1000
      [[task.vma]]
      kind = "anon"
      mb = 10
    [[task]]
    name = "svc_helper"
    memcg = "svc"
      [[task.vma]]
      kind = "anon"
      mb = 10
    [[task]]
    name = "svc_w"
    memcg = "worker"
      [[task.vma]]
      kind = "anon"
      mb = 5
      [[task.step]]
      op = "sleep"
      ms = 100
      [[task.step]]
      op = "alloc"
      mb = 60
"""


def test_an_oom_group_is_killed_whole_sparing_oom_score_adj_min(tmp_path):
    # /svc: 50 + 10 + 10 + 5 + 60 > 100: svc_main is the victim, and /svc has memory.oom.group
    r = run(tmp_path, GROUP)
    assert [(v.name, v.memcg, v.oom_group) for v in r.victims] == [
        ("svc_main", "/svc", "/svc"), ("svc_helper", "/svc", "/svc"), ("svc_w", "/svc/worker", "/svc")]
    assert r.kills == 3
    log = messages(r)
    group = log.index("Tasks in /svc are going to be killed due to memory.oom.group set")
    killed = [i for i, line in enumerate(log) if line.startswith("Killed process")]
    assert len(killed) == 3 and killed[0] < group < killed[1] < killed[2]
    assert "(svc_helper)" in log[killed[1]] and "(svc_w)" in log[killed[2]]
    assert not any("(svc_keep)" in line or "(outsider)" in line for line in log)
