"""What pictures and compare tell a user is true and readable, checked on traces and
cells made by hand (no processes):

- the story window keeps time 0 when the lead-in is short;
- a reap that freed memory is drawn green and says how much;
- a run with 50 tasks folds its idle ones; more busy tasks than fit are counted;
- a run that ends in `error` (or any verdict compare does not know) is shown
  as such, adds no time, is a mismatch; a run that raises ends compare in one
  line with exit 2 or 1.

(The same on real runs through the command line: tests/cli/test_output_truth.py.)
"""

import csv
import io
import json
import random
import signal

import pytest

from emulator.tools import cli, compare, timeline
from emulator.errors import UsageError
from emulator.result import RunResult
from emulator.scenario import load_scenario
from tests.helpers import reaper_collections

pytestmark = pytest.mark.timeout(120)


# -- the time axis ------------------------------------------------------------

def test_story_window_keeps_time_zero_when_the_lead_in_is_short():
    events = [{"t": 0.0, "ev": "run_start"}, {"t": 0.1, "ev": "alloc_stall", "pid": 0},
              {"t": 2.0, "ev": "run_end", "verdict": "resolved", "kills": 1}]
    lo, hi = timeline.story_window(timeline.build(events))
    assert lo == 0 and 2.0 < hi < 2.1
    events[-1]["t"] = 0.15                                 # a 50 ms story after 100 ms of nothing
    lo, hi = timeline.story_window(timeline.build(events))
    assert 0.09 < lo < 0.1 and 0.15 < hi < 0.16


# -- the reaper's marks ------------------------------------------------------

def synthetic(n_idle: int, n_victims: int, freed_kb: int = 4096) -> list[dict]:
    """A trace of a run with idle tasks and victims that are reaped (no processes)."""
    tasks = [{"name": f"idle-{i}", "pid": 1000 + i} for i in range(n_idle)]
    tasks += [{"name": f"victim-{i}", "pid": 5000 + i} for i in range(n_victims)]
    ev = [{"t": 0.0, "ev": "run_start", "pid": 0, "task": "", "free_kb": 1024, "scenario": "many",
           "policy": "v4.17", "tasks": tasks}]
    for i in range(n_victims):
        pid, name, t = 5000 + i, f"victim-{i}", 0.1 + 0.01 * i
        ev += [{"t": t, "ev": "oom_kill", "pid": pid, "task": name, "free_kb": 1024},
               {"t": t, "ev": "mark_victim", "pid": pid, "task": name, "free_kb": 1024},
               {"t": t + 0.001, "ev": "start_task_reaping", "pid": pid, "task": name, "free_kb": 1024},
               {"t": t + 0.002, "ev": "finish_task_reaping", "pid": pid, "task": name, "free_kb": 1024 + freed_kb,
                "freed_kb": freed_kb, "left_kb": 0},
               {"t": t + 0.003, "ev": "oom_skip_set", "pid": pid, "task": name, "free_kb": 1024, "by": "oom_reaper"},
               {"t": t + 0.004, "ev": "exited", "pid": pid, "task": name, "free_kb": 1024, "crashed": False}]
    ev.append({"t": 1.0, "ev": "run_end", "pid": 0, "task": "", "free_kb": 1024, "verdict": "resolved",
               "kills": n_victims})
    return ev


def test_a_reap_that_freed_memory_is_green_and_says_how_much():
    plot = pytest.importorskip("emulator.tools.plot")
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgba
    tl = timeline.build(synthetic(2, 1, freed_kb=4096))
    fig = plot.figure([tl])
    try:
        (_, lanes), = plot.run_axes(fig)
        cols = reaper_collections(lanes)
        assert plot.REAPER_STYLES["nothing"][0] not in cols
        green = cols[plot.REAPER_STYLES["freed"][0]]
        assert [tuple(c) for c in green.get_facecolors()] == [to_rgba(plot.FREED)]
        assert "reaped 4 MB" in [t.get_text() for t in lanes.texts]
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


# -- many tasks ----------------------------------------------------------------

def test_fold_lanes_keeps_every_lane_once_and_fits_the_cap():
    rnd = random.Random(8)
    for _ in range(300):
        lanes = []
        for i in range(rnd.randrange(0, 120)):
            lane = timeline.Lane(f"t{i}", i, [timeline.Span(0, 1, rnd.choice(
                [timeline.RUNNING] * 3 + [timeline.STALLED, timeline.D_STATE, timeline.EXITING]))])
            if rnd.random() < 0.1:
                lane.kills.append(0.5)
            lanes.append(lane)
        cap = rnd.randrange(3, 40)
        f = timeline.fold_lanes(lanes, cap)
        ids = [l.pid for l in f.shown + f.idle + f.hidden]
        assert sorted(ids) == list(range(len(lanes)))
        assert len(f.shown) + bool(f.idle) + bool(f.hidden) <= cap
        assert all(timeline.is_idle(l) for l in f.idle)
        assert not any(timeline.is_idle(l) for l in f.hidden)
        if len(lanes) <= cap:
            assert f.shown == lanes
        if f.hidden:           # blocked tasks, then victims in kill order, are kept before the others
            assert max(timeline.keep_first(l) for l in f.shown) <= min(timeline.keep_first(l) for l in f.hidden)


