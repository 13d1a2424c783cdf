"""Seeing a run: trace events -> Perfetto (Chrome trace-event format) and a picture."""

import json

import pytest

from emulator.runtime.trace import KERNEL_EVENTS, OOMEMU_EVENTS
from tests.helpers import check_documented, documented_trace_events, oomemu, write_scenario

pytestmark = pytest.mark.timeout(120)

PHASES = {"X", "i", "I", "C", "M", "B", "E"}
METADATA = {"process_name", "thread_name", "process_sort_index", "thread_sort_index"}


def check_trace_event_format(doc):
    """The structure the trace processor and chrome://tracing expect (JSON object format)."""
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list) and doc["traceEvents"]
    slices = {}
    for e in doc["traceEvents"]:
        assert e["ph"] in PHASES, e
        assert isinstance(e["name"], str) and e["name"], e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int), e
        if e["ph"] == "M":
            assert e["name"] in METADATA and isinstance(e["args"], dict), e
            assert ("name" in e["args"]) != ("sort_index" in e["args"]), e
            continue
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0, e
            slices.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
        elif e["ph"] in ("i", "I"):
            assert e.get("s", "t") in ("g", "p", "t"), e
        elif e["ph"] == "C":
            assert e["args"] and all(isinstance(v, (int, float)) for v in e["args"].values()), e
    for spans in slices.values():                       # complete events on a track nest or follow
        spans.sort()
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert b0 >= a1 - 1e-3 or b1 <= a1, (a0, a1, b0, b1)


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("traces")
    out = {}
    for policy in ("v4.17", "timeout"):
        path = d / f"mlocked-{policy}.jsonl"
        p = oomemu("run", "mlocked", "--policy", policy, "--speed", "10", "--trace", str(path), "--quiet")
        assert p.returncode == 0, p.stderr
        out[policy] = path
    return out


def test_perfetto_export_is_valid_trace_event_json(traces, tmp_path):
    for policy, path in traces.items():
        out = tmp_path / f"{policy}.json"
        p = oomemu("trace", str(path), "--perfetto", str(out))
        assert p.returncode == 0, p.stderr
        doc = json.loads(out.read_text())
        check_trace_event_format(doc)
        ev = doc["traceEvents"]
        threads = {e["args"]["name"] for e in ev if e["name"] == "thread_name"}
        assert "oom_reaper" in threads and any(t.startswith("locked-0 (") for t in threads)
        assert any(e["ph"] == "C" and e["name"] == "free memory" for e in ev)
        kills = [e for e in ev if e["ph"] == "i" and e["name"].startswith("oom_kill")]
        events = [json.loads(l) for l in path.read_text().splitlines()]
        if policy == "timeout":      # the reaper gets there before exit_mmap: it "reaps" mlocked memory
            assert {"start_task_reaping", "finish_task_reaping"} <= {e["ev"] for e in events}
        # mlocked's stated outcomes: v4.17 kills all three locked tasks, timeout one
        assert len(kills) == sum(e["ev"] == "oom_kill" for e in events) == {"v4.17": 3, "timeout": 1}[policy]
        assert any(e["name"] == "MMF_OOM_SKIP" for e in ev)
        # the victims are in D state when killed (a slow disk write); under v4.17 the run
        # panics before any of them gets out of it, under timeout the first one exits
        slices = {"running", "blocked in allocation", "victim: D state"} | ({"exiting"} if policy == "timeout" else set())
        assert {e["name"] for e in ev if e["ph"] == "X"} >= slices


def test_trace_events_are_the_ones_the_readme_documents(traces):
    """The README's tables of trace events are the reference: every event a run writes
    is there with the fields it lists, and the code's list of names is the same list
    (an event renamed, added or dropped on one side only fails here)."""
    doc = documented_trace_events()
    assert set(doc) == set(KERNEL_EVENTS) | set(OOMEMU_EVENTS)
    assert len(KERNEL_EVENTS) + len(OOMEMU_EVENTS) == len(doc)                  # no name twice
    for path in traces.values():
        events = [json.loads(l) for l in path.read_text().splitlines()]
        check_documented(events)
        assert [e["ev"] for e in events][0] == "run_start" and events[-1]["ev"] == "run_end"


def test_plot_draws_both_policies_one_above_the_other(traces, tmp_path):
    out = tmp_path / "mlocked.png"
    p = oomemu("trace", str(traces["v4.17"]), str(traces["timeout"]), "--plot", str(out))
    assert p.returncode == 0, p.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_compare_can_write_traces_and_pictures(tmp_path):
    p = oomemu("compare", "mlocked", "--policies", "v4.17,timeout", "--plot-dir", str(tmp_path), timeout=100)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "mlocked.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(f.name for f in tmp_path.glob("*.jsonl")) == ["mlocked.timeout.0.jsonl", "mlocked.v4.17.0.jsonl"]


def test_a_file_that_is_not_a_trace_is_one_line_and_exit_2(tmp_path):
    bad = write_scenario(tmp_path, "memory_mb = 3")
    p = oomemu("trace", bad, "--perfetto", str(tmp_path / "x.json"))
    assert p.returncode == 2 and "not a JSON line" in p.stderr and p.stderr.count("\n") == 1
