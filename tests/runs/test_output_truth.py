"""A run that raises in compare's pool stops the other cells of the pool, torn down
(Python API, real runs). (Through the command line: tests/cli/test_output_truth.py.)"""

import time

import pytest

from emulator.tools import compare
from emulator.policies import V417
from emulator.scenario import load_scenario
from tests.helpers import pool_processes, wait_for, write_scenario

pytestmark = pytest.mark.timeout(120)


class Broken(V417):
    """A policy that fails at the first kill (a fault of ours, as compare sees it)."""
    name = "broken"
    summary = "raises at the first kill"

    def wake_oom_reaper(self, victim, now):
        raise RuntimeError("broken on purpose")


def test_a_run_that_raises_stops_the_other_cells_of_the_pool(tmp_path):
    slow = load_scenario(write_scenario(tmp_path, """
        name = "slow"
        memory_mb = 64
        [[task]]
        name = "sleeper"
        vma = [{ kind = "anon", mb = 1 }]
        step = [{ op = "sleep", ms = 60000 }]
        """))
    started = time.monotonic()
    with pytest.raises(compare.CellFailed) as info:
        compare.run_matrix([slow, load_scenario("mlocked")], [Broken], speed=1, jobs=2)
    took = time.monotonic() - started
    assert (info.value.scenario, info.value.policy, info.value.usage) == ("mlocked", "broken", False)
    assert "broken on purpose" in info.value.message
    assert took < 30, took                                   # the slow cell (60 s) was stopped
    assert wait_for(lambda: not pool_processes(), 10), pool_processes()
    # (no worker and nothing in /dev/shm left: the autouse fixture checks)
