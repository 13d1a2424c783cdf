"""oomemu compare: the table, the stated outcomes, and a policy from outside the package."""

import json
import os
import sys

import pytest

from emulator.tools import claims, compare
from emulator.policies import V417
from emulator.scenario import builtin_names, load_scenario
from tests.helpers import REPO, oomemu, started, write_scenario

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


def test_compare_check_agrees_with_every_stated_outcome(tmp_path):
    out = tmp_path / "table.md"
    p = oomemu("compare", "--speed", "10", "--check", "--format", "markdown", "--out", str(out), timeout=250)
    assert p.returncode == 0, out.read_text() + p.stderr
    text = out.read_text()
    assert "!" not in text.replace("<!--", "")
    for name in builtin_names():
        assert f"| `{name}` |" in text
    assert p.stderr == ""                                            # no progress when piped


def test_compare_usage_errors():
    p = oomemu("compare", "--policies", "v4.17,nope")
    assert p.returncode == 2 and "unknown policy 'nope'" in p.stderr and p.stderr.count("\n") == 1


CALM = """
    name = "calm"
    memory_mb = 64
    [[task]]
    name = "t"
      [[task.vma]]
      kind = "anon"
      mb = 8
    [expected]
    "v4.17" = { verdict = "panic", kills = 1, why = "stated wrongly on purpose: nothing here runs out of memory" }
    timeout = { verdict = "resolved", kills = 0, why = "nothing runs out of memory, so nobody is killed" }
"""


@pytest.mark.parametrize("check", [True, False])
def test_compare_check_exits_3_when_a_stated_outcome_is_wrong(tmp_path, check):
    path = write_scenario(tmp_path, CALM, "calm")
    p = oomemu("compare", path, "--policies", "v4.17,timeout", *(["--check"] if check else []))
    assert p.returncode == (3 if check else 0), p.stderr
    assert p.stderr == ("oomemu compare: 1 cell(s) differ from the stated outcome\n" if check else "")
    rows = {l.split()[0]: l for l in p.stdout.splitlines()}
    assert rows["calm"].split()[1:] == ["ok", "0/0", "!", "ok", "0/0"], p.stdout
    assert rows["!"].startswith("! calm under v4.17: stated panic with 1 kill (stated wrongly on purpose")
    assert rows["!"].endswith("measured ok 0/0 x1")


def readme_with_stale_table(tmp_path):
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    head, rest = text.split(claims.BEGIN, 1)
    _, tail = rest.split(claims.END, 1)
    path = tmp_path / "README.md"
    path.write_text(head + claims.BEGIN + "\n| `mlocked` | STALE |\n" + claims.END + tail)
    return path, head, tail


def test_make_claims_rewrites_the_table_and_nothing_else(tmp_path):
    """``make claims``'s engine on a copy of the README: the block between the
    markers is measured anew; every byte before and after it stays."""
    path, head, tail = readme_with_stale_table(tmp_path)
    with started([sys.executable, "-m", "emulator.tools.claims", str(path), "--repeat", "1", "--speed", "10"],
                 cwd=REPO) as p:
        out, err = p.communicate(timeout=250)
    n = len(builtin_names())
    assert p.returncode == 0, out + err
    assert out == f"{path}: claims table written ({4 * n} cells, 0 differ from the stated outcome)\n"
    text = path.read_text()
    assert text.startswith(head + claims.BEGIN + "\n") and text.endswith(claims.END + tail)
    block = text[len(head):len(text) - len(tail)]
    assert "STALE" not in block
    lines = block.splitlines()
    assert lines[1] == ("<!-- generated by `make claims` (oomemu compare --repeat 1 --speed 10); "
                        "do not edit by hand -->")
    assert "| scenario | `v4.17` | `timeout` | `handover` | `v6.6` |" in lines
    for name in builtin_names():
        row = next(l for l in lines if l.startswith(f"| `{name}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        s = load_scenario(name)
        stated = [f"{compare.SHORT[e.verdict]} {e.kills}/{s.min_kills}" for e in
                  (s.expected[p] for p in ("v4.17", "timeout", "handover", "v6.6"))]
        assert [" ".join(c.split()[:2]) for c in cells] == stated and "!" not in row, row
        reasons = lines.index(f"- `{name}`: {load_scenario(name).description.strip().splitlines()[0]}")
        assert [l.split("`")[1] for l in lines[reasons + 1:reasons + 5]] == ["v4.17", "timeout", "handover", "v6.6"]


def test_make_claims_without_the_markers_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# nothing to fill\n")
    with started([sys.executable, "-m", "emulator.tools.claims", str(path)], cwd=REPO) as p:
        out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.count("\n") == 1 and "no <!-- claims:begin --> ... <!-- claims:end -->" in err
    assert path.read_text() == "# nothing to fill\n"
