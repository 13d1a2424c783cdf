"""``oomemu compare``: every scenario under every policy, one table.

Each cell runs a scenario under a policy ``repeat`` times with real
processes and shows the verdict and kills against ``min_kills`` (``panic
3/1``, ``ok 1/1``, ``ok 2/1 +1``) and the time to resolve. A scenario file
may state what each policy should do (its ``[expected]`` table); a cell whose
measured outcome differs is marked ``!`` and ``--check`` makes that an error.

Independent cells run at once in ``jobs`` separate processes (each run is a
supervisor with its own workers); ``jobs=1`` runs them here, one by one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context

from .columns import columns
from .policies import POLICIES, ReaperPolicy, get_policy
from .scenario import Expected, Scenario, builtin_names, load_scenario

SHORT = {"resolved": "ok", "panic": "panic", "hung": "hung"}


@dataclass
class Cell:
    scenario: Scenario
    policy: str
    runs: list[dict] = field(default_factory=list)
    traces: list[str] = field(default_factory=list)

    @property
    def expected(self) -> Expected | None:
        return self.scenario.expected.get(self.policy)

    @staticmethod
    def outcome(run: dict) -> str:
        text = f"{SHORT[run['verdict']]} {run['kills']}/{run['min_kills']}"
        if run["verdict"] == "resolved" and run["extra_kills"]:
            text += f" +{run['extra_kills']}"
        return text

    def outcomes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.runs:
            out[self.outcome(r)] = out.get(self.outcome(r), 0) + 1
        return out

    def agree(self) -> bool:
        return len(self.outcomes()) == 1

    def matches(self) -> bool | None:
        """Do all runs match the stated outcome? None if the file states none."""
        e = self.expected
        if e is None:
            return None
        return all(r["verdict"] == e.verdict and (e.kills is None or r["kills"] == e.kills)
                   for r in self.runs)

    def times(self) -> list[float]:
        return [r["time_to_resolve_s"] for r in self.runs if r["time_to_resolve_s"] is not None]

    def text(self) -> str:
        outs = self.outcomes()
        if len(outs) == 1:
            (o, n), = outs.items()
            cell = o + (f" x{n}" if n > 1 else "")
        else:
            cell = ", ".join(f"{o} x{n}" for o, n in sorted(outs.items(), key=lambda kv: -kv[1]))
        ts = self.times()
        if ts:
            lo, hi = f"{min(ts):.1f}", f"{max(ts):.1f}"
            cell += f" {lo}s" if lo == hi else f" {lo}-{hi}s"
        if self.matches() is False:
            cell += " !"
        return cell


def _summary(result) -> dict:
    d = result.to_dict()
    return {k: d[k] for k in ("scenario", "policy", "verdict", "kills", "min_kills", "extra_kills",
                              "time_to_resolve_s")}


def _run_one(scenario: Scenario, policy, speed: float, trace: str | None = None) -> dict:
    from .supervisor import run_scenario
    return _summary(run_scenario(scenario, policy=policy, speed=speed, trace=trace))


def default_jobs() -> int:
    """Cells at once: one per core. Each run's processes mostly sleep, but the
    timing of a run is what it measures, so more runs than cores would change outcomes."""
    return max(1, len(os.sched_getaffinity(0)))


def resolve_policies(policies) -> list:
    """Names or ReaperPolicy classes, each checked (unknown names are a UsageError)."""
    out = []
    for p in policies or list(POLICIES):
        get_policy(p)                     # raises UsageError for an unknown name
        out.append(p)
    return out


def policy_name(p) -> str:
    return p.name if isinstance(p, type) and issubclass(p, ReaperPolicy) else str(p)


def run_matrix(scenarios: list[Scenario], policies: list, speed: float = 10.0, repeat: int = 1,
               jobs: int | None = None, progress=None, trace_dir: str | None = None) -> list[Cell]:
    """Run every (scenario, policy) ``repeat`` times; returns the cells in table order.

    ``trace_dir``: write each run's trace to ``<scenario>.<policy>.<n>.jsonl`` there."""
    cells = {(s.name, policy_name(p)): Cell(s, policy_name(p)) for s in scenarios for p in policies}
    work = [(s, p, n) for n in range(repeat) for s in scenarios for p in policies]

    def trace_of(s, p, n):
        if not trace_dir:
            return None
        path = os.path.join(trace_dir, f"{s.name}.{policy_name(p)}.{n}.jsonl")
        cells[(s.name, policy_name(p))].traces.append(path)
        return path

    jobs = jobs or default_jobs()
    done = 0
    if jobs == 1:
        for s, p, n in work:
            if progress:
                progress(done, len(work), f"running {s.name} under {policy_name(p)}")
            cells[(s.name, policy_name(p))].runs.append(_run_one(s, p, speed, trace_of(s, p, n)))
            done += 1
    else:
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))
        try:
            futures = {pool.submit(_run_one, s, p, speed, trace_of(s, p, n)): (s, p) for s, p, n in work}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    s, p = futures[fut]
                    cells[(s.name, policy_name(p))].runs.append(fut.result())
                    done += 1
                if progress:
                    # (the pool marks one call more than it has workers "running")
                    running = [f"{futures[f][0].name} under {policy_name(futures[f][1])}"
                               for f in pending if f.running()][:jobs]
                    progress(done, len(work), "running " + ", ".join(running) if running else "...")
        except BaseException:
            # Ctrl-C reaches the cells running now (same process group): they tear
            # down and end; the cells not started yet must not start.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    if progress:
        progress(len(work), len(work), "")
    return list(cells.values())


