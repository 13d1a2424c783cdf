"""What pictures and compare tell a user is true and readable.

- the demo picture gives each run a time axis of its own, scaled to its story;
- a reap that freed 0 kB is not drawn as a success;
- a run with 50 tasks folds its idle ones; more busy tasks than fit are counted;
- `compare --format markdown|csv|json` prints that format and nothing else,
  and json carries each run's whole result;
- a run that ends in `error` (or any verdict compare does not know) is shown
  as such, adds no time, is a mismatch; a run that raises ends compare in one
  line with exit 2 or 1, its other cells stopped and torn down.
"""

import csv
import io
import json
import random
import re
import signal
import time

import psutil
import pytest

from emulator.tools import cli, compare, timeline
from emulator.errors import UsageError
from emulator.policies import V417
from emulator.result import RunResult
from emulator.scenario import load_scenario
from emulator.runtime.trace import load_trace
from tests.helpers import oomemu, wait_for, worker_processes, write_scenario

pytestmark = pytest.mark.timeout(120)


# -- the demo picture --------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``oomemu demo --speed 10 --out DIR``, once: its traces and its stdout."""
    out = tmp_path_factory.mktemp("demo")
    p = oomemu("demo", "--speed", "10", "--out", str(out), timeout=100)
    assert p.returncode == 0, p.stderr
    return out, p.stdout


def demo_timelines(out):
    return {policy: timeline.build(load_trace(str(out / f"mlocked-{policy}.jsonl")))
            for policy in ("v4.17", "timeout")}


def test_demo_writes_its_pictures_and_says_where(demo):
    out, stdout = demo
    for name in ("mlocked.png", "mlocked-v4.17.png", "mlocked-timeout.png"):
        if "no pictures" not in stdout:
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
            assert str(out / name) in stdout


def test_demo_picture_gives_each_run_its_own_time_scale(demo):
    plot = pytest.importorskip("emulator.tools.plot")
    pytest.importorskip("matplotlib")
    out, _ = demo
    tls = demo_timelines(out)
    fig = plot.figure([tls["v4.17"], tls["timeout"]])
    try:
        (mem_a, lanes_a), (mem_b, lanes_b) = plot.run_axes(fig)
        old, new = lanes_a.get_xlim(), lanes_b.get_xlim()
        # Within a run, free memory and lanes share the axis; between runs, nothing.
        assert mem_a.get_xlim() == old and mem_b.get_xlim() == new
        assert not lanes_a.get_shared_x_axes().joined(lanes_a, lanes_b)
        # v4.17's story (first stall to panic, tens of ms) fills most of its own axis;
        # on one shared axis with timeout's seconds it was a few percent of it.
        ev = {e["ev"]: e["t"] for e in reversed(tls["v4.17"].events)}          # first of each
        story = tls["v4.17"].end - ev["alloc_stall"]
        assert story / (old[1] - old[0]) > 0.5, (old, story)
        kills = [e["t"] for e in tls["v4.17"].events if e["ev"] in ("oom_kill", "panic")]
        assert len(kills) == 4 and all(old[0] <= t <= old[1] for t in kills)
        # timeout's run (seconds long) is all on its axis, from time 0.
        assert new[0] == 0 and new[1] >= tls["timeout"].end > 1.0
        assert new[1] - new[0] > 10 * (old[1] - old[0])
        # Each axis states its own scale and unit.
        a_label, b_label = lanes_a.get_xlabel(), lanes_b.get_xlabel()
        assert a_label.startswith("emulated ms") and "not drawn" in a_label
        assert b_label.startswith("emulated s ") and f"{new[1]:.3g} s" in b_label
        fig.canvas.draw()
        ticks = [t.get_text() for t in lanes_a.get_xticklabels() if t.get_text()]
        assert ticks and all(100 <= float(t) <= 1000 for t in ticks), ticks           # ms, not 0.1 s
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_story_window_keeps_time_zero_when_the_lead_in_is_short():
    events = [{"t": 0.0, "ev": "run_start"}, {"t": 0.1, "ev": "alloc_stall", "pid": 0},
              {"t": 2.0, "ev": "run_end", "verdict": "resolved", "kills": 1}]
    lo, hi = timeline.story_window(timeline.build(events))
    assert lo == 0 and 2.0 < hi < 2.1
    events[-1]["t"] = 0.15                                 # a 50 ms story after 100 ms of nothing
    lo, hi = timeline.story_window(timeline.build(events))
    assert 0.09 < lo < 0.1 and 0.15 < hi < 0.16


