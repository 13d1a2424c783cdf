"""``oomemu sweep``: a grid of scenarios x policies x constants, each point run ``repeat`` times.

    oomemu sweep mlocked livelock --policies timeout,v6.6 \\
        --set reap_timeout_s=0.5,1,10 --set oom_reaper_delay_s=0,2 --repeat 3 --out sweep.jsonl

A constant's values apply to the policies that have it (``reap_timeout_s`` to
timeout); a policy without any of the constants runs once per scenario and
repeat, with its defaults, as the baseline beside the others. Every run is
appended to ``--out`` as one JSON line as soon as it ends: the point
(``scenario``, ``policy``, ``set``: the constants given), its ``repeat``
index, and the run's result (RunResult.to_dict()). A sweep started again
with the same file skips the runs it holds (a torn last line, from a sweep
cut short, is skipped too), so an interrupted sweep resumes where it
stopped. The summary says, per policy and constants, the extra kills per run
(their mean) and the median time to resolve, how many runs panicked or hung,
and marks the Pareto front (no other point has fewer extra kills and a
shorter time both).

``--plot FILE`` draws the trade-off: each policy and constants one point at
(median time to resolve, extra kills per run), the Pareto front joined.

A family file (``tools/family.py``) stands for its members. docs/sweep.md has
it all. Left for later (issue 15): running the points on a Dask cluster.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context

from ..errors import UsageError
from ..policies import get_policy
from ..scenario import Scenario
from . import compare


@dataclass(frozen=True)
class Point:
    """One run of the grid."""
    scenario: str
    policy: str
    set: tuple[tuple[str, str], ...]     # (constant, value as given), in name order
    repeat: int

    @property
    def key(self) -> str:
        return json.dumps([self.scenario, self.policy, [list(kv) for kv in self.set], self.repeat])

    @property
    def settings(self) -> dict[str, str]:
        return dict(self.set)


def parse_sets(items: list[str]) -> dict[str, list[str]]:
    """``--set K=V1,V2`` (each given once) as {K: [V1, V2]}; a mistake is one line."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        key, eq, values = item.partition("=")
        key = key.strip()
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not eq or not key or not vals:
            raise UsageError(f"--set {item!r}: expected NAME=VALUE[,VALUE...]")
        if key in out:
            raise UsageError(f"--set {key}: given twice (list its values once: {key}=A,B,...)")
        out[key] = vals
    return out


def grid(scenarios: list[Scenario], policies: list[str], sets: dict[str, list[str]], repeat: int) -> list[Point]:
    """Every point, in order: per scenario, per policy, every combination of the values of
    the constants that policy has (its defaults if none), per repeat. Each value is checked
    against the policy's range here, before anything runs."""
    points = []
    unknown = set(sets)
    for policy in policies:
        cls = get_policy(policy)
        known = [k for k in sets if k in cls.consts or (cls.daemon is not None and k in cls.daemon.consts)]
        unknown -= set(known)
        for combo in itertools.product(*(sets[k] for k in known)):
            settings = dict(zip(known, combo))
            get_policy(policy, settings)                  # UsageError: a value out of its range
            for s in scenarios:
                for n in range(repeat):
                    points.append(Point(s.name, policy, tuple(sorted(settings.items())), n))
    if unknown:
        raise UsageError(f"--set {sorted(unknown)[0]}: none of the policies {', '.join(policies)} has it")
    points.sort(key=lambda p: (p.repeat, [s.name for s in scenarios].index(p.scenario)))
    return points


def done_keys(path: str) -> set[str]:
    """The points a results file holds already (a line that does not parse, as the torn
    last line of a sweep cut short, is not one of them)."""
    keys: set[str] = set()
    try:
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    keys.add(Point(rec["scenario"], rec["policy"], tuple(sorted(rec["set"].items())),
                                   rec["repeat"]).key)
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
    except FileNotFoundError:
        pass
    return keys


def _record(point: Point, result: dict) -> str:
    rec = {"scenario": point.scenario, "policy": point.policy, "set": point.settings, "repeat": point.repeat}
    rec.update({k: v for k, v in result.items() if k not in rec})
    return json.dumps(rec, separators=(",", ":"), default=str) + "\n"


def _run_point(scenario: Scenario, point: Point, speed: float) -> dict:
    """One run in a pool process (compare's signal discipline: a stop ends it through its
    teardown); the result as a dict, or a CellFailed."""
    from ..runtime.supervisor import run_scenario
    compare._in_run = True
    try:
        if compare._stopping:
            raise KeyboardInterrupt
        return run_scenario(scenario, policy=point.policy, speed=speed, overrides=point.settings).to_dict()
    except UsageError as e:
        raise compare.CellFailed(point.scenario, point.policy, str(e), True) from None
    except Exception as e:
        raise compare.CellFailed(point.scenario, point.policy, f"{e!r}", False) from None
    finally:
        compare._in_run = False


