"""A fuzz of the scenario loader: mutated built-in files load or raise ScenarioError
(``make fuzz`` does the same on 2,000 files; tests/cli/test_fuzz_scenarios.py runs some)."""

import tempfile

import pytest
from hypothesis import HealthCheck, given, settings

from emulator.scenario import Scenario
from tests.fuzz_scenarios import load_mutant, mutants

pytestmark = pytest.mark.timeout(170)


@settings(max_examples=300, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutants())
def test_a_mutated_scenario_file_loads_or_raises_only_scenario_error(mutant):
    origin, raw = mutant
    with tempfile.TemporaryDirectory() as d:
        path, scenario, problem = load_mutant(raw, d)
    assert problem is None, f"mutant of {origin}: {problem}\n{raw[:2000]!r}"
    assert scenario is None or isinstance(scenario, Scenario)
