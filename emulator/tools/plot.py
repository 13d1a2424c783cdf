"""``oomemu trace FILE... --plot OUT.png``: one picture, one panel per run, stacked.

Each panel: free memory over time on top, below it a lane per task coloured
by state, with kills (red X), ``MMF_OOM_SKIP`` (black bar), and a lane for
the reaper's attempts: a filled green dot where a reap freed memory, a
hollow grey ring where it "reaped" and freed nothing (mlocked, shared,
hugetlb memory), a small grey dot where it could not reap, a black x where it
gave up. Each run has its own time axis, scaled to its own story
(:func:`emulator.tools.timeline.story_window`) and labelled in ms or s: a panic
40 ms after the first kill and a 2 s recovery are both readable, one above
the other. Runs with many tasks fold their idle tasks into one row
(:func:`emulator.tools.timeline.fold_lanes`). matplotlib is an optional extra
(``pip install 'oomemu[plot]'``).
"""

from __future__ import annotations

from ..errors import UsageError
from .timeline import (D_STATE, EXITING, RUNNING, STALLED, LaneFold, ReaperMark, Timeline, fold_lanes,
                       folded_line, story_window)

COLOURS = {RUNNING: "#d9d9d9", STALLED: "#f4a442", D_STATE: "#8e6cc2", EXITING: "#7a1f1f"}
VICTIM_EDGE = "#d62728"
KILL = "#d62728"
FREED = "#2ca02c"
NOTHING = "#666666"

# How each reaper event is drawn: (legend label, scatter style). A reap counts
# as green only if it freed memory: "reaped" with 0 kB freed is a hollow ring.
REAPER_STYLES = {
    "freed": ("reaped: freed memory", dict(marker="o", s=36, facecolors=FREED, edgecolors=FREED, zorder=3)),
    "nothing": ("reaped 0 kB: nothing it may free",
                dict(marker="o", s=46, facecolors="none", edgecolors=NOTHING, linewidths=1.5, zorder=3)),
    "failed": ("could not reap (mmap_sem, MMF_OOM_SKIP, ...)",
               dict(marker="o", s=12, facecolors="#999999", edgecolors="none", zorder=2)),
    "gave_up": ("reaper gave up", dict(marker="x", s=80, color="black", zorder=3)),
}
MEM_IN = 1.1                 # inches for a run's free-memory panel
MAX_REAP_LABELS = 8          # per run: more "reaped N kB" texts than this would overlap
FOLDED_RUNS = 3              # task names in the idle row: what fits across the picture at 7 pt


def reaper_category(mark: ReaperMark) -> str | None:
    """Which REAPER_STYLES entry draws this event (None: not drawn)."""
    if mark.kind == "finish_task_reaping":
        return "freed" if mark.freed_kb else "nothing"
    if mark.kind == "skip_task_reaping":
        return "failed"
    if mark.kind == "reap_deadline":
        return "gave_up"
    return None                              # start_task_reaping: its finish says what happened


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'oomemu[plot]' (make run-demo installs it)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def time_unit(lo: float, hi: float) -> tuple[str, float]:
    """Milliseconds for a story shorter than a second, else seconds: (name, per second)."""
    return ("ms", 1000.0) if hi - lo < 1.0 else ("s", 1.0)


def _fmt(x: float, per_s: float) -> str:
    v = x * per_s
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def axis_label(lo: float, hi: float) -> str:
    unit, per_s = time_unit(lo, hi)
    text = f"emulated {unit} since time 0; this run's own scale, {_fmt(lo, per_s)} to {_fmt(hi, per_s)} {unit}"
    if lo > 0:
        text += f"\n(0 to {_fmt(lo, per_s)} {unit} not drawn: nothing traced there but the start)"
    return text


def _lane_rows(fold: LaneFold) -> list[str]:
    rows = ["oom_reaper"] + [f"{l.name} ({l.pid})" for l in fold.shown]
    if fold.idle:
        rows.append(f"{len(fold.idle)} idle tasks")
    if fold.hidden:
        rows.append(f"{len(fold.hidden)} more tasks")
    return rows


def figure(timelines: list[Timeline]):
    """The matplotlib Figure (Agg). Axes come in pairs per run: free memory,
    then lanes; each pair shares its x axis, and no two runs share one."""
    plt = _matplotlib()
    from matplotlib.ticker import FuncFormatter
    folds = [fold_lanes(tl.lanes) for tl in timelines]
    lane_heights = [0.42 * len(_lane_rows(fold)) + 0.3 for fold in folds]
    run_heights = [MEM_IN + h + 0.8 for h in lane_heights]          # + title and x label
    fig = plt.figure(figsize=(11, sum(run_heights) + 0.8 + (0.3 if len(timelines) > 1 else 0)),
                     layout="constrained")
    outer = fig.add_gridspec(len(timelines) + 1, 1, height_ratios=run_heights + [0.55])
    for n, (tl, fold) in enumerate(zip(timelines, folds)):
        inner = outer[n].subgridspec(2, 1, height_ratios=[MEM_IN, lane_heights[n]], hspace=0.02)
        mem = fig.add_subplot(inner[0])
        lanes = fig.add_subplot(inner[1], sharex=mem)
        lo, hi = story_window(tl)
        _draw_run(mem, lanes, tl, fold, lo, hi)
        unit, per_s = time_unit(lo, hi)
        lanes.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos, per_s=per_s: f"{x * per_s:.6g}"))
        mem.tick_params(labelbottom=False)
        mem.set_xlim(lo, hi)
        lanes.set_xlabel(axis_label(lo, hi), fontsize=8)
    if len(timelines) > 1:
        fig.suptitle("Each run has its own time axis: read the tick labels, not the widths.",
                     fontsize=9, x=0.01, ha="left")
    key = fig.add_subplot(outer[-1])
    key.axis("off")
    key.legend(handles=_legend(plt), loc="center", ncol=5, fontsize=8, frameon=False)
    return fig


