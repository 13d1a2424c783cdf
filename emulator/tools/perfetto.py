"""``oomemu trace FILE --perfetto OUT.json``: the Chrome trace-event format.

ui.perfetto.dev and chrome://tracing open it: per run a process with a
track per task (running, blocked in allocation, D state, victim, exiting),
a track for the reaper (attempts, give-ups; a finished reap says what it
freed: ``finish_task_reaping locked-2: reaped 0 kB``), a counter of free
memory, and instant events for kills and ``MMF_OOM_SKIP``. Times are the
run's emulated microseconds.
"""

from __future__ import annotations

from .timeline import Timeline, is_idle

REAPER_TID = 0


def _us(t: float) -> float:
    return round(t * 1_000_000, 3)


def to_trace_events(timelines: list[Timeline]) -> dict:
    out = []
    for n, tl in enumerate(timelines, 1):
        pid = n
        out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": REAPER_TID,
                    "args": {"name": tl.title}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": REAPER_TID,
                    "args": {"sort_index": n}})
        out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": REAPER_TID,
                    "args": {"name": "oom_reaper"}})
        # hundreds of tracks: the tasks that did something first, the idle ones after them
        ordered = sorted(tl.lanes, key=is_idle)
        for i, lane in enumerate(ordered, 1):
            out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": lane.pid,
                        "args": {"name": f"{lane.name} ({lane.pid})"}})
            out.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": lane.pid,
                        "args": {"sort_index": i}})
            for sp in lane.spans:
                out.append({"name": sp.state, "cat": "task", "ph": "X", "pid": pid, "tid": lane.pid,
                            "ts": _us(sp.start), "dur": _us(sp.end - sp.start)})
            for t in lane.kills:
                out.append({"name": f"oom_kill {lane.name}", "cat": "oom", "ph": "i", "s": "p",
                            "pid": pid, "tid": lane.pid, "ts": _us(t)})
            for t in lane.oom_skip:
                out.append({"name": "MMF_OOM_SKIP", "cat": "oom", "ph": "i", "s": "t",
                            "pid": pid, "tid": lane.pid, "ts": _us(t)})
        for m in tl.reaper:
            name = f"{m.kind}: {m.reason}" if m.reason else m.kind
            name = f"{name} {m.task}".strip() + (f": {m.label}" if m.kind == "finish_task_reaping" else "")
            ev = {"name": name, "cat": "reaper", "ph": "i", "s": "t",
                  "pid": pid, "tid": REAPER_TID, "ts": _us(m.at)}
            if m.freed_kb is not None:
                ev["args"] = {"freed_kb": m.freed_kb, "left_kb": m.left_kb}
            out.append(ev)
        last = None
        for t, mb in tl.free_mb:
            if mb != last:
                out.append({"name": "free memory", "cat": "zone", "ph": "C", "pid": pid,
                            "tid": REAPER_TID, "ts": _us(t), "args": {"free_MB": round(mb, 3)}})
                last = mb
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"generator": "oomemu", "clock": "emulated seconds since time 0"}}
