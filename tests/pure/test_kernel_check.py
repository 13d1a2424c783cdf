"""kernel-check's comparison (emulator.tools.kernel_check), without a kernel: what counts as
the same outcome, and what a cell says."""

import pytest

from emulator.kernel.verdict import Verdict
from emulator.result import RunResult, VictimRecord
from emulator.tools.kernel_check import Outcome, cell, host_outcome, outcome

pytestmark = pytest.mark.timeout(10)


def result(policy, verdict, victims, diverged=None):
    return RunResult("s", policy, 1.0, Verdict(verdict), len(victims), 1, None,
                     [VictimRecord(v, 100 + i, 0.1) for i, v in enumerate(victims)], diverged=diverged)


def test_victims_are_compared_by_task_name_without_a_copys_number():
    assert outcome(result("host", "resolved", ["locked-2"])) == outcome(result("v6.6", "resolved", ["locked-0"]))
    assert outcome(result("host", "resolved", ["db", "bystander"])).show() == "ok 2: db,bystander"


def test_a_policys_panic_after_a_global_oom_is_the_hosts_hung():
    assert outcome(result("v4.17", "panic", ["a", "b"]), global_oom=True).verdict == "hung"
    assert outcome(result("v4.17", "panic", ["a", "b"]), global_oom=False).verdict == "panic"
    assert outcome(result("host", "hung", ["a"])).verdict == "hung"


def test_a_cell_agrees_only_when_every_run_gave_the_hosts_outcome():
    host = Outcome("resolved", 1, ("victim",))
    other = Outcome("resolved", 2, ("victim", "bystander"))
    assert cell([host, host], host) == "= ok 1: victim x2"
    assert cell([host, other], host).startswith("!= ")
    assert cell([other], None) == "ok 2: victim,bystander x1"


def test_diverged_host_runs_are_shown_and_not_compared():
    runs = [result("host", "resolved", ["spared"], diverged="spared was meant to be spared"),
            result("host", "resolved", ["victim"])]
    host, shown = host_outcome(runs)
    assert host == Outcome("resolved", 1, ("victim",)) and shown == "ok 1: victim x1; diverged x1"
    host, shown = host_outcome(runs[:1])
    assert host is None and shown == "diverged x1"


def test_the_hosts_outcome_is_what_most_of_its_runs_gave():
    two, one = ["sparse", "bystander"], ["sparse"]
    host, shown = host_outcome([result("host", "resolved", v) for v in (two, one, two)])
    assert host == Outcome("resolved", 2, ("sparse", "bystander"))
    assert shown == "ok 2: sparse,bystander x2; ok 1: sparse x1"
    assert host_outcome([result("host", "resolved", v) for v in (two, one)])[0] is None     # no majority


def test_host_mode_refuses_hundreds_of_tasks_whose_interpreters_would_decide(tmp_path):
    from emulator import load_scenario
    from emulator.host.features import HOST_MAX_TASKS, refusals
    from tests.helpers import write_scenario
    phone = load_scenario("phone")
    (why,) = refusals(phone, cgroup_v2=True)
    assert why.startswith(f"{len(phone.tasks)} tasks: at most {HOST_MAX_TASKS}")
    text = f'memory_mb = 256\n[[task]]\nname = "t"\ncount = {HOST_MAX_TASKS}\nvma = [{{ kind = "anon", mb = 1 }}]\n'
    assert refusals(load_scenario(write_scenario(tmp_path, text)), cgroup_v2=True) == []
