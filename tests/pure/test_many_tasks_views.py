"""Views of a run of hundreds of tasks stay readable, on traces made by hand from the
phone and server built-ins (no processes): the picture and the text timeline give a lane
to every task that did something and fold the rest into one, which names them by runs of
copies with their oom_score_adj; Perfetto lists the busy tracks first. (ps, on a live
run: tests/cli/test_many_tasks_ps.py.)"""

import pytest

from emulator.scenario import load_scenario
from emulator.tools import fold, perfetto, timeline

pytestmark = pytest.mark.timeout(60)


def ladder_walk(name: str, victims: list[str], allocator: str) -> list[dict]:
    """A trace of ``name`` in which ``allocator`` stalls and ``victims`` are killed one by
    one, each exiting at once; every other task only has its oom_score_adj set at time 0."""
    s = load_scenario(name)
    pid = {t.name: 1000 + n for n, t in enumerate(s.tasks)}
    ev = [{"t": 0.0, "ev": "run_start", "pid": 0, "task": "", "free_kb": 1024, "scenario": name,
           "policy": "v4.17", "tasks": [{"name": t.name, "pid": pid[t.name]} for t in s.tasks]}]
    ev += [{"t": 0.0, "ev": "oom_score_adj_update", "pid": pid[t.name], "task": t.name, "free_kb": 1024,
            "oom_score_adj": t.oom_score_adj} for t in s.tasks if t.oom_score_adj]
    ev.append({"t": 0.1, "ev": "alloc_stall", "pid": pid[allocator], "task": allocator, "free_kb": 0})
    for n, v in enumerate(victims):
        t = 0.1 + 0.004 * n
        ev += [{"t": t, "ev": "oom_kill", "pid": pid[v], "task": v, "free_kb": 0},
               {"t": t, "ev": "mark_victim", "pid": pid[v], "task": v, "free_kb": 0},
               {"t": t, "ev": "exit_mmap_start", "pid": pid[v], "task": v, "free_kb": 0},
               {"t": t + 0.001, "ev": "oom_skip_set", "pid": pid[v], "task": v, "free_kb": 1024, "by": "exit_mmap"},
               {"t": t + 0.001, "ev": "exited", "pid": pid[v], "task": v, "free_kb": 1024}]
    end = 0.1 + 0.004 * len(victims) + 0.01
    ev += [{"t": end - 0.005, "ev": "alloc_ok", "pid": pid[allocator], "task": allocator, "free_kb": 0},
           {"t": end, "ev": "run_end", "pid": 0, "task": "", "free_kb": 0, "verdict": "resolved",
            "kills": len(victims)}]
    return ev


PHONE_VICTIMS = [f"cached-{k}" for k in range(299, 277, -1)]          # 22, from the top of the ladder


@pytest.fixture
def phone():
    return timeline.build(ladder_walk("phone", PHONE_VICTIMS, "camera"))


def test_the_text_timeline_of_309_tasks_has_a_line_per_task_that_did_something_and_one_for_the_rest(phone):
    lines = timeline.text(phone)
    assert lines[0] == "phone under v4.17: resolved, 22 kills (times in emulated ms)"
    lanes = lines[1:-2]
    assert [l.split()[0] for l in lanes] == ["camera"] + sorted(PHONE_VICTIMS, key=lambda v: int(v[7:]))
    assert "blocked in allocation 100-" in lanes[0]
    assert all("oom_kill at" in l and "exited at" in l for l in lanes[1:])
    assert lines[-2].startswith("  oom_reaper: ")
    assert lines[-1] == ("  286 idle tasks, running throughout with nothing traced: surfaceflinger (oom_score_adj "
                         "-1000), system_server (-900), persistent-0..1 (-800), keyboard (100), music (200), "
                         "launcher (600), browser (700), cached-0..277 (900..991)")


