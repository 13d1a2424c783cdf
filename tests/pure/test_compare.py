"""oomemu compare's cells, made by hand: how a cell reads, when repeats disagree, the
table in each format; and every built-in scenario states an outcome for every policy."""

import json

import pytest

from emulator.tools import compare
from emulator.policies import DAEMONS
from emulator.scenario import builtin_names, load_scenario

pytestmark = pytest.mark.timeout(60)


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
        assert set(s.expected) >= {"v4.17", "timeout", "handover", "v6.6"} | {f"v6.6+{d}" for d in DAEMONS}, name
        assert all(len(e.why) > 20 for e in s.expected.values()), name
