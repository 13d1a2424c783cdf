"""oomemu sweep's pure parts: the grid of points, resuming from a results file, the summary."""

import csv
import io
import json

import pytest

from emulator import UsageError, load_scenario
from emulator.tools import sweep

pytestmark = pytest.mark.timeout(10)


def test_constants_apply_to_the_policies_that_have_them_and_the_others_run_with_defaults():
    s = [load_scenario("mlocked")]
    points = sweep.grid(s, ["v4.17", "timeout"], sweep.parse_sets(["reap_timeout_s=0.5,10"]), repeat=2)
    got = sorted((p.policy, p.set, p.repeat) for p in points)
    assert got == [("timeout", (("reap_timeout_s", "0.5"),), 0), ("timeout", (("reap_timeout_s", "0.5"),), 1),
                   ("timeout", (("reap_timeout_s", "10"),), 0), ("timeout", (("reap_timeout_s", "10"),), 1),
                   ("v4.17", (), 0), ("v4.17", (), 1)]
    assert [p.repeat for p in points] == sorted(p.repeat for p in points)     # first repeats first


@pytest.mark.parametrize("sets, says", [
    (["reap_timeout_s"], "--set 'reap_timeout_s': expected NAME=VALUE[,VALUE...]"),
    (["reap_timeout_s=1", "reap_timeout_s=2"], "--set reap_timeout_s: given twice"),
    (["nope=1"], "--set nope: none of the policies v4.17, timeout has it"),
    (["reap_timeout_s=1,-3"], "--set reap_timeout_s=-3: must be"),
    (["reap_timeout_s=1,2,1.0"], "--set reap_timeout_s: 1.0 is 1 again (each value once)"),   # one point, twice
    (["reap_timeout_s=5,5"], "--set reap_timeout_s: 5 is 5 again"),
])
def test_sweep_mistakes_are_one_line(sets, says):
    with pytest.raises(UsageError) as e:
        sweep.grid([load_scenario("mlocked")], ["v4.17", "timeout"], sweep.parse_sets(sets), 1)
    assert str(e.value).startswith(says) and "\n" not in str(e.value)


def test_a_results_file_says_which_points_are_done_and_a_torn_line_is_none(tmp_path):
    points = sweep.grid([load_scenario("mlocked")], ["timeout"], {"reap_timeout_s": ["1", "2"]}, 1)
    path = tmp_path / "r.jsonl"
    path.write_text(sweep._record(points[0], {"verdict": "resolved", "kills": 1})
                    + sweep._record(points[1], {"verdict": "resolved", "kills": 1})[:30])
    assert sweep.done_keys(str(path)) == {points[0].key}
    assert sweep.done_keys(str(tmp_path / "none.jsonl")) == set()


def rec(policy, value, kills, ttr, verdict="resolved", scenario="s~0"):
    return {"scenario": scenario, "policy": policy, "set": {"k": value} if value else {}, "verdict": verdict,
            "kills": kills, "min_kills": 1, "time_to_resolve_s": ttr}


def test_the_summary_takes_medians_counts_panics_and_marks_the_pareto_front():
    rows = sweep.summarize([rec("a", "1", 3, 1.0), rec("a", "1", 3, 1.2), rec("a", "1", 1, 0.9, "panic", "s~1"),
                            rec("a", "9", 1, 9.0), rec("a", "9", 1, 10.0),
                            rec("b", None, 3, 5.0), rec("b", None, 0, None, "error"),
                            rec("c", None, 4, 10.0)])
    by = {(r.policy, r.set): r for r in rows}
    fast, patient, worse = by[("a", (("k", "1"),))], by[("a", (("k", "9"),))], by[("b", ())]
    assert (fast.extra_mean, fast.ttr_median, fast.panics) == (pytest.approx(4 / 3), 1.1, 1)
    assert (patient.extra_mean, patient.ttr_median) == (0, 9.5)
    assert (worse.errors, worse.extra_mean) == (1, 2)
    # b: slower than a=1 and more kills, but it never panics; c: slower than a=9, and more kills
    assert fast.front and patient.front and worse.front and not by[("c", ())].front
    text = sweep.render(rows)
    assert text.splitlines()[0].split() == ["policy", "constants", "runs", "extra", "kills/run", "time", "to",
                                            "resolve", "panic", "hung", "error", "scenarios", "panic|hung", "front"]
    assert (fast.bad_text, patient.bad_text, worse.bad_text) == ("1/2 (50%)", "0/1 (0%)", "0/1 (0%)")
    assert json.dumps(rows[0].set)                                # plain data


