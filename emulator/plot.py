"""``oomemu trace FILE... --plot OUT.png``: one picture, one panel per run, stacked.

Each panel: free memory over time on top, below it a lane per task coloured
by state, with kills (red X), ``MMF_OOM_SKIP`` (black bar), and a lane for
the reaper's attempts (green: reaped, grey: could not, black x: gave up).
matplotlib is an optional extra (``pip install 'oomemu[plot]'``).
"""

from __future__ import annotations

from .errors import UsageError
from .timeline import D_STATE, EXITING, RUNNING, STALLED, Timeline

COLOURS = {RUNNING: "#d9d9d9", STALLED: "#f4a442", D_STATE: "#8e6cc2", EXITING: "#7a1f1f"}
VICTIM_EDGE = "#d62728"


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'oomemu[plot]' (make run-demo installs it)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot(timelines: list[Timeline], out: str) -> None:
    plt = _matplotlib()
    from matplotlib.patches import Patch
    heights = []
    for tl in timelines:
        heights += [1.2, 0.45 * (len(tl.lanes) + 1) + 0.4]
    fig, axes = plt.subplots(len(heights), 1, figsize=(11, sum(heights) + 0.6), sharex=True,
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    axes = axes[:, 0]
    end = max(tl.end for tl in timelines) * 1.02 or 1.0
    for n, tl in enumerate(timelines):
        mem, lanes = axes[2 * n], axes[2 * n + 1]
        if tl.free_mb:
            xs, ys = zip(*tl.free_mb)
            mem.step(xs, ys, where="post", color="#1f77b4")
            mem.fill_between(xs, ys, step="post", alpha=0.15, color="#1f77b4")
        mem.set_ylabel("free MB", fontsize=8)
        mem.set_title(tl.title, fontsize=10, loc="left")
        mem.grid(alpha=0.3)
        names = ["oom_reaper"] + [f"{l.name} ({l.pid})" for l in tl.lanes]
        for row, lane in enumerate(tl.lanes, 1):
            for sp in lane.spans:
                base = sp.state.removeprefix("victim: ")
                lanes.broken_barh([(sp.start, sp.end - sp.start)], (row - 0.35, 0.7),
                                  facecolors=COLOURS.get(base, "#d9d9d9"),
                                  edgecolors=VICTIM_EDGE if sp.state.startswith("victim") else "none",
                                  linewidth=1.5)
            if lane.kills:
                lanes.scatter(lane.kills, [row] * len(lane.kills), marker="X", s=90, color="#d62728", zorder=3)
            if lane.oom_skip:
                lanes.scatter(lane.oom_skip, [row] * len(lane.oom_skip), marker="|", s=300, color="black",
                              zorder=3, linewidths=2.5)
        for t, kind, _ in tl.reaper:
            if kind.startswith("finish_task_reaping"):
                lanes.scatter([t], [0], marker="o", s=25, color="#2ca02c", zorder=3)
            elif kind.startswith("skip_task_reaping"):
                lanes.scatter([t], [0], marker="o", s=12, color="#999999", zorder=2)
            elif kind.startswith("reap_deadline"):
                lanes.scatter([t], [0], marker="x", s=80, color="black", zorder=3)
        for e in tl.events:
            if e["ev"] == "panic":
                for ax in (mem, lanes):
                    ax.axvline(e["t"], color="#d62728", lw=2)
                mem.annotate(" Kernel panic", (e["t"], 0.5), xycoords=("data", "axes fraction"),
                             color="#d62728", fontsize=9, fontweight="bold")
        lanes.set_yticks(range(len(names)), names, fontsize=8)
        lanes.set_ylim(len(names) - 0.4, -0.6)
        lanes.grid(axis="x", alpha=0.3)
    axes[-1].set_xlim(0, end)
    axes[-1].set_xlabel("emulated seconds since time 0")
    legend = [Patch(color=c, label=s) for s, c in COLOURS.items()]
    legend += [Patch(facecolor="white", edgecolor=VICTIM_EDGE, label="victim"),
               plt.Line2D([], [], marker="X", color="#d62728", ls="", label="oom_kill"),
               plt.Line2D([], [], marker="|", color="black", ls="", markersize=12, label="MMF_OOM_SKIP"),
               plt.Line2D([], [], marker="o", color="#2ca02c", ls="", label="reaped"),
               plt.Line2D([], [], marker="o", color="#999999", ls="", label="reap attempt failed"),
               plt.Line2D([], [], marker="x", color="black", ls="", label="reaper gave up")]
    fig.legend(handles=legend, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.09 if len(timelines) == 1 else 0.05, 1, 1))
    try:
        fig.savefig(out, dpi=110)
    except OSError as e:
        raise UsageError(f"--plot {out}: {e.strerror}") from None
    finally:
        plt.close(fig)
