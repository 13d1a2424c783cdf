"""What a run says of its real time: when it was ready and reached its verdict, each OOM
kill's stall and signal (its round trip), how late the reaper acted past a deadline.
Their consistency is asserted here; their sizes are figures, printed by make bench."""

import time

import pytest

import emulator
from emulator.runtime.supervisor import Run
from tests.helpers import check_documented

pytestmark = pytest.mark.timeout(120)


def test_a_run_says_when_it_was_ready_when_it_ended_and_each_kills_round_trip():
    began = time.monotonic()
    run = Run(emulator.load_scenario("mmap_sem_held"), policy="v4.17", speed=10)
    r = run.execute()
    wall = time.monotonic() - began
    assert r.verdict == "resolved" and r.kills == 2
    assert 0 < r.ready_real_s < r.verdict_real_s < wall
    kills = [e for e in run.tracer.events if e["ev"] == "oom_kill"]
    assert len(kills) == 2
    for e in kills:                      # the requester's charge failed, then the signal went, in this run
        assert began < e["stall_monotonic"] <= e["signal_monotonic"] < began + wall
    # v4.17 gives up on the victim after its ten tries: how late it acted, in real time
    deadline = [e for e in run.tracer.events if e["ev"] == "reap_deadline"]
    assert len(deadline) == 1 and 0 <= deadline[0]["late_real_ms"] < wall * 1000
    check_documented(run.tracer.events)