def test_a_point_that_hangs_is_no_cheaper_for_it():
    """A hung run kills nobody more and has no time to resolve: one point hanging in 3 of
    4 scenarios, quick in the fourth, does not push off the front one that resolves all."""
    hangs = [rec("t", "1", 1, None, "hung", f"f~{i}") for i in range(3)] + [rec("t", "1", 1, 0.5, scenario="f~3")]
    patient = [rec("t", "9", 1, 3.0, scenario=f"f~{i}") for i in range(4)]
    rows = {r.set: r for r in sweep.summarize(hangs + patient)}
    assert rows[(("k", "9"),)].front and rows[(("k", "1"),)].front


def test_the_share_of_a_family_that_panics_or_hangs_counts_members_not_runs():
    recs = [rec("a", None, 1, 1.0, "hung", "f~0"), rec("a", None, 1, None, "hung", "f~0"),   # one member, twice
            rec("a", None, 1, 1.0, "panic", "f~1"), rec("a", None, 1, 1.0, scenario="f~2"),
            rec("a", None, 1, 1.0, scenario="f~3"), rec("a", None, 0, None, "error", "f~4")]
    (row,) = sweep.summarize(recs)
    assert (row.hangs, row.panics, row.errors) == (2, 1, 1)
    assert row.bad_text == "2/4 (50%)"            # f~0 and f~1 of the four with a verdict


def test_the_csv_has_a_column_per_constant_and_the_scalar_fields():
    recs = [dict(rec("timeout", "1", 2, 1.5), repeat=0, lagged=False, victims=[{"pid": 1}], log=["x"]),
            {**rec("v6.6", None, 1, None, "hung"), "set": {"oom_reaper_delay_s": "2"}, "repeat": 1}]
    rows = list(csv.DictReader(io.StringIO(sweep.to_csv(recs))))
    assert [r["set.k"] for r in rows] == ["1", ""]
    assert [r["set.oom_reaper_delay_s"] for r in rows] == ["", "2"]
    assert (rows[0]["verdict"], rows[0]["kills"], rows[0]["time_to_resolve_s"]) == ("resolved", "2", "1.5")
    assert rows[1]["time_to_resolve_s"] == "" and rows[1]["repeat"] == "1"
    assert "victims" not in rows[0] and "log" not in rows[0]


@pytest.mark.parametrize("done, total, elapsed, says", [
    (0, 10, 0.0, "starting"),
    (2, 10, 30.0, "4.0 runs/min, about 2 min left"),
    (3, 4, 30.0, "6.0 runs/min, about 10 s left"),
    (1, 100, 60.0, "1.0 runs/min, about 99 min left"),
])
def test_the_progress_line_says_the_rate_and_the_time_left(done, total, elapsed, says):
    assert sweep.eta_text(done, total, elapsed) == says


class FakeClient:
    """What check_workers asks of a Dask client: workers come, and each says what it runs."""
    def __init__(self, facts=None, raises=None, workers=True):
        self.facts, self.raises, self.workers = facts, raises, workers

    def wait_for_workers(self, n, timeout):
        if not self.workers:
            raise TimeoutError

    def run(self, fn):
        assert fn is sweep.point.worker_facts
        if self.raises:
            raise self.raises
        return self.facts