# -- output ------------------------------------------------------------------

def _grid(cells: list[Cell]) -> tuple[list[str], list[str], dict]:
    scen = list(dict.fromkeys(c.scenario.name for c in cells))
    pols = list(dict.fromkeys(c.policy for c in cells))
    return scen, pols, {(c.scenario.name, c.policy): c for c in cells}


def mismatches(cells: list[Cell]) -> list[Cell]:
    return [c for c in cells if c.matches() is False]


def _footnotes(cells: list[Cell]) -> list[str]:
    lines = []
    for c in mismatches(cells):
        e = c.expected
        want = f"{e.verdict}" + (f" with {e.kills} kills" if e.kills is not None else "")
        lines.append(f"! {c.scenario.name} under {c.policy}: stated {want} ({e.why}); "
                     f"measured {', '.join(f'{o} x{n}' for o, n in c.outcomes().items())}")
    return lines


def format_table(cells: list[Cell], header: str = "") -> str:
    scen, pols, by = _grid(cells)
    rows = [["scenario", *pols]] + [[s, *(by[(s, p)].text() for p in pols)] for s in scen]
    out = [header] if header else []
    out.append(columns(rows))
    out += _footnotes(cells)
    return "\n".join(out)


def format_markdown(cells: list[Cell], header: str = "") -> str:
    scen, pols, by = _grid(cells)
    out = [header, ""] if header else []
    out.append("| scenario | " + " | ".join(f"`{p}`" for p in pols) + " |")
    out.append("|---|" + "---|" * len(pols))
    for s in scen:
        out.append(f"| `{s}` | " + " | ".join(by[(s, p)].text() for p in pols) + " |")
    notes = _footnotes(cells)
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out)


def format_csv(cells: list[Cell]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["scenario", "policy", "runs", "outcomes", "time_min_s", "time_median_s", "time_max_s",
                "expected_verdict", "expected_kills", "matches"])
    for c in cells:
        ts, e = c.times(), c.expected
        w.writerow([c.scenario.name, c.policy, len(c.runs),
                    "; ".join(f"{o} x{n}" for o, n in c.outcomes().items()),
                    f"{min(ts):.3f}" if ts else "", f"{statistics.median(ts):.3f}" if ts else "",
                    f"{max(ts):.3f}" if ts else "", e.verdict if e else "",
                    "" if e is None or e.kills is None else e.kills,
                    "" if c.matches() is None else str(c.matches()).lower()])
    return buf.getvalue().rstrip("\n")


def format_json(cells: list[Cell]) -> str:
    return json.dumps([{"scenario": c.scenario.name, "policy": c.policy, "cell": c.text(),
                        "agree": c.agree(), "matches": c.matches(),
                        "expected": None if c.expected is None else vars(c.expected),
                        "runs": c.runs} for c in cells], indent=2)


FORMATS = {"table": format_table, "markdown": format_markdown, "csv": format_csv, "json": format_json}


def load_all(names: list[str] | None) -> list[Scenario]:
    return [load_scenario(n) for n in (names or builtin_names())]


class Progress:
    """One self-erasing status line on a terminal; nothing when stderr is piped."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.enabled = stream.isatty()

    def __call__(self, done: int, total: int, what: str) -> None:
        if not self.enabled:
            return
        line = f"[{done}/{total}] {what}" if what else ""
        self.stream.write("\r\033[K" + line)
        if not what:
            self.stream.write("\r\033[K")
        self.stream.flush()