def test_a_picture_of_309_tasks_draws_the_story_in_25_rows_and_names_the_folded(phone):
    plot = pytest.importorskip("emulator.tools.plot")
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    fig = plot.figure([phone])
    try:
        (_, lanes), = plot.run_axes(fig)
        rows = [t.get_text() for t in lanes.get_yticklabels()]
        assert len(rows) == 25 <= timeline.MAX_LANES + 1
        assert rows[:2] == ["oom_reaper", "camera (1004)"] and rows[-1] == "286 idle tasks"
        assert sorted(rows[2:-1]) == sorted(f"{v} ({1009 + int(v[7:])})" for v in PHONE_VICTIMS)
        said = [t.get_text() for t in lanes.texts if "idle tasks" in t.get_text()]
        assert said == ["  286 idle tasks, running throughout with nothing traced: surfaceflinger "
                        "(oom_score_adj -1000), persistent-0..1 (-800), cached-0..277 (900..991), and 5 more"]
        assert fig.get_size_inches()[1] < 16
    finally:
        plt.close(fig)


def test_the_server_folds_its_275_untouched_workers_and_keeps_the_leaker_and_the_master():
    victims = ["leaker"] + [f"worker-{k}" for k in range(299, 274, -1)]
    tl = timeline.build(ladder_walk("server", victims, "master"))
    lines = timeline.text(tl)
    assert len(lines) == 1 + 27 + 2
    assert lines[-1].startswith("  275 idle tasks, running throughout with nothing traced: "
                                "worker-0..274 (oom_score_adj 0)")


def test_a_task_that_only_took_an_mmap_sem_or_allocated_keeps_its_lane(phone):
    events = ladder_walk("phone", PHONE_VICTIMS, "camera")
    events.insert(-1, {"t": 0.05, "ev": "mmap_lock_acquire_returned", "pid": 1000 + 9, "task": "cached-0",
                       "free_kb": 0, "mm": "cached-0", "write": True, "success": True})
    events.insert(-1, {"t": 0.05, "ev": "alloc_ok", "pid": 1000 + 10, "task": "cached-1", "free_kb": 0,
                       "pages": 1, "stalled": False})
    tl = timeline.build(events)
    shown = [l.name for l in timeline.fold_lanes(tl.lanes).shown]
    assert {"cached-0", "cached-1"} <= set(shown)
    assert timeline.text(tl)[-1].startswith("  284 idle tasks")


def test_perfetto_puts_the_tracks_of_tasks_that_did_something_first(phone):
    data = perfetto.to_trace_events([phone])["traceEvents"]
    order = {e["tid"]: e["args"]["sort_index"] for e in data if e["name"] == "thread_sort_index"}
    names = {e["tid"]: e["args"]["name"].split()[0] for e in data if e["name"] == "thread_name" and e["tid"]}
    first = sorted(order, key=order.get)[:23]
    assert sorted(names[t] for t in first) == sorted(["camera"] + PHONE_VICTIMS)
    assert len(order) == 309                             # every task still has its track


@pytest.mark.parametrize("tasks, most, says", [
    ([("a", 0)], 8, "a (oom_score_adj 0)"),
    ([("w-0", 5), ("w-1", 5), ("w-2", 5)], 8, "w-0..2 (oom_score_adj 5)"),
    ([("w-0", 5), ("w-2", 6)], 8, "w-0 (oom_score_adj 5), w-2 (6)"),          # a gap: two runs
    ([("c-0", 900), ("c-1", 950), ("c-2", 999), ("x", -1000)], 8, "c-0..2 (oom_score_adj 900..999), x (-1000)"),
    ([("a", 1), ("b", 2), ("c-0", 3), ("c-1", 3), ("d", 4)], 1, "c-0..1 (oom_score_adj 3), and 3 more"),
    ([("a", 1), ("b", 2), ("d", 4)], 2, "a (oom_score_adj 1), b (2), and 1 more"),
])
def test_folded_tasks_are_named_by_runs_of_copies_and_every_one_is_named_or_counted(tasks, most, says):
    assert fold.name_tasks(tasks, most) == says
