"""From trace events to timelines: a state per task over time, reaper marks, free memory.

Shared by the Perfetto export and the picture, so both tell the same story.
Also the two choices a picture makes before it draws (pure, so tests can
check them): which stretch of time holds a run's story (:func:`story_window`)
and which lanes to draw when a run has many tasks (:func:`fold_lanes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .fold import MAX_RUNS, name_tasks, plural

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
    oom_score_adj: int = 0
    events: int = 0               # trace events naming it, but the quiet ones (QUIET_EVENTS)
    gone: float | None = None     # when it exited


REAPER_EVENTS = ("start_task_reaping", "finish_task_reaping", "skip_task_reaping", "reap_deadline",
                 "process_mrelease")          # a user-space killer's reap, in its own context


@dataclass
class ReaperMark:
    """One reaper event. ``freed_kb``/``left_kb`` only on ``finish_task_reaping``:
    a reap that took mmap_sem may still free nothing (mlocked, shared, hugetlb)."""
    at: float                     # emulated seconds
    kind: str                     # one of REAPER_EVENTS
    task: str
    reason: str = ""              # skip_task_reaping / reap_deadline
    freed_kb: int | None = None
    left_kb: int | None = None

    @property
    def label(self) -> str:
        if self.kind == "finish_task_reaping":
            return f"reaped {kb_text(self.freed_kb or 0)}"
        if self.kind == "process_mrelease":
            return f"process_mrelease: {self.reason}" if self.reason else \
                f"process_mrelease: {kb_text(self.freed_kb or 0)}"
        return self.kind + (f": {self.reason}" if self.reason else "")


def kb_text(kb: float) -> str:
    """``0 kB``, ``512 kB``, ``60 MB``, ``1.5 MB``: sizes as a reader says them."""
    if kb < 1024:
        return f"{kb:.0f} kB"
    return f"{kb / 1024:.1f}".removesuffix(".0") + " MB"


@dataclass
class Timeline:
    title: str
    run_start: dict
    end: float
    lanes: list[Lane]
    free_mb: list[tuple[float, float]]                  # (t, free MB)
    reaper: list[ReaperMark]
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
    for e in events:                 # one pass, whatever the number of tasks: O(events)
        lane = lanes.get(e.get("pid"))
        if lane is None:
            continue
        if e["ev"] == "oom_score_adj_update":
            lane.oom_score_adj = e.get("oom_score_adj", 0)
        elif e["ev"] not in QUIET_EVENTS:
            lane.events += 1

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
        if ev in REAPER_EVENTS:
            reason = e.get("reason", "") if ev != "process_mrelease" else \
                ("" if e.get("result") in ("0", "", None) else e["result"])
            reaper.append(ReaperMark(t, ev, e.get("task", ""), reason, e.get("freed_kb"), e.get("left_kb")))
            continue
        if pid not in lanes:
            continue
        if ev == "alloc_stall":
            switch(pid, t, stalled=True)
        elif ev == "alloc_ok":
            switch(pid, t, stalled=False)
        elif ev == "task_state":
            switch(pid, t, d=e.get("state") == "D")
        elif ev == "mark_victim":
            switch(pid, t, victim=True)
        elif ev == "oom_kill" or (ev == "user_kill" and e.get("answer") != "ignore"):
            lanes[pid].kills.append(t)
        elif ev == "exit_mmap_start":
            switch(pid, t, exiting=True, d=False, stalled=False)
        elif ev == "exited":
            switch(pid, t, gone=True)
            state[pid]["gone"] = True
            lanes[pid].gone = t
        elif ev == "oom_skip_set":
            lanes[pid].oom_skip.append(t)
    for pid, s in state.items():
        if not s["gone"] and end > s["since"]:
            lanes[pid].spans.append(Span(s["since"], end, _label(s["victim"], s["stalled"], s["d"], s["exiting"])))
    verdict = ""
    if end_ev:
        k = end_ev["kills"]
        verdict = f": {end_ev['verdict']}, {k} kill{'' if k == 1 else 's'}"
    title = f"{start.get('scenario', '?')} under {start.get('policy', '?')}{verdict}"
    return Timeline(title, start, end, list(lanes.values()), free, reaper, events)


# -- what a picture draws ----------------------------------------------------

QUIET_EVENTS = ("run_start", "oom_score_adj_update")     # time 0: nothing has happened yet


def story_window(tl: Timeline) -> tuple[float, float]:
    """The stretch of emulated time (lo, hi) that holds a run's story.

    It starts at time 0, unless the quiet lead-in (nothing traced but the
    start) is longer than the story itself: then it starts just before the
    first event, so a panic 40 ms after a 100 ms start-up is not squeezed
    into the right edge. It ends just after the run's last event."""
    end = tl.end
    if end <= 0:
        return 0.0, 1.0
    first = min((e["t"] for e in tl.events if e["ev"] not in QUIET_EVENTS), default=0.0)
    story = end - first
    lo = max(0.0, first - 0.1 * story) if first > story else 0.0
    return lo, end + 0.02 * (end - lo)


MAX_LANES = 30            # rows of tasks per run in a picture; a row is ~0.4 inch


@dataclass
class LaneFold:
    shown: list[Lane]         # drawn one by one, in the run's order
    idle: list[Lane]          # running throughout, no kill: folded into one row
    hidden: list[Lane]        # had something happen but did not fit: one row says so


