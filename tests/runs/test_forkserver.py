"""The fork server: workers are clones of one template, and still the supervisor's own.

What a user relies on: every task is a process of its own that ``ps`` names
(``workers.task --run RUN --index N``), a child of the run's supervisor (so it
dies with it and its death is seen at once), nothing of the template lingers,
and a template that dies half-way ends the run with nothing left behind.
"""

from __future__ import annotations

import os
import signal
import sys

import psutil
import pytest

from emulator.runtime import forkserver, names
from tests.helpers import end_process, spawn, wait_for, workers_of
from emulator.runtime.supervisor import Run, RunFault
from emulator.scenario import parse_scenario

pytestmark = pytest.mark.timeout(120)


def idle(n: int, name: str = "idle"):
    return parse_scenario({"name": name, "memory_mb": 32 + n, "task": [
        {"name": "t", "count": n, "vma": [{"kind": "anon", "mb": 1}]},
        {"name": "stepper", "step": [{"op": "sleep", "ms": 50}]}]}, source="<test>")


def children_of_run(run_id: str) -> list[psutil.Process]:
    """Live children of ours that are workers (or the template) of ``run_id``."""
    out = []
    for c in psutil.Process().children():
        try:
            cmd = c.cmdline()
            if c.status() != psutil.STATUS_ZOMBIE and "--run" in cmd and cmd[cmd.index("--run") + 1] == run_id:
                out.append(c)
        except psutil.Error:
            pass
    return out


@pytest.fixture
def no_child_left():
    """Every child process the test made is gone and reaped (a zombie is one left unreaped)."""
    before = {c.pid for c in psutil.Process().children()}
    yield
    left = [c for c in psutil.Process().children() if c.pid not in before]
    assert not left, [(c.pid, c.status()) for c in left]


def oom_score_adj(pid: int) -> int:
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())


def test_every_worker_is_a_child_of_the_supervisor_named_by_its_index(no_child_left):
    seen = {}

    def at_time_0(run):
        for t in run.tasks:
            p = psutil.Process(t.pid)
            cmd = p.cmdline()
            seen[t.index] = (p.ppid(), cmd[cmd.index("--index") + 1], cmd[cmd.index("--run") + 1],
                             oom_score_adj(t.pid), os.getpriority(os.PRIO_PROCESS, t.pid))
        seen["template"] = [c.pid for c in children_of_run(run.run_id)
                            if "template" in c.cmdline()]

    run = Run(idle(40), policy="v6.6", speed=10, on_start=at_time_0)
    result = run.execute()
    assert result.verdict == "resolved", result.error
    assert seen.pop("template") == [], "the template outlived the spawning"
    assert sorted(seen) == list(range(41))
    for index, (ppid, shown, run_id, adj, nice) in seen.items():
        assert ppid == os.getpid()
        assert shown == str(index)
        assert run_id == run.run_id
        assert adj == 1000           # the real OOM killer takes emulator workers first
        assert nice == os.getpriority(os.PRIO_PROCESS, 0)    # not the template's boost
    assert not children_of_run(run.run_id)


def test_workers_of_two_runs_at_once_keep_their_own_indexes(tmp_path):
    """Two held runs side by side: each template writes its own workers' indexes."""
    path = tmp_path / "two.toml"
    path.write_text('name = "two"\nmemory_mb = 64\n[[task]]\nname = "t"\ncount = 30\n'
                    '  [[task.vma]]\n  kind = "anon"\n  mb = 1\n')
    runs = [spawn([sys.executable, "-m", "emulator", "run", str(path), "--hold"]) for _ in range(2)]
    try:
        for p in runs:
            assert wait_for(lambda: len(workers_of(p.pid)) == 30, timeout=60), "the run did not start"
        for p in runs:
            cmds = [w.cmdline() for w in workers_of(p.pid)]
            assert sorted(int(c[c.index("--index") + 1]) for c in cmds) == list(range(30))
            (run_id,) = {c[c.index("--run") + 1] for c in cmds}          # one run's, and its own
            assert run_id.startswith(f"{p.pid}-")
    finally:
        for p in runs:
            end_process(p)
    for p in runs:
        assert not workers_of(p.pid)


def test_workers_forked_twice_and_reparented_where_clone_is_unknown(monkeypatch, no_child_left):
    """On an architecture whose clone(2) the fork server does not know, workers are forked
    twice and reparented to the supervisor (a child subreaper while spawning): the same run,
    the same children, and the subreaper flag as it was."""
    monkeypatch.setattr(forkserver, "clone_syscall", lambda: None)
    run = Run(idle(20), policy="v6.6", speed=10,
              on_start=lambda run: parents.update({t.index: psutil.Process(t.pid).ppid() for t in run.tasks}))
    parents: dict[int, int] = {}
    assert run.execute().verdict == "resolved"
    assert run._forkserver.mode == "fork"
    assert sorted(parents) == list(range(21)) and set(parents.values()) == {os.getpid()}
    assert forkserver._subreaper(False) is False


def test_a_template_that_dies_half_way_ends_the_run_and_leaves_nothing(monkeypatch, no_child_left):
    """SIGKILL to the template once it has made 3 workers: the run ends with the cause, and
    the workers it made (reported or not) are killed and reaped; no object stays."""
    real_spawn = forkserver.ForkServer.spawn

    def spawn(self, requests, made, check=None):
        count = [0]

        def made_then_kill(index, worker):
            made(index, worker)
            count[0] += 1
            if count[0] == 3:
                self.proc.send_signal(signal.SIGKILL)
        return real_spawn(self, requests, made_then_kill, check)

    monkeypatch.setattr(forkserver.ForkServer, "spawn", spawn)
    run = Run(idle(200), policy="v6.6", speed=10)
    with pytest.raises(RunFault, match="fork server .*signal SIGKILL.* of 201 workers"):
        run.execute()
    assert not children_of_run(run.run_id)
    assert run.run_id not in names.leftovers()


def test_a_worker_decodes_the_spec_it_was_sent():
    """The spec travels pickled; what the worker does is what the scenario says (here: an
    allocation that needs a kill, under a policy that says how)."""
    s = parse_scenario({"name": "one_kill", "memory_mb": 64, "task": [
        {"name": "big", "vma": [{"kind": "anon", "mb": 40}]},
        {"name": "hog", "step": [{"op": "alloc", "mb": 40}]}]}, source="<test>")
    result = Run(s, policy="v6.6", speed=10).execute()
    assert result.verdict == "resolved", result.error
    assert [v.name for v in result.victims] == ["big"]
