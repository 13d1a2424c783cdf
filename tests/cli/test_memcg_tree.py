"""Memcg trees from the command line: ps shows each task's memcg as a cgroup path, and a
tree the loader refuses is one line and exit 2."""

import pytest

from emulator.runtime import names
from tests.helpers import HeldRun, oomemu, write_scenario

pytestmark = pytest.mark.timeout(120)

TREE = """
    memory_mb = 64
    [[memcg]]
    name = "web"
    parent = "{parent}"
    limit_mb = 16
    [[memcg]]
    name = "jobs"
    limit_mb = 32
    oom_group = true
    [[task]]
    name = "server"
    memcg = "web"
    vma = [{{ kind = "anon", mb = 4 }}]
    [[task]]
    name = "cron"
    memcg = "jobs"
    vma = [{{ kind = "anon", mb = 2 }}]
    [[task]]
    name = "init"
    vma = [{{ kind = "anon", mb = 1 }}]
"""


def test_ps_shows_each_tasks_memcg_path(tmp_path):
    with HeldRun(write_scenario(tmp_path, TREE.format(parent="jobs"), "tree"), "v6.6") as run:
        p = oomemu("ps", run.id)
        assert p.returncode == 0, p.stderr
        lines = p.stdout.splitlines()
        assert lines[1].split()[:4] == ["PID", "NAME", "MEMCG", "STATE"], p.stdout
        memcg = {line.split()[1]: line.split()[2] for line in lines[2:]}
        assert memcg == {"server": "/jobs/web", "cron": "/jobs", "init": "/"}, p.stdout
        run.stop()
    assert run.id not in names.leftovers()


def test_a_cycle_of_parents_is_one_line_and_exit_2(tmp_path):
    text = TREE.format(parent="jobs").replace('limit_mb = 32', 'limit_mb = 32\n    parent = "web"')
    path = write_scenario(tmp_path, text, "cycle")
    p = oomemu("run", path)
    assert (p.returncode, p.stdout) == (2, ""), p
    assert p.stderr.count("\n") == 1 and "memcg[0].parent: web: its parents make a cycle (web -> jobs -> web)" \
        in p.stderr, p.stderr