def run_axes(fig) -> list[tuple]:
    """(free memory axes, lanes axes) per run, in order, from a :func:`figure`."""
    axes = [ax for ax in fig.axes if ax.axison]
    return list(zip(axes[0::2], axes[1::2]))


def _draw_run(mem, lanes, tl: Timeline, fold: LaneFold, lo: float, hi: float) -> None:
    if tl.free_mb:
        xs, ys = zip(*tl.free_mb)
        xs, ys = list(xs) + [tl.end], list(ys) + [ys[-1]]
        mem.step(xs, ys, where="post", color="#1f77b4")
        mem.fill_between(xs, ys, step="post", alpha=0.15, color="#1f77b4")
    mem.set_ylim(bottom=0)
    mem.set_ylabel("free MB", fontsize=8)
    mem.set_title(tl.title, fontsize=10, loc="left")
    mem.grid(alpha=0.3)
    rows = _lane_rows(fold)
    for row, lane in enumerate(fold.shown, 1):
        for sp in lane.spans:
            base = sp.state.removeprefix("victim: ")
            lanes.broken_barh([(sp.start, sp.end - sp.start)], (row - 0.35, 0.7),
                              facecolors=COLOURS.get(base, "#d9d9d9"),
                              edgecolors=VICTIM_EDGE if sp.state.startswith("victim") else "none",
                              linewidth=1.5)
        if lane.kills:
            lanes.scatter(lane.kills, [row] * len(lane.kills), marker="X", s=90, color=KILL, zorder=3)
        if lane.oom_skip:
            lanes.scatter(lane.oom_skip, [row] * len(lane.oom_skip), marker="|", s=300, color="black",
                          zorder=3, linewidths=2.5)
    row = len(fold.shown) + 1
    if fold.idle:
        lanes.broken_barh([(0, tl.end)], (row - 0.35, 0.7), facecolors=COLOURS[RUNNING], hatch="//",
                          edgecolors="white")
        lanes.text(lo, row, "  " + folded_line(fold.idle, "idle task", "running throughout with nothing traced",
                                                most=FOLDED_RUNS),
                   va="center", fontsize=7, clip_on=True)
        row += 1
    if fold.hidden:
        lanes.text(lo, row, "  " + folded_line(fold.hidden, "more task", "something traced, not drawn",
                                                most=FOLDED_RUNS)
                   + " (oomemu trace FILE lists each; --perfetto draws them)", va="center", fontsize=7,
                   color="#7a1f1f", clip_on=True)
    _draw_reaper(lanes, tl.reaper)
    for e in tl.events:
        if e["ev"] == "panic":
            for ax in (mem, lanes):
                ax.axvline(e["t"], color=KILL, lw=2)
            right = e["t"] > lo + 0.8 * (hi - lo)
            mem.annotate(" Kernel panic " , (e["t"], 0.5), xycoords=("data", "axes fraction"),
                         ha="right" if right else "left", color=KILL, fontsize=9, fontweight="bold")
    lanes.set_yticks(range(len(rows)), rows, fontsize=8)
    lanes.set_ylim(len(rows) - 0.4, -0.6)
    lanes.grid(axis="x", alpha=0.3)


def _draw_reaper(lanes, marks: list[ReaperMark]) -> None:
    by_cat: dict[str, list[float]] = {}
    for m in marks:
        cat = reaper_category(m)
        if cat:
            by_cat.setdefault(cat, []).append(m.at)
    for cat, ts in by_cat.items():
        label, style = REAPER_STYLES[cat]
        lanes.scatter(ts, [0] * len(ts), label=label, **style)
    reaps = [m for m in marks if m.kind == "finish_task_reaping"]
    if len(reaps) <= MAX_REAP_LABELS:
        for m in reaps:
            lanes.annotate(m.label, (m.at, 0), xytext=(6, 0), textcoords="offset points", va="center",
                           fontsize=7, color=FREED if m.freed_kb else NOTHING)


def _legend(plt) -> list:
    from matplotlib.patches import Patch
    handles = [Patch(color=c, label=s) for s, c in COLOURS.items()]
    handles += [Patch(facecolor="white", edgecolor=VICTIM_EDGE, label="victim"),
                plt.Line2D([], [], marker="X", color=KILL, ls="", label="oom_kill"),
                plt.Line2D([], [], marker="|", color="black", ls="", markersize=12, label="MMF_OOM_SKIP")]
    for label, style in REAPER_STYLES.values():
        face = style.get("facecolors", style.get("color"))
        edge = style.get("edgecolors", style.get("color"))
        handles.append(plt.Line2D([], [], marker=style["marker"], ls="", label=label,
                                  markerfacecolor=face, markeredgecolor=edge,
                                  color=style.get("color", edge)))
    return handles


def plot(timelines: list[Timeline], out: str) -> None:
    plt = _matplotlib()
    fig = figure(timelines)
    try:
        fig.savefig(out, dpi=110)
    except OSError as e:
        raise UsageError(f"--plot {out}: {e.strerror}") from None
    finally:
        plt.close(fig)
