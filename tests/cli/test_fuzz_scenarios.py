"""What the scenario loader accepts runs: a few mutated built-in files through
``oomemu run`` (``make fuzz`` does the same on 2,000 files)."""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from emulator.scenario import Scenario
from tests.fuzz_scenarios import load_mutant, mutants, run_cli, runnable

pytestmark = pytest.mark.timeout(170)

CLI_RUNS = 8


def test_mutated_scenarios_that_load_run_without_a_traceback(tmp_path):
    """A few accepted mutants through ``oomemu run``: exit 0, 2 or 3, no traceback, no hang."""
    picked: list[tuple[str, Scenario]] = []

    @settings(max_examples=400, deadline=None, database=None, derandomize=True,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(mutants())
    def pick(mutant):
        if len(picked) >= CLI_RUNS:
            return
        path, scenario, problem = load_mutant(mutant[1], str(tmp_path))
        assert problem is None, problem
        if scenario is not None and runnable(scenario, max_tasks=16, max_mb=512):
            picked.append((path, scenario))

    pick()
    assert len(picked) == CLI_RUNS, f"only {len(picked)} of 400 mutants load and are small enough to run"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda item: (item[0], *run_cli(*item, timeout=60)), picked))
    failed = [(os.path.basename(path), problem, (tmp_path / os.path.basename(path)).read_bytes()[:1500])
              for path, problem, _, _ in results if problem]
    assert not failed, failed