def run_sweep(scenarios: list[Scenario], points: list[Point], out: str, speed: float, jobs: int,
              progress=None) -> int:
    """Run the points ``out`` does not hold yet, appending each result as it ends.
    Returns how many ran. A run that raises stops the sweep (CellFailed), as in compare."""
    by_name = {s.name: s for s in scenarios}
    have = done_keys(out)
    todo = [p for p in points if p.key not in have]
    if not todo:
        return 0
    with open(out, "a") as f:
        if f.tell() and not _ends_with_newline(out):
            f.write("\n")                                 # a torn last line stays alone
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                                   initializer=compare._pool_worker_init)
        done, began = 0, time.monotonic()
        try:
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, compare.STOP_SIGNALS)
            try:
                futures = {pool.submit(_run_point, by_name[p.scenario], p, speed): p for p in todo}
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    p = futures[fut]
                    try:
                        result = fut.result()
                    except BrokenProcessPool as e:
                        raise compare.CellFailed(p.scenario, p.policy, f"the process running it died ({e})",
                                                 False) from None
                    f.write(_record(p, result))
                    f.flush()
                    os.fsync(f.fileno())
                    done += 1
                if progress:
                    progress(done, len(todo), eta_text(done, len(todo), time.monotonic() - began)
                             + (f"; {len(have)} done before" if have else ""))
        except KeyboardInterrupt:
            compare._stop_pool(pool, compare.CTRL_C_GRACE_S)
            raise
        except BaseException:
            compare._stop_pool(pool)
            raise
        pool.shutdown(wait=True)
    return done


def eta_text(done: int, total: int, elapsed_s: float) -> str:
    """``12.0 runs/min, about 3 min left``: the rate so far and what it makes of the rest."""
    if done == 0 or elapsed_s <= 0:
        return "starting"
    rate = done / elapsed_s * 60
    left_s = (total - done) / done * elapsed_s
    left = f"{left_s:.0f} s" if left_s < 120 else f"{left_s / 60:.0f} min"
    return f"{rate:.1f} runs/min, about {left} left"


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


# -- the summary (pure) ----------------------------------------------------------------

@dataclass
class Summary:
    policy: str
    set: tuple[tuple[str, str], ...]
    runs: int = 0
    panics: int = 0
    hangs: int = 0
    errors: int = 0
    extra: list[int] = field(default_factory=list)
    ttr: list[float] = field(default_factory=list)
    front: bool = False

    @property
    def extra_mean(self) -> float | None:
        """Extra kills per run, on average: over a family, a median hides the members
        that need more kills (most need none)."""
        return statistics.fmean(self.extra) if self.extra else None

    @property
    def ttr_median(self) -> float | None:
        return statistics.median(self.ttr) if self.ttr else None


def summarize(records: list[dict]) -> list[Summary]:
    """Per (policy, constants), over every scenario and repeat: extra kills of the runs with
    a verdict, time to resolve of the resolved ones, panics, hangs, errors; the Pareto front
    (lower is better on both medians) marked."""
    rows: dict = {}
    for r in records:
        key = (r["policy"], tuple(sorted(r.get("set", {}).items())))
        s = rows.setdefault(key, Summary(*key))
        s.runs += 1
        verdict = r.get("verdict")
        if verdict == "error":
            s.errors += 1
            continue
        s.panics += verdict == "panic"
        s.hangs += verdict == "hung"
        s.extra.append(max(0, r.get("kills", 0) - r.get("min_kills", 0)))
        if verdict == "resolved" and r.get("time_to_resolve_s") is not None:
            s.ttr.append(r["time_to_resolve_s"])
    out = list(rows.values())
    scored = [s for s in out if s.extra_mean is not None and s.ttr_median is not None]
    for s in scored:
        s.front = not any(o is not s and o.extra_mean <= s.extra_mean and o.ttr_median <= s.ttr_median
                          and (o.extra_mean, o.ttr_median) != (s.extra_mean, s.ttr_median) for o in scored)
    return out


def render(summaries: list[Summary]) -> str:
    def settings(s):
        return ", ".join(f"{k}={v}" for k, v in s.set) or "(defaults)"

    def num(x, fmt):
        return "-" if x is None else fmt % x
    rows = [("policy", "constants", "runs", "extra kills/run", "time to resolve", "panic", "hung", "error", "front")]
    for s in summaries:
        rows.append((s.policy, settings(s), str(s.runs), num(s.extra_mean, "%.2f"), num(s.ttr_median, "%.2fs"),
                     str(s.panics), str(s.hangs), str(s.errors), "*" if s.front else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def plot(summaries: list[Summary], out: str) -> None:
    """The trade-off as a picture: x the median time to resolve, y the extra kills per run;
    a colour per policy, each point labelled with its constants; the Pareto front joined."""
    from .plot import _matplotlib
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    scored = [s for s in summaries if s.extra_mean is not None and s.ttr_median is not None]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, policy in enumerate(dict.fromkeys(s.policy for s in scored)):
        mine = [s for s in scored if s.policy == policy]
        ax.scatter([s.ttr_median for s in mine], [s.extra_mean for s in mine], label=policy,
                   color=colours[i % len(colours)], s=40, zorder=3)
        for s in mine:
            ax.annotate(", ".join(f"{k}={v}" for k, v in s.set), (s.ttr_median, s.extra_mean), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    front = sorted((s for s in scored if s.front), key=lambda s: s.ttr_median)
    if front:
        ax.plot([s.ttr_median for s in front], [s.extra_mean for s in front], "k--", lw=1,
                label="Pareto front", zorder=2)
    ax.set_xlabel("time to resolve, median (emulated s)")
    ax.set_ylabel("extra kills per run (mean)")
    ax.set_title("extra kills against time to resolve (panics and hangs: in the table)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def read_records(path: str) -> list[dict]:
    out = []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "policy" in rec:
                out.append(rec)
    return out
