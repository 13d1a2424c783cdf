"""From trace events to timelines: a state per task over time, reaper marks, free memory.

Shared by the Perfetto export and the picture, so both tell the same story.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RUNNING, STALLED, D_STATE, EXITING = "running", "blocked in allocation", "D state", "exiting"


@dataclass
class Span:
    start: float
    end: float
    state: str                    # running / blocked in allocation / D state / exiting, maybe "victim: "


@dataclass
class Lane:
    name: str
    pid: int
    spans: list[Span] = field(default_factory=list)
    kills: list[float] = field(default_factory=list)
    oom_skip: list[float] = field(default_factory=list)


@dataclass
class Timeline:
    title: str
    run_start: dict
    end: float
    lanes: list[Lane]
    free_mb: list[tuple[float, float]]                  # (t, free MB)
    reaper: list[tuple[float, str, str]]                # (t, kind, task): attempt outcomes
    events: list[dict]


def _label(victim: bool, stalled: bool, d: bool, exiting: bool) -> str:
    if exiting:
        return EXITING
    base = D_STATE if d else STALLED if stalled else RUNNING
    return f"victim: {base}" if victim else base


def build(events: list[dict]) -> Timeline:
    # Workers stamp their events when they happen, the supervisor when it hears
    # of them: put them in time order (stable, so equal times keep their order).
    events = sorted(events, key=lambda e: e["t"])
    start = next((e for e in events if e["ev"] == "run_start"), {})
    end_ev = next((e for e in events if e["ev"] == "run_end"), None)
    end = max(e["t"] for e in events)
    tasks = start.get("tasks") or []
    lanes = {t["pid"]: Lane(t["name"], t["pid"]) for t in tasks}
    for e in events:                                     # tasks a partial trace did not list
        if e.get("pid") and e["pid"] not in lanes and e.get("task"):
            lanes[e["pid"]] = Lane(e["task"], e["pid"])
    state = {pid: dict(victim=False, stalled=False, d=False, exiting=False, since=0.0, gone=False)
             for pid in lanes}

    def switch(pid, t, **change):
        s = state[pid]
        if s["gone"]:
            return
        before = _label(s["victim"], s["stalled"], s["d"], s["exiting"])
        s.update(change)
        after = _label(s["victim"], s["stalled"], s["d"], s["exiting"])
        if after != before or change.get("gone"):
            if t > s["since"]:
                lanes[pid].spans.append(Span(s["since"], t, before))
            s["since"] = t

    free, reaper = [], []
    for e in events:
        t, ev, pid = e["t"], e["ev"], e.get("pid", 0)
        if "free_kb" in e:
            free.append((t, e["free_kb"] / 1024))
        if pid not in lanes:
            if ev in ("start_task_reaping", "finish_task_reaping", "skip_task_reaping", "reap_deadline"):
                reaper.append((t, ev, e.get("task", "")))
            continue
        if ev == "alloc_stall":
            switch(pid, t, stalled=True)
        elif ev == "alloc_ok":
            switch(pid, t, stalled=False)
        elif ev == "task_state":
            switch(pid, t, d=e.get("state") == "D")
        elif ev == "mark_victim":
            switch(pid, t, victim=True)
        elif ev == "oom_kill":
            lanes[pid].kills.append(t)
        elif ev == "exit_mmap_start":
            switch(pid, t, exiting=True, d=False, stalled=False)
        elif ev == "exited":
            switch(pid, t, gone=True)
            state[pid]["gone"] = True
        elif ev == "oom_skip_set":
            lanes[pid].oom_skip.append(t)
        elif ev in ("start_task_reaping", "finish_task_reaping", "skip_task_reaping", "reap_deadline"):
            detail = e.get("reason", "")
            reaper.append((t, ev + (f": {detail}" if detail else ""), e.get("task", "")))
    for pid, s in state.items():
        if not s["gone"] and end > s["since"]:
            lanes[pid].spans.append(Span(s["since"], end, _label(s["victim"], s["stalled"], s["d"], s["exiting"])))
    verdict = ""
    if end_ev:
        k = end_ev["kills"]
        verdict = f": {end_ev['verdict']}, {k} kill{'' if k == 1 else 's'}"
    title = f"{start.get('scenario', '?')} under {start.get('policy', '?')}{verdict}"
    return Timeline(title, start, end, list(lanes.values()), free, reaper, events)