def is_idle(lane: Lane) -> bool:
    """Nothing worth a lane: running for its whole life (no kill, no MMF_OOM_SKIP, never
    blocked, in D or exiting) and named by no trace event but the quiet ones (no
    allocation, no mmap_sem taken, no exit)."""
    return (not lane.kills and not lane.oom_skip and not lane.events
            and all(sp.state == RUNNING for sp in lane.spans))


def fold_lanes(lanes: list[Lane], max_lanes: int | None = MAX_LANES, fold_at: int | None = None) -> LaneFold:
    """Every lane, if there are at most ``fold_at`` (default: ``max_lanes``); else the
    idle lanes fold into one row, and if the rest still do not fit in ``max_lanes`` rows
    (None: no limit), those :func:`keep_first` puts first are drawn and the others are
    counted in a last row.
    Invariant: every lane is in exactly one of the three lists, in the run's order, and
    ``len(shown) + bool(idle) + bool(hidden) <= max_lanes``."""
    fold_at = max_lanes if fold_at is None else fold_at
    fits = max_lanes is None or len(lanes) <= max_lanes
    if fits and (fold_at is None or len(lanes) <= fold_at):
        return LaneFold(list(lanes), [], [])
    busy = [n for n, l in enumerate(lanes) if not is_idle(l)]
    idle = [lanes[n] for n, l in enumerate(lanes) if is_idle(l)]
    room = len(busy) if max_lanes is None else max_lanes - (1 if idle else 0)
    if len(busy) <= room:
        return LaneFold([lanes[n] for n in busy], idle, [])
    room -= 1
    keep = set(sorted(busy, key=lambda n: keep_first(lanes[n]) + (n,))[:max(room, 0)])
    return LaneFold([lanes[n] for n in busy if n in keep], idle, [lanes[n] for n in busy if n not in keep])


def keep_first(lane: Lane) -> tuple:
    """Which busy lanes a full picture keeps, smallest first: a task blocked in allocation
    or in D state (why anyone dies, or why a victim does not go), then the victims in the
    order they were killed (the start of the story), then the rest."""
    blocked = any(sp.state.removeprefix("victim: ") in (STALLED, D_STATE) for sp in lane.spans)
    return (0 if blocked else 1 if lane.kills else 2, min(lane.kills, default=0.0))


def folded_line(lanes: list[Lane], what: str, note: str = "", most: int = MAX_RUNS) -> str:
    """``287 idle tasks, NOTE: cached-0..276 (oom_score_adj 900..991), ...``: folded
    lanes in one line, copies of a [[task]] named as a range, the ``most`` largest
    runs of them named (emulator.tools.fold)."""
    head = plural(len(lanes), what) + (f", {note}" if note else "")
    return f"{head}: " + name_tasks([(l.name, l.oom_score_adj) for l in lanes], most)


# -- the text timeline: ``oomemu trace FILE`` ------------------------------------

def _at(t: float, per_s: float) -> str:
    """A time in the text timeline's unit: ms to 0.1 ms, s to the ms."""
    text = f"{t * per_s:.{1 if per_s > 1 else 3}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def lane_text(lane: Lane, per_s: float) -> str:
    """One lane in a line: its states with their times, then its kills, MMF_OOM_SKIP
    and exit (``running 0-120, victim: running 120-120.4, exiting 120.4-120.5; oom_kill
    at 120; MMF_OOM_SKIP at 120.5; exited at 120.5``)."""
    spans = ", ".join(f"{sp.state} {_at(sp.start, per_s)}-{_at(sp.end, per_s)}" for sp in lane.spans)
    marks = [f"oom_kill at {_at(t, per_s)}" for t in lane.kills]
    marks += [f"MMF_OOM_SKIP at {_at(t, per_s)}" for t in lane.oom_skip]
    if lane.gone is not None:
        marks.append(f"exited at {_at(lane.gone, per_s)}")
    return "; ".join([spans or "-"] + marks)


def reaper_text(marks: list[ReaperMark]) -> str:
    """The reaper's attempts in one line, counted by what they did."""
    reaps = [m for m in marks if m.kind == "finish_task_reaping"]
    freed = sum(m.freed_kb or 0 for m in reaps)
    parts = [f"{plural(len(reaps), 'reap')} ({kb_text(freed)} freed)"] if reaps else []
    skips = sum(1 for m in marks if m.kind == "skip_task_reaping")
    if skips:
        parts.append(f"{skips} could not reap")
    gave_up = sum(1 for m in marks if m.kind == "reap_deadline")
    if gave_up:
        parts.append(f"gave up {plural(gave_up, 'time')}")
    return ", ".join(parts) or "nothing to do"


def text(tl: Timeline) -> list[str]:
    """The text timeline: the run's title, a line per lane that matters, one for the reaper
    and, past MAX_LANES tasks, one line for all the idle ones (never a lane hidden: a
    terminal scrolls). Times in ms for a run shorter than a second, else in s."""
    unit, per_s = ("ms", 1000.0) if tl.end < 1.0 else ("s", 1.0)
    fold = fold_lanes(tl.lanes, max_lanes=None, fold_at=MAX_LANES)
    width = max((len(f"{l.name} ({l.pid})") for l in fold.shown), default=0)
    out = [f"{tl.title} (times in emulated {unit})"]
    out += [f"  {f'{l.name} ({l.pid})':<{width}}  {lane_text(l, per_s)}" for l in fold.shown]
    out.append(f"  oom_reaper: {reaper_text(tl.reaper)}")
    if fold.idle:
        out.append("  " + folded_line(fold.idle, "idle task", "running throughout with nothing traced"))
    return out
