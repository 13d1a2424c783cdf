"""A fuzz of the scenario loader: mutated built-in files load or raise ScenarioError,
and what loads runs (``make fuzz`` does the same on 2,000 files)."""

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from emulator.scenario import Scenario
from tests.fuzz_scenarios import check_load, mutants, run_cli, runnable

pytestmark = pytest.mark.timeout(170)

CLI_RUNS = 8


def _load(raw: bytes, directory: str):
    fd, path = tempfile.mkstemp(suffix=".toml", dir=directory)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return path, *check_load(path)


@settings(max_examples=300, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutants())
def test_a_mutated_scenario_file_loads_or_raises_only_scenario_error(mutant):
    origin, raw = mutant
    with tempfile.TemporaryDirectory() as d:
        path, scenario, problem = _load(raw, d)
    assert problem is None, f"mutant of {origin}: {problem}\n{raw[:2000]!r}"
    assert scenario is None or isinstance(scenario, Scenario)


def test_mutated_scenarios_that_load_run_without_a_traceback(tmp_path):
    """A few accepted mutants through ``oomemu run``: exit 0, 2 or 3, no traceback, no hang."""
    picked: list[tuple[str, Scenario]] = []

    @settings(max_examples=400, deadline=None, database=None, derandomize=True,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(mutants())
    def pick(mutant):
        if len(picked) >= CLI_RUNS:
            return
        path, scenario, problem = _load(mutant[1], str(tmp_path))
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