@pytest.mark.parametrize("client, says", [
    (FakeClient(workers=False), "--dask A: the scheduler has no workers (none came in 30 s)"),
    (FakeClient(raises=ModuleNotFoundError("No module named 'emulator'")), "--dask A: a worker cannot run oomemu"),
    (FakeClient({"tcp://w:1": {"host": "w", "system": "Linux", "digest": "0" * 16}}),
     "--dask: worker tcp://w:1 (w) has other oomemu code (digest 0000000000000000, here "),
    (FakeClient({"tcp://w:1": {"host": "w", "system": "Darwin", "digest": "x"}}),
     "--dask: worker tcp://w:1 (w) runs Darwin: oomemu needs Linux"),
])
def test_a_cluster_whose_workers_cannot_run_this_code_is_refused_in_one_line(client, says):
    with pytest.raises(UsageError) as e:
        sweep.check_workers(client, "A")
    assert str(e.value).startswith(says) and "\n" not in str(e.value)


def test_workers_running_this_code_are_taken():
    facts = {"tcp://w:1": {**sweep.point.worker_facts()}}
    assert sweep.check_workers(FakeClient(facts), "A") == facts


def test_the_code_digest_changes_with_a_line_of_the_model(tmp_path, monkeypatch):
    a = sweep.point.code_digest()
    assert a == sweep.point.code_digest() and len(a) == 16
    import shutil
    from pathlib import Path
    root = Path(sweep.point.__file__).resolve().parents[2]
    for top in ("emulator", "workers"):
        shutil.copytree(root / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "emulator" / "kernel" / "oom_kill.py").write_text(
        (root / "emulator" / "kernel" / "oom_kill.py").read_text() + "\n# one more line\n")
    monkeypatch.setattr(sweep.point, "__file__", str(tmp_path / "emulator" / "tools" / "point.py"))
    assert sweep.point.code_digest() != a


@pytest.mark.parametrize("rc, out, err, stopped, status, message", [
    (0, b'{"verdict": "resolved"}', b"", False, "ok", None),
    (0, b"", b"", False, "fault", "the point process gave no result (no output)"),
    (2, b"", b"oomemu: error: policy nope: unknown\n", False, "usage", "policy nope: unknown"),
    (-9, b"", b"", False, "usage", "its point process was ended by SIGKILL from outside the sweep "
                                   "(the host's OOM killer? see dmesg)"),
    (143, b"", b"", False, "usage", "its point process was ended by SIGTERM from outside the sweep"),
    (1, b"", b"Traceback...\nValueError: x\n", False, "fault", "the point process ended with exit status 1: "
                                                              "ValueError: x"),
    (143, b"", b"", True, "stopped", "the sweep was stopped"),
])
def test_a_point_process_s_ending_is_one_answer(rc, out, err, stopped, status, message):
    a = sweep.point._answer(rc, out, err, stopped)
    assert a["status"] == status and a.get("message") == message
    if status == "ok":
        assert a["result"] == {"verdict": "resolved"}


def test_two_scenarios_of_one_name_are_refused_not_run_as_one(tmp_path):
    """Points go by their scenario's name: two families of one base (mlocked~0 twice), or
    a name given twice, would be one point, run once and counted "in the file already"."""
    from emulator.tools import family
    paths = []
    for seed in (1, 2):
        paths.append(tmp_path / f"f{seed}.toml")
        paths[-1].write_text(f'[family]\nbase = "mlocked"\ncount = 2\nseed = {seed}\nmb = [0.5, 1.5]\n')
    members = family.load_family(str(paths[0])) + family.load_family(str(paths[1]))
    with pytest.raises(UsageError) as e:
        sweep.grid(members, ["v6.6"], {}, 1)
    assert str(e.value) == (f"two scenarios are named mlocked~0 ({paths[0]}#0 and {paths[1]}#0): "
                            "a sweep tells its points apart by their scenarios' names")
    with pytest.raises(UsageError, match="two scenarios are named mlocked "):
        sweep.grid([load_scenario("mlocked")] * 2, ["v6.6"], {}, 1)


