"""``oomemu compare``: every scenario under every policy, one table.

Each cell runs a scenario under a policy ``repeat`` times with real
processes and shows the verdict and kills against ``min_kills`` (``panic
3/1``, ``ok 1/1``, ``ok 2/1 +1``) and the time to resolve. A scenario file
may state what each policy should do (its ``[expected]`` table); a cell whose
measured outcome differs is marked ``!`` and ``--check`` makes that an error;
a cell with a run that lagged behind its clock past the tolerance
(``RunResult.lagged``: the machine could not keep up with the speed) is
marked ``~``, and both are explained under the table.

A run whose verdict is not a normal outcome (``error``: a worker died
unexplained or the environment broke; or any verdict this module does not
know) shows as that verdict, adds no time, and counts as a mismatch. A run
that raises ends the whole matrix with :class:`CellFailed`, its running
cells torn down.

Independent cells run at once in ``jobs`` separate processes (each run is a
supervisor with its own workers); ``jobs=1`` runs them here, one by one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import statistics
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context

from ..errors import UsageError
from ..kernel.verdict import Verdict
from ..policies import POLICIES, ReaperPolicy, get_policy
from ..scenario import Expected, Scenario, builtin_names, load_scenario
from .columns import columns

# the normal outcomes of a run, as a cell shows them
SHORT = {Verdict.RESOLVED: "ok", Verdict.PANIC: "panic", Verdict.HUNG: "hung"}


NOT_REAL = "n/a"        # a host cell of a scenario that cannot be made real on this machine


class CellFailed(Exception):
    """A run of a cell raised instead of reaching a verdict. ``usage``: the
    cause is the user's or the environment's (a UsageError: exit 2), else ours (exit 1).
    Its args are plain strings, so it crosses a process pool intact."""

    def __init__(self, scenario: str, policy: str, message: str, usage: bool):
        super().__init__(scenario, policy, message, usage)
        self.scenario, self.policy, self.message, self.usage = scenario, policy, message, usage

    def __str__(self) -> str:
        return f"{self.scenario} under {self.policy}: {self.message}"


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
        """``panic 3/1``, ``ok 2/1 +1``; a verdict that is not a normal outcome is shown alone (``error``)."""
        verdict = str(run.get("verdict"))
        if verdict not in SHORT:
            return verdict
        text = f"{SHORT[verdict]} {run['kills']}/{run['min_kills']}"
        if verdict == Verdict.RESOLVED and run.get("extra_kills"):
            text += f" +{run['extra_kills']}"
        return text

    def outcomes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.runs:
            out[self.outcome(r)] = out.get(self.outcome(r), 0) + 1
        return out

    def agree(self) -> bool:
        return len(self.outcomes()) == 1

    def errors(self) -> list[dict]:
        """Runs that ended in no normal outcome (``error``, or a verdict unknown here)."""
        return [r for r in self.runs if r.get("verdict") not in SHORT and r.get("verdict") != NOT_REAL]

    def run_matches(self, run: dict) -> bool | None:
        e = self.expected
        if run.get("verdict") == NOT_REAL:
            return None                   # a host cell of what cannot be made real: nothing to check
        if run.get("verdict") not in SHORT:
            return False
        if e is None:
            return None
        return run["verdict"] == e.verdict and (e.kills is None or run["kills"] == e.kills)

    def matches(self) -> bool | None:
        """Do all runs match the stated outcome? None if the file states none
        (and no run ended in error: an error never matches)."""
        if self.errors():
            return False
        if self.expected is None:
            return None
        return all(self.run_matches(r) for r in self.runs)

    def lagged(self) -> list[dict]:
        """Runs that fell behind their clock past the tolerance (RunResult.lagged)."""
        return [r for r in self.runs if r.get("lagged")]

    def worst_lag_ms(self) -> float:
        return max((r.get("lag_ms") or 0.0 for r in self.runs), default=0.0)

    def times(self) -> list[float]:
        return [r["time_to_resolve_s"] for r in self.runs
                if r.get("verdict") in SHORT and r.get("time_to_resolve_s") is not None]

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
        if self.lagged():
            cell += " ~"
        if self.matches() is False:
            cell += " !"
        return cell


def error_cause(run: dict) -> str:
    """What a run that ended in error says about why, in one line."""
    for key in ("error", "cause", "reason"):
        if isinstance(run.get(key), str) and run[key].strip():
            return run[key].strip().splitlines()[0]
    log = [line for line in run.get("log") or [] if line.strip()]
    return log[-1].strip() if log else "no cause recorded"


def _where(e: BaseException) -> str:
    """``file.py:123``: the innermost frame, for a one-line report of a fault."""
    frames = traceback.extract_tb(e.__traceback__)
    return f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""


def _run_one(scenario: Scenario, policy, speed: float, trace: str | None = None) -> dict:
    """One run, as RunResult.to_dict(); anything it raises becomes a CellFailed."""
    from ..runtime.supervisor import run_scenario
    global _in_run
    _in_run = True
    try:
        if _stopping:                    # this pool process was told to end: start nothing
            raise KeyboardInterrupt
        if policy == "host":              # the kernel's own clock: --speed does not apply
            from ..host.run import HostRun
            try:
                run = HostRun(scenario, trace=trace)
            except UsageError as e:       # not reproducible here (or not on this machine: FUSE):
                return {"verdict": NOT_REAL, "why": str(e), "kills": 0, "min_kills": scenario.min_kills}
            return run.execute().to_dict()
        return run_scenario(scenario, policy=policy, speed=speed, trace=trace).to_dict()
    except UsageError as e:
        raise CellFailed(scenario.name, policy_name(policy), str(e), True) from None
    except Exception as e:
        raise CellFailed(scenario.name, policy_name(policy), f"{e!r}{_where(e)}", False) from None
    finally:
        _in_run = False


# In a pool process: a SIGINT or SIGTERM has come; a cell is running.
_stopping = _in_run = False
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _pool_worker_init() -> None:
    """In each pool process: the first SIGINT (Ctrl-C reaches the whole group)
    or SIGTERM (from :func:`_stop_pool`) ends the cell it runs through its
    teardown, and no cell starts after it; any later one is ignored, so that it
    cannot cut that teardown short. The process started with both blocked (see
    :func:`run_matrix`): one that came while it started is delivered here."""
    signal.signal(signal.SIGINT, _first_signal)
    signal.signal(signal.SIGTERM, _first_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _first_signal(signum, frame):
    global _stopping
    _stopping = True
    signal.signal(signal.SIGINT, _later_signal)
    signal.signal(signal.SIGTERM, _later_signal)
    if not _in_run:                      # idle, or starting: the pool's shutdown ends it
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _later_signal(signum, frame):
    """A Python no-op rather than SIG_IGN: a signal already caught by the C handler
    would otherwise be reported as "ignored due to race condition" on stderr."""


POOL_STOP_GRACE_S = 20.0     # a run's teardown waits for its workers; past this, SIGKILL
CTRL_C_GRACE_S = 2.0         # Ctrl-C reached the pool too: let its cells end by themselves first


def _stop_pool(pool: ProcessPoolExecutor, first_wait: float = 0.0) -> None:
    """Cancel the cells not started, end the running ones through their teardown
    (SIGTERM, after ``first_wait`` s for them to end by themselves), wait for
    every pool process, and kill any that outlives the grace. (The pool's
    processes are its private ``_processes``: the executor has no public way to
    reach a running call.)"""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + first_wait
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + POOL_STOP_GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def default_jobs() -> int:
    """Cells at once: one per core. Each run's processes mostly sleep, but the
    timing of a run is what it measures, so more runs than cores would change outcomes."""
    return max(1, len(os.sched_getaffinity(0)))


def resolve_policies(policies) -> list:
    """Names or ReaperPolicy classes, each checked (unknown names are a UsageError)."""
    out = []
    for p in policies or list(POLICIES):
        if p == "host":                   # this machine's kernel (emulator.host): a column like any
            from ..host.run import check_host
            check_host()                  # root and a memory controller, or one line and exit 2
        else:
            get_policy(p)                 # raises UsageError for an unknown name
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
    # Host cells run one at a time, here, before the others: runs on the kernel share its
    # oom_lock and its one reaper, and a loaded CPU would change what they measure.
    host = [w for w in work if policy_name(w[1]) == "host"]
    work = [w for w in work if policy_name(w[1]) != "host"]
    for s, p, n in host:
        if progress:
            progress(done, len(work) + len(host), f"running {s.name} on this kernel")
        cells[(s.name, "host")].runs.append(_run_one(s, p, speed, trace_of(s, p, n)))
        done += 1
    if work and jobs == 1:
        for s, p, n in work:
            if progress:
                progress(done, len(work) + len(host), f"running {s.name} under {policy_name(p)}")
            cells[(s.name, policy_name(p))].runs.append(_run_one(s, p, speed, trace_of(s, p, n)))
            done += 1
    elif work:
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                                   initializer=_pool_worker_init)
        try:
            # The pool's processes start here: with SIGINT and SIGTERM blocked, so
            # that one arriving while they boot waits for their initializer.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                futures = {pool.submit(_run_one, s, p, speed, trace_of(s, p, n)): (s, p) for s, p, n in work}
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    s, p = futures[fut]
                    try:
                        result = fut.result()
                    except BrokenProcessPool as e:      # killed from outside, or by the real OOM killer
                        raise CellFailed(s.name, policy_name(p), f"the process running it died ({e})",
                                         False) from None
                    cells[(s.name, policy_name(p))].runs.append(result)
                    done += 1
                if progress:
                    # (the pool marks one call more than it has workers "running")
                    running = [f"{futures[f][0].name} under {policy_name(futures[f][1])}"
                               for f in pending if f.running()][:jobs]
                    progress(done, len(work) + len(host), "running " + ", ".join(running) if running else "...")
        except KeyboardInterrupt:
            # Ctrl-C from a terminal reached the pool's processes too: most cells
            # are ending already. A SIGTERM follows for any that did not get it.
            _stop_pool(pool, CTRL_C_GRACE_S)
            raise
        except BaseException:
            # A cell raised, or SIGTERM: the cells not started must not start,
            # and the running ones end now, through their teardown.
            _stop_pool(pool)
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
    """Cells that differ from their stated outcome or had a run end in error."""
    return [c for c in cells if c.matches() is False]


def _stated(e: Expected) -> str:
    return f"{e.verdict}" + (f" with {e.kills} kill{'' if e.kills == 1 else 's'}" if e.kills is not None else "")


def _footnotes(cells: list[Cell], code=lambda text: text) -> list[str]:
    """One line per mismatch: ``! scenario under policy: ...``; ``code`` quotes
    text a run produced (markdown puts it in a code span)."""
    lines = []
    for c in cells:
        if c.lagged():
            tol = c.lagged()[0].get("lag_tolerance_ms", 0.0)
            lines.append(f"~ {c.scenario.name} under {c.policy}: {len(c.lagged())} of {len(c.runs)} runs lagged "
                         f"behind their clock (worst {c.worst_lag_ms():.1f} ms, tolerance {tol:g} ms): their "
                         f"timings, and so perhaps their outcome, are not those of this speed")
    for c in mismatches(cells):
        measured = ", ".join(f"{o} x{n}" for o, n in c.outcomes().items())
        errs = c.errors()
        if errs:
            more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
            lines.append(f"! {c.scenario.name} under {c.policy}: {len(errs)} of {len(c.runs)} runs "
                         f"ended in {errs[0].get('verdict')}: {code(error_cause(errs[0]))}{more}; "
                         f"measured {measured}")
        else:
            e = c.expected
            lines.append(f"! {c.scenario.name} under {c.policy}: stated {_stated(e)} ({e.why}); "
                         f"measured {measured}")
    return lines


def table_header(speed: float, repeat: int) -> str:
    return f"oomemu compare --speed {speed:g} --repeat {repeat}: verdict kills/fewest [+extra] time to resolve"


def markdown_header(speed: float, repeat: int) -> str:
    """A markdown paragraph that says what the table below it is."""
    return (f"Measured by `oomemu compare --speed {speed:g} --repeat {repeat}`. Each cell: the verdict "
            f"(`ok` = resolved, `panic`, `hung`; `error` = the run broke, never an outcome), kills / fewest "
            f"needed, `+N` extra kills, `xN` runs that agreed, and the time to resolve in emulated seconds "
            f"(min-max). A cell that differs from its stated outcome ends in an exclamation mark, one "
            f"whose runs lagged behind their clock (the machine could not keep up with the speed) in a "
            f"tilde; both are listed below the table.")


def format_table(cells: list[Cell], header: str = "") -> str:
    scen, pols, by = _grid(cells)
    rows = [["scenario", *pols]] + [[s, *(by[(s, p)].text() for p in pols)] for s in scen]
    out = [header] if header else []
    out.append(columns(rows))
    out += _footnotes(cells)
    return "\n".join(out)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_code(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "/") + "`"


def format_markdown(cells: list[Cell], header: str = "") -> str:
    """Only markdown: ``header`` (itself markdown), a table, a list of mismatches."""
    scen, pols, by = _grid(cells)
    out = [header, ""] if header else []
    out.append("| scenario | " + " | ".join(_md_code(p) for p in pols) + " |")
    out.append("|---|" + "---|" * len(pols))
    for s in scen:
        out.append(f"| {_md_code(s)} | " + " | ".join(_md_cell(by[(s, p)].text()) for p in pols) + " |")
    notes = _footnotes(cells, code=_md_code)
    if notes:
        out += [""] + [f"- {n}".replace("\n", " ") for n in notes]
    return "\n".join(out)


def format_csv(cells: list[Cell]) -> str:
    """Only CSV: a header row, then a row per cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["scenario", "policy", "runs", "outcomes", "time_min_s", "time_median_s", "time_max_s",
                "expected_verdict", "expected_kills", "matches", "errors", "error_cause", "lagged_runs",
                "worst_lag_ms"])
    for c in cells:
        ts, e, errs = c.times(), c.expected, c.errors()
        w.writerow([c.scenario.name, c.policy, len(c.runs),
                    "; ".join(f"{o} x{n}" for o, n in c.outcomes().items()),
                    f"{min(ts):.3f}" if ts else "", f"{statistics.median(ts):.3f}" if ts else "",
                    f"{max(ts):.3f}" if ts else "", e.verdict if e else "",
                    "" if e is None or e.kills is None else e.kills,
                    "" if c.matches() is None else str(c.matches()).lower(),
                    len(errs), error_cause(errs[0]) if errs else "", len(c.lagged()), f"{c.worst_lag_ms():.3f}"])
    return buf.getvalue().rstrip("\n")


def format_json(cells: list[Cell]) -> str:
    """Only JSON: a list of cells; each run is everything RunResult.to_dict() has
    (victims, log, run_id, ...) plus its ``outcome`` and whether it ``matches``."""
    return json.dumps([{"scenario": c.scenario.name, "policy": c.policy, "cell": c.text(),
                        "agree": c.agree(), "matches": c.matches(), "errors": len(c.errors()),
                        "lagged": len(c.lagged()), "worst_lag_ms": c.worst_lag_ms(),
                        "expected": None if c.expected is None else vars(c.expected),
                        "runs": [dict(r, outcome=c.outcome(r), matches=c.run_matches(r)) for r in c.runs]}
                       for c in cells], indent=2)


def render(cells: list[Cell], fmt: str, speed: float, repeat: int) -> str:
    """The whole output of ``oomemu compare --format fmt``: nothing in it but that format."""
    if fmt == "table":
        return format_table(cells, table_header(speed, repeat))
    if fmt == "markdown":
        return format_markdown(cells, markdown_header(speed, repeat))
    return FORMATS[fmt](cells)


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