# -- the reaper's marks ------------------------------------------------------

def reaper_collections(ax):
    return {c.get_label(): c for c in ax.collections if not c.get_label().startswith("_")}


def test_a_reap_that_freed_nothing_is_not_drawn_green(demo):
    plot = pytest.importorskip("emulator.tools.plot")
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgba
    out, _ = demo
    tl = demo_timelines(out)["timeout"]
    reaps = [m for m in tl.reaper if m.kind == "finish_task_reaping"]
    assert reaps and all(m.freed_kb == 0 for m in reaps)              # mlocked: nothing reapable
    assert {plot.reaper_category(m) for m in reaps} == {"nothing"}
    fig = plot.figure([tl])
    try:
        (_, lanes), = plot.run_axes(fig)
        cols = reaper_collections(lanes)
        nothing_label = plot.REAPER_STYLES["nothing"][0]
        assert nothing_label.startswith("reaped 0 kB") and nothing_label in cols
        assert plot.REAPER_STYLES["freed"][0] not in cols
        ring = cols[nothing_label]
        assert all(c[3] == 0 for c in ring.get_facecolors())                   # hollow
        assert all(tuple(c) != to_rgba(plot.FREED) for c in ring.get_edgecolors())
        assert "reaped 0 kB" in [t.get_text() for t in lanes.texts]
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


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


def test_perfetto_names_a_reap_by_what_it_freed(demo):
    from emulator.tools.perfetto import to_trace_events
    out, _ = demo
    doc = to_trace_events([demo_timelines(out)["timeout"]])
    reaps = [e for e in doc["traceEvents"] if e["name"].startswith("finish_task_reaping")]
    assert reaps and all(e["name"].endswith(": reaped 0 kB") and e["args"]["freed_kb"] == 0 for e in reaps)


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
        if f.hidden:                                        # victims are kept before the others
            assert not any(l.kills for l in f.hidden) or all(l.kills for l in f.shown)


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
        assert any("32 more tasks had something happen" in t.get_text() for t in lanes.texts)
    finally:
        plt.close(fig)


def test_a_real_run_of_50_tasks_plots(tmp_path):
    pytest.importorskip("matplotlib")
    scen = write_scenario(tmp_path, """
        name = "fifty"
        memory_mb = 256
        min_kills = 1
        [[task]]
        name = "idle"
        count = 48
        vma = [{ kind = "anon", mb = 1 }]
        [[task]]
        name = "big"
        vma = [{ kind = "anon", mb = 150 }]
        [[task]]
        name = "antagonist"
        oom_score_adj = -1000
        vma = [{ kind = "anon", mb = 10 }]
        step = [{ op = "sleep", ms = 100 }, { op = "alloc", mb = 80 }]
        """)
    trace, png = tmp_path / "fifty.jsonl", tmp_path / "fifty.png"
    p = oomemu("run", scen, "--speed", "10", "--quiet", "--trace", str(trace))
    assert p.returncode == 0, p.stderr
    p = oomemu("trace", str(trace), "--plot", str(png))
    assert p.returncode == 0, p.stderr
    from matplotlib.image import imread
    height = imread(str(png)).shape[0]
    assert height < 8 * 110                                   # 110 dpi: idle tasks were folded


# -- compare: stdout is the format, all of it ----------------------------------

@pytest.fixture(scope="module")
def compared():
    """`oomemu compare mlocked --policies v4.17,timeout` in each machine format."""
    out = {}
    for fmt in ("markdown", "csv", "json"):
        p = oomemu("compare", "mlocked", "--policies", "v4.17,timeout", "--format", fmt, timeout=100)
        assert p.returncode == 0, p.stderr
        assert p.stderr == ""
        out[fmt] = p.stdout
    return out