def test_a_scenario_s_digest_is_what_it_is_not_where_it_came_from(tmp_path):
    from emulator.tools import family
    path = tmp_path / "f.toml"
    digests = []
    for seed in (1, 1, 2):
        path.write_text(f'[family]\nbase = "mlocked"\ncount = 1\nseed = {seed}\nmb = [0.5, 1.5]\n')
        digests.append(sweep.scenario_digest(family.load_family(str(path))[0]))
    assert digests[0] == digests[1] != digests[2]
    assert sweep.scenario_digest(load_scenario("mlocked")) == sweep.scenario_digest(load_scenario("mlocked"))


def test_a_run_the_machine_broke_runs_again_on_resume_and_its_rerun_replaces_it(tmp_path):
    """/dev/shm full or the host's OOM killer (an error of kind environment): the user makes
    room and runs the sweep again; that point was not done, and its new run is the one counted."""
    p0, p1 = sweep.grid([load_scenario("mlocked")], ["timeout"], {"reap_timeout_s": ["1", "2"]}, 1)
    path = tmp_path / "r.jsonl"
    broke = {"verdict": "error", "error_kind": "environment", "kills": 0}
    path.write_text(sweep._record(p0, broke) + sweep._record(p1, {"verdict": "error", "error_kind": "fault"}))
    assert sweep.done_keys(str(path)) == {p1.key}            # a fault of ours is an outcome to report
    with open(path, "a") as f:
        f.write(sweep._record(p0, {"verdict": "resolved", "kills": 1}))
    assert sweep.done_keys(str(path)) == {p0.key, p1.key}
    recs = sweep.read_records(str(path))
    assert [(r["set"], r["verdict"]) for r in recs] == [({"reap_timeout_s": "2"}, "error"),
                                                        ({"reap_timeout_s": "1"}, "resolved")]
    assert [(s.runs, s.errors) for s in sweep.summarize(recs)] == [(1, 0), (1, 1)]


def test_the_grid_of_a_large_family_is_made_at_once():
    """A family may have 10,000 members: the points' order is not found by a search of
    every scenario for each point (that took half a minute before anything ran)."""
    import dataclasses
    import time
    base = load_scenario("mlocked")
    members = [dataclasses.replace(base, name=f"m~{i}") for i in range(8000)]
    began = time.monotonic()
    points = sweep.grid(members, ["v6.6"], {"oom_reaper_delay_s": ["0", "1", "2", "5"]}, 1)
    assert len(points) == 32000 and time.monotonic() - began < 3.0
    assert [p.scenario for p in points[:3]] == ["m~0", "m~0", "m~0"] and points[4].scenario == "m~1"


def test_a_row_with_no_resolved_run_is_named_in_the_picture_not_dropped_from_it(tmp_path):
    """It has no time to resolve, so no place on the axes; v4.17 panicking on every member
    is the very row a reader looks for. Nothing resolved at all: a picture still, no warning."""
    import warnings
    pytest.importorskip("matplotlib")
    rows = sweep.summarize([rec("v4.17", None, 3, None, "panic"), rec("timeout", "1", 2, 1.0),
                            rec("timeout", "0.25", 3, None, "panic")])
    png = tmp_path / "s.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        undrawn = sweep.plot(rows, str(png))
        assert sorted((s.policy, s.set) for s in undrawn) == [("timeout", (("k", "0.25"),)), ("v4.17", ())]
        assert png.stat().st_size > 0
        assert [s.policy for s in sweep.plot(sweep.summarize([rec("v4.17", None, 3, None, "panic")]),
                                             str(tmp_path / "none.png"))] == ["v4.17"]