def test_a_picture_of_50_tasks_folds_the_idle_ones(tmp_path):
    plot = pytest.importorskip("emulator.tools.plot")
    pytest.importorskip("matplotlib")
    tl = timeline.build(synthetic(48, 2))
    fig = plot.figure([tl])
    try:
        (_, lanes), = plot.run_axes(fig)
        rows = [t.get_text() for t in lanes.get_yticklabels()]
        assert rows == ["oom_reaper", "victim-0 (5000)", "victim-1 (5001)", "48 idle tasks"]
        assert fig.get_size_inches()[1] < 8
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)
    tl = timeline.build(synthetic(10, 60))                  # more busy tasks than rows
    fig = plot.figure([tl])
    try:
        (_, lanes), = plot.run_axes(fig)
        rows = [t.get_text() for t in lanes.get_yticklabels()]
        assert len(rows) == 1 + timeline.MAX_LANES and rows[-2:] == ["10 idle tasks", "32 more tasks"]
        assert any(t.get_text().startswith("  32 more tasks, something traced, not drawn: victim-28..59")
                   for t in lanes.texts)
    finally:
        plt.close(fig)


# -- compare: verdicts it does not know, runs that raise ------------------------

def fake_cell(runs, scenario="mlocked", policy="timeout"):
    c = compare.Cell(load_scenario(scenario), policy)
    for verdict, kills, ttr, extra in runs:
        c.runs.append({"scenario": scenario, "policy": policy, "verdict": verdict, "kills": kills,
                       "min_kills": 1, "extra_kills": max(0, kills - 1), "time_to_resolve_s": ttr,
                       "log": ["[    0.1] oomemu: worker 12 (locked-0) died of SIGBUS"], **extra})
    return c


def test_an_error_or_unknown_verdict_is_shown_and_never_an_outcome():
    err = fake_cell([("resolved", 1, 1.0, {}), ("error", 0, 9.0, {"error": "worker died of SIGBUS: /dev/shm is full"})])
    assert err.text().startswith("error x1, ok 1/1 x1") or err.text().startswith("ok 1/1 x1, error x1")
    assert err.times() == [1.0] and err.text().endswith(" 1.0s !")
    assert err.matches() is False and compare.mismatches([err]) == [err]
    odd = fake_cell([("stopped", 0, None, {})], policy="v4.17")
    assert odd.text() == "stopped !" and odd.matches() is False
    unstated = fake_cell([("error", 0, None, {})], policy="no-such-policy")     # the file states nothing
    assert unstated.expected is None and unstated.matches() is False
    cells = [err, odd, unstated]
    table = compare.format_table(cells)
    assert "1 of 2 runs ended in error: worker died of SIGBUS: /dev/shm is full" in table
    assert "died of SIGBUS" in table.split("stopped")[-1]                    # the log's last line, else
    md = compare.format_markdown(cells)
    assert "`worker died of SIGBUS: /dev/shm is full`" in md
    rows = list(csv.DictReader(io.StringIO(compare.format_csv(cells))))
    assert (rows[0]["errors"], rows[0]["error_cause"]) == ("1", "worker died of SIGBUS: /dev/shm is full")
    data = json.loads(compare.format_json(cells))
    assert data[0]["errors"] == 1 and [r["matches"] for r in data[0]["runs"]] == [True, False]
    from emulator.tools import claims
    assert "| `mlocked` |" in claims.render(cells, repeat=2, speed=10)


@pytest.fixture
def sigterm_restored():
    """cli.main installs its SIGTERM handler: give pytest its own back."""
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def test_compare_check_counts_an_error_run_as_a_mismatch(monkeypatch, capsys, sigterm_restored):
    import emulator.runtime.supervisor as sup

    def broken_run(scenario, policy, speed, trace=None, **kw):
        return RunResult(scenario.name, str(policy), speed, "error", 0, 1, None,
                         log=["oomemu: worker 7 (locked-0) died of SIGBUS"])
    monkeypatch.setattr(sup, "run_scenario", broken_run)
    code = cli.main(["compare", "mlocked", "--policies", "timeout", "--jobs", "1", "--check"])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_CHECK
    assert "error !" in out and "1 of 1 runs ended in error: oomemu: worker 7 (locked-0) died of SIGBUS" in out
    assert "ended in error" in err and err.count("\n") == 1


@pytest.mark.parametrize("raised, code, words", [
    (UsageError("/dev/shm has 60 MB free, the run needs 256 MB"), cli.EXIT_USAGE, "oomemu: error: mlocked under"),
    (RuntimeError("a bug of ours"), cli.EXIT_FAULT, "oomemu: internal error: mlocked under"),
])
def test_a_run_that_raises_in_compare_is_one_line_and_its_exit_code(monkeypatch, capsys, sigterm_restored,
                                                                   raised, code, words):
    import emulator.runtime.supervisor as sup

    def raising_run(*a, **kw):
        raise raised
    monkeypatch.setattr(sup, "run_scenario", raising_run)
    assert cli.main(["compare", "mlocked", "--policies", "timeout", "--jobs", "1"]) == code
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(words), err
    assert str(raised) in err and "Traceback" not in err