def test_compare_markdown_prints_only_markdown(compared):
    text = compared["markdown"]
    blocks = [b.splitlines() for b in text.strip("\n").split("\n\n")]
    tables = [b for b in blocks if b[0].startswith("|")]
    assert len(tables) == 1
    table = tables[0]
    assert table[0] == "| scenario | `v4.17` | `timeout` |" and table[1] == "|---|---|---|"
    for row in table:
        assert row.startswith("| ") or row.startswith("|-"), row
        assert len(re.split(r"(?<!\\)\|", row)) == 5, row                   # 3 cells, unescaped pipes
    assert table[2].startswith("| `mlocked` | panic 3/1 | ok 1/1 ")
    for block in blocks:
        if block is not table:                               # prose: a paragraph or a list
            assert all(not line.startswith("oomemu compare --") for line in block), block
    assert "`oomemu compare --speed 10 --repeat 1`" in text


def test_compare_csv_prints_only_csv(compared):
    rows = list(csv.reader(io.StringIO(compared["csv"])))
    assert rows[0][:4] == ["scenario", "policy", "runs", "outcomes"]
    assert len(rows) == 3 and all(len(r) == len(rows[0]) for r in rows)
    by = {r[1]: dict(zip(rows[0], r)) for r in rows[1:]}
    assert by["v4.17"]["outcomes"] == "panic 3/1 x1" and by["timeout"]["errors"] == "0"


def test_compare_json_is_json_with_every_run_whole(compared):
    cells = json.loads(compared["json"])                     # the whole of stdout
    assert [(c["scenario"], c["policy"]) for c in cells] == [("mlocked", "v4.17"), ("mlocked", "timeout")]
    for c in cells:
        assert c["expected"]["verdict"] in ("panic", "resolved") and c["matches"] is True
        (run,) = c["runs"]
        assert set(RunResult.__dataclass_fields__) <= set(run)                # all of to_dict()
        assert run["run_id"] and run["outcome"] == c["cell"].split(" ")[0] + " " + c["cell"].split(" ")[1]
        assert run["matches"] is True
        assert run["victims"] and all(v["name"].startswith("locked-") for v in run["victims"])
        assert any("Out of memory" in line for line in run["log"])
    assert len(cells[0]["runs"][0]["victims"]) == 3


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
    rows = list(csv.reader(io.StringIO(compare.format_csv(cells))))
    assert [r[-2:] for r in rows[1:]][0] == ["1", "worker died of SIGBUS: /dev/shm is full"]
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


class Broken(V417):
    """A policy that fails at the first kill (a fault of ours, as compare sees it)."""
    name = "broken"
    summary = "raises at the first kill"

    def wake_oom_reaper(self, victim, now):
        raise RuntimeError("broken on purpose")


def pool_processes() -> list[psutil.Process]:
    """compare's pool processes of this test session (also those orphaned by a compare that ended)."""
    from emulator.runtime import names
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "spawn_main" in " ".join(p.info["cmdline"] or []) and \
                    p.environ().get("OOMEMU_PREFIX") == names.PREFIX:
                out.append(p)
        except psutil.Error:
            pass
    return out


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


@pytest.mark.parametrize("when", ["starting", "running"])
@pytest.mark.parametrize("how, code", [("ctrl-c", 130), ("sigterm", 143)])
def test_compare_interrupted_stops_its_cells_and_leaves_nothing(tmp_path, how, code, when):
    """Ctrl-C reaches compare's whole process group (its pool processes too);
    SIGTERM only compare itself. Either way every cell ends now, torn down,
    whether its workers are still starting or its run is under way."""
    import os
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "emulator", "compare", "livelock", "mmap_sem_held",
                          "--policies", "timeout,v4.17", "--speed", "1", "--jobs", "2",
                          "--trace-dir", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def under_way():
        return any("run_start" in f.read_text() for f in tmp_path.glob("*.jsonl"))
    try:
        ready = worker_processes if when == "starting" else under_way
        wait_for(lambda: ready() or p.poll() is not None, 60)
        assert p.poll() is None and ready(), f"no run {when}: {p.communicate()[1] if p.poll() is not None else ''}"
        started = time.monotonic()
        if how == "ctrl-c":
            os.killpg(p.pid, signal.SIGINT)
        else:
            p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
        assert time.monotonic() - started < 8     # livelock under timeout alone runs 11 s: stopped, not waited for
        assert p.returncode == code, err
        assert err == f"oomemu: interrupted ({'SIGINT' if how == 'ctrl-c' else 'SIGTERM'})\n", err
        assert wait_for(lambda: not pool_processes(), 10)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
