"""oomemu compare: the table, the stated outcomes, and a policy from outside the package."""

import json
import subprocess
import sys

import pytest

from emulator import compare
from emulator.policies import V417
from emulator.scenario import builtin_names, load_scenario

pytestmark = pytest.mark.timeout(300)


def fake_cell(scenario="mlocked", policy="v4.17", runs=()):
    c = compare.Cell(load_scenario(scenario), policy)
    for verdict, kills, ttr in runs:
        c.runs.append({"scenario": scenario, "policy": policy, "verdict": verdict, "kills": kills,
                       "min_kills": 1, "extra_kills": max(0, kills - 1), "time_to_resolve_s": ttr})
    return c


def test_cell_text_shows_verdict_kills_extra_and_time():
    assert fake_cell(runs=[("panic", 3, None)]).text() == "panic 3/1"
    assert fake_cell(policy="timeout", runs=[("resolved", 1, 1.25)]).text() == "ok 1/1 1.2s"
    c = fake_cell(policy="timeout", runs=[("resolved", 2, 0.7)])
    assert c.text() == "ok 2/1 +1 0.7s !"            # the file states 1 kill
    assert c.matches() is False and compare.mismatches([c]) == [c]


def test_repeats_that_disagree_say_so():
    c = fake_cell(runs=[("panic", 3, None), ("panic", 3, None), ("resolved", 2, 1.0)])
    assert not c.agree()
    assert c.text().startswith("panic 3/1 x2, ok 2/1 +1 x1")


def test_formats():
    cells = [fake_cell(runs=[("panic", 3, None)]), fake_cell(policy="timeout", runs=[("resolved", 1, 1.3)])]
    table = compare.format_table(cells)
    assert table.splitlines()[0].split() == ["scenario", "v4.17", "timeout"]
    md = compare.format_markdown(cells)
    assert "| `mlocked` | panic 3/1 | ok 1/1 1.3s |" in md
    rows = compare.format_csv(cells).splitlines()
    assert rows[0].startswith("scenario,policy,runs,outcomes") and len(rows) == 3
    data = json.loads(compare.format_json(cells))
    assert data[1]["matches"] is True and data[1]["runs"][0]["kills"] == 1


def test_every_builtin_scenario_states_an_outcome_for_every_policy():
    for name in builtin_names():
        s = load_scenario(name)
        assert set(s.expected) >= {"v4.17", "timeout", "handover", "v6.6"}, name
        assert all(len(e.why) > 20 for e in s.expected.values()), name


class Impatient(V417):
    """A policy written by a user in their own test: v4.17 with one try only."""
    name = "impatient"
    summary = "gives up after one try"
    DEFAULTS = dict(V417.DEFAULTS, max_oom_reap_retries=1)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_policy_defined_in_a_test_runs_through_compare(jobs):
    s = load_scenario("mmap_sem_held")
    cells = compare.run_matrix([s], [Impatient, "timeout"], speed=10, jobs=jobs)
    by = {c.policy: c for c in cells}
    assert set(by) == {"impatient", "timeout"}
    imp = by["impatient"].runs[0]
    assert imp["kills"] == 2 and imp["verdict"] == "resolved"       # gave up after 0.1 s
    assert by["timeout"].runs[0]["kills"] == 1
    assert by["impatient"].matches() is None                        # the file states nothing for it


def test_compare_check_agrees_with_every_stated_outcome(tmp_path):
    out = tmp_path / "table.md"
    p = subprocess.run([sys.executable, "-m", "emulator", "compare", "--speed", "10", "--check",
                        "--format", "markdown", "--out", str(out)],
                       capture_output=True, text=True, timeout=280)
    assert p.returncode == 0, out.read_text() + p.stderr
    text = out.read_text()
    assert "!" not in text.replace("<!--", "")
    for name in builtin_names():
        assert f"| `{name}` |" in text
    assert p.stderr == ""                                            # no progress when piped


def test_compare_usage_errors():
    p = subprocess.run([sys.executable, "-m", "emulator", "compare", "--policies", "v4.17,nope"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "unknown policy 'nope'" in p.stderr and p.stderr.count("\n") == 1
