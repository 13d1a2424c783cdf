"""What pictures and compare tell a user is true and readable.

- the demo picture gives each run a time axis of its own, scaled to its story;
- a reap that freed 0 kB is not drawn as a success;
- a run with 50 tasks folds its idle ones; more busy tasks than fit are counted;
- `compare --format markdown|csv|json` prints that format and nothing else,
  and json carries each run's whole result;
- a run that ends in `error` (or any verdict compare does not know) is shown
  as such, adds no time, is a mismatch; a run that raises ends compare in one
  line with exit 2 or 1, its other cells stopped and torn down.

Here on real runs through the command line (and compare interrupted); on
traces and cells made by hand: tests/pure/test_output_truth.py; a run that
raises in compare's pool: tests/runs/test_output_truth.py.
"""

import csv
import io
import json
import re
import signal
import time

import pytest

from emulator.tools import timeline
from emulator.result import RunResult
from emulator.runtime.trace import load_trace
from tests.helpers import oomemu, pool_processes, reaper_collections, wait_for, worker_processes, write_scenario

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
        assert ticks and all(50 <= float(t) <= 1000 for t in ticks), ticks            # ms, not 0.1 s
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


# -- the reaper's marks ------------------------------------------------------

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


def test_perfetto_names_a_reap_by_what_it_freed(demo):
    from emulator.tools.perfetto import to_trace_events
    out, _ = demo
    doc = to_trace_events([demo_timelines(out)["timeout"]])
    reaps = [e for e in doc["traceEvents"] if e["name"].startswith("finish_task_reaping")]
    assert reaps and all(e["name"].endswith(": reaped 0 kB") and e["args"]["freed_kb"] == 0 for e in reaps)


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
