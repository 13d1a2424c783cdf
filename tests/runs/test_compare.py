"""A policy written in a user's own test runs through compare (Python API, real runs)."""

import pytest

from emulator.tools import compare
from emulator.policies import V417
from emulator.scenario import load_scenario
from tests.helpers import write_scenario

pytestmark = pytest.mark.timeout(300)


class Impatient(V417):
    """A policy written by a user in their own test: v4.17 with one try only."""
    name = "impatient"
    summary = "gives up after one try"
    DEFAULTS = dict(V417.DEFAULTS, max_oom_reap_retries=1)


# The victim holds its mmap_sem for 0.55 s after the OOM kill: v4.17's ten tries (1 s)
# outlast it, one try (0.1 s) does not. The bystander is in D state when killed, so
# the reaper (not its own exit) frees it. At speed 2 each margin is 200 ms of real time.
SHORT_HOLD = """
    name = "short_hold"
    memory_mb = 256
    [[task]]
    name = "holder"
      [[task.vma]]
      kind = "anon"
      mb = 100
      [[task.step]]
      op = "mmap_sem_down"
      [[task.step]]
      op = "busy"
      ms = 650
      [[task.step]]
      op = "mmap_sem_up"
    [[task]]
    name = "bystander"
      [[task.vma]]
      kind = "anon"
      mb = 60
      [[task.step]]
      op = "busy"
      ms = 1500
    [[task]]
    name = "allocator"
    oom_score_adj = -1000        # spared: it holds most of its request when the OOM comes
      [[task.vma]]
      kind = "anon"
      mb = 10
      [[task.step]]
      op = "sleep"
      ms = 100
      [[task.step]]
      op = "alloc"
      mb = 120
"""


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_policy_defined_in_a_test_runs_through_compare(tmp_path, jobs):
    s = load_scenario(write_scenario(tmp_path, SHORT_HOLD, "short_hold"))
    cells = compare.run_matrix([s], [Impatient, "v4.17"], speed=2, jobs=jobs)
    by = {c.policy: c for c in cells}
    assert list(by) == ["impatient", "v4.17"]
    outcome = lambda c: (c.runs[0]["verdict"], c.runs[0]["kills"])
    assert outcome(by["impatient"]) == ("resolved", 2)               # its one try: gave up at once
    assert outcome(by["v4.17"]) == ("resolved", 1)                   # ten tries waited the hold out
    assert by["impatient"].matches() is None                        # the file states nothing for it
