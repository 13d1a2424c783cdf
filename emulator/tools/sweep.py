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
the share of the scenarios where it panics or hangs, and marks the Pareto
front (no other row is as good on all three of extra kills, time to resolve
and that share, and better on one).

``--plot FILE`` draws the trade-off: each policy and constants one point at
(median time to resolve, extra kills per run), the Pareto front ringed.

Each run is a process of its own in a fresh session (tools/point.py): ``--jobs``
at once here, or tasks of a Dask distributed cluster with ``--dask ADDRESS``
(``local``: a cluster of ``--jobs`` worker processes started here). ``--csv``
writes the runs as CSV too; :func:`agreement` (``oomemu sweep-diff``) compares
two results files of one grid. A family file (``tools/family.py``) stands for
its members. docs/sweep.md has it all.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import signal
import statistics
import sys
import textwrap
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from ..errors import UsageError
from ..policies import get_policy
from ..scenario import Scenario
from . import compare, point
from .point import PointSpec


@dataclass(frozen=True)
class Point:
    """One run of the grid."""
    scenario: str
    policy: str
    set: tuple[tuple[str, str], ...]     # (constant, value as given), in name order
    repeat: int

    @classmethod
    def of(cls, rec: dict) -> "Point":
        """The point a results file's line is a run of."""
        return cls(rec.get("scenario"), rec.get("policy"), tuple(sorted(dict(rec.get("set") or {}).items())),
                   rec.get("repeat"))

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
        vals = [v.strip() for v in values.split(",")]
        if not eq or not key or not all(vals):
            raise UsageError(f"--set {item!r}: expected NAME=VALUE[,VALUE...]")
        if key in out:
            raise UsageError(f"--set {key}: given twice (list its values once: {key}=A,B,...)")
        seen: dict = {}
        for v in vals:
            if _value_key(v) in seen:
                raise UsageError(f"--set {key}: {v} is {seen[_value_key(v)]} again (each value once)")
            seen[_value_key(v)] = v
        out[key] = vals
    return out


def grid(scenarios: list[Scenario], policies: list[str], sets: dict[str, list[str]], repeat: int) -> list[Point]:
    """Every point, in order: per scenario, per policy, every combination of the values of
    the constants that policy has (its defaults if none), per repeat. Each value is checked
    against the policy's range here, before anything runs; so is each scenario's name
    (a point goes by it: two of one name would be one point)."""
    seen: dict[str, Scenario] = {}
    for s in scenarios:
        if s.name in seen:
            raise UsageError(f"two scenarios are named {s.name} ({seen[s.name].source} and {s.source}): "
                             "a sweep tells its points apart by their scenarios' names")
        seen[s.name] = s
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
    order = {s.name: i for i, s in enumerate(scenarios)}
    points.sort(key=lambda p: (p.repeat, order[p.scenario]))
    return points


def done_keys(path: str) -> set[str]:
    """The points a results file holds already (a line that does not parse, as the torn
    last line of a sweep cut short, is not one of them; nor is a run the machine broke,
    an error of kind ``environment``: /dev/shm full, the host's OOM killer)."""
    return _done(_records_if_any(path))


def _done(records: list[dict]) -> set[str]:
    return {Point.of(r).key for r in records
            if not (r.get("verdict") == "error" and r.get("error_kind") == "environment")}


def _records_if_any(path: str) -> list[dict]:
    try:
        return read_records(path)
    except FileNotFoundError:
        return []


def scenario_digest(s: Scenario) -> str:
    """What a scenario is (its tasks, sizes, times), not where it came from nor what it says
    of itself: a family member's changes with the family's seed and ranges."""
    import dataclasses
    import hashlib
    bare = dataclasses.replace(s, source="", description="", expected={})
    return hashlib.sha256(repr(bare).encode()).hexdigest()[:16]


def check_same_scenarios(path: str, records: list[dict], digests: dict[str, str]) -> None:
    """Refuse a results file whose runs of one of this sweep's scenarios were of another
    scenario of that name (a family's seed or ranges, or a file, changed since): its points
    would count as done, and the summary would mix the two. UsageError, one line."""
    for r in records:
        had, now = r.get("scenario_digest"), digests.get(r.get("scenario"))
        if had and now and had != now:
            raise UsageError(f"--out {path}: its runs of {r['scenario']} are of another scenario of that name "
                             "(it changed since): give another --out")


def _record(point: Point, result: dict, digest: str | None = None) -> str:
    rec = {"scenario": point.scenario, "policy": point.policy, "set": point.settings, "repeat": point.repeat}
    if digest:
        rec["scenario_digest"] = digest
    rec.update({k: v for k, v in result.items() if k not in rec})
    return json.dumps(rec, separators=(",", ":"), default=str) + "\n"


@contextlib.contextmanager
def _sole_writer(out: str):
    """Hold ``out`` for this sweep alone (flock): two sweeps of one file would each run
    what it lacks, and every such point would be in it twice."""
    import fcntl
    with open(out, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"--out {out}: another sweep is writing it") from None
        yield


def run_sweep(scenarios: list[Scenario], points: list[Point], out: str, speed: float, jobs: int,
              progress=None, dask: str | None = None, on_start=None) -> int:
    with _sole_writer(out):
        return _run_sweep(scenarios, points, out, speed, jobs, progress, dask, on_start)


def _run_sweep(scenarios: list[Scenario], points: list[Point], out: str, speed: float, jobs: int,
               progress=None, dask: str | None = None, on_start=None) -> int:
    """Run the points ``out`` does not hold yet, each in a process of its own
    (tools/point.py): ``jobs`` at once here, or on the Dask cluster at ``dask``
    (``"local"``: one of ``jobs`` worker processes started for the sweep).
    Each result is appended as it comes back, once per point whatever a
    cluster re-ran. Returns how many ran. A point the run refuses, or whose
    process breaks, stops the sweep (CellFailed), as a run does in compare;
    so do Ctrl-C and SIGTERM, and the points under way end through their
    teardown wherever they run. ``on_start(to_run, total)`` is told what is left to
    run once the points have somewhere to run, before the first starts."""
    by_name = {s.name: s for s in scenarios}
    digests = {s.name: scenario_digest(s) for s in scenarios}
    records = _records_if_any(out)
    check_same_scenarios(out, records, digests)
    have = _done(records)
    todo = [p for p in points if p.key not in have]
    if not todo:
        return 0
    sweep_id = f"{os.getpid()}-{secrets.token_hex(4)}"
    digest = point.code_digest()
    specs = {p: PointSpec(by_name[p.scenario], p.policy, p.settings, speed, sweep_id, digest) for p in todo}
    backend = DaskPoints(dask, jobs, sweep_id) if dask else LocalPoints(jobs, sweep_id)
    if on_start:                                       # the cluster is up and checked: say what comes
        on_start(len(todo), len(points))
    done, began = 0, time.monotonic()
    try:
        with open(out, "a") as f:
            if f.tell() and not _ends_with_newline(out):
                f.write("\n")                             # a torn last line stays alone
            for p, answer in backend.results(specs):
                status = answer["status"]
                if status in ("usage", "fault"):
                    raise compare.CellFailed(p.scenario, p.policy, answer["message"], status == "usage")
                if status != "ok" or p.key in have:        # stopped; or a second answer for it
                    continue
                have.add(p.key)
                f.write(_record(p, answer["result"], digests[p.scenario]))
                f.flush()
                os.fsync(f.fileno())
                done += 1
                if progress:
                    progress(done, len(todo), eta_text(done, len(todo), time.monotonic() - began)
                             + (f"; {len(points) - len(todo)} done before" if len(todo) < len(points) else ""))
    except BaseException:
        backend.stop()
        raise
    finally:
        backend.close()
    return done


class LocalPoints:
    """``jobs`` points at once on this machine: a thread each, waiting on its point process."""

    def __init__(self, jobs: int, sweep_id: str):
        self.sweep_id = sweep_id
        self.pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="point")

    def results(self, specs: dict[Point, PointSpec]):
        futures = {self.pool.submit(point.run_point, spec): p for p, spec in specs.items()}
        pending = set(futures)
        while pending:                     # a bounded wait, so that Ctrl-C is seen at once
            finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield futures[fut], fut.result()

    def stop(self) -> None:
        point.stop_points(self.sweep_id)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        point.forget(self.sweep_id)


class DaskPoints:
    """Points as tasks of a Dask distributed cluster (the ``cluster`` extra). Each
    task runs its point as a process of its own on the worker (tools/point.py);
    each repeat is a task of its own (``pure=False``, a key per point); a task
    whose worker died is run again by the scheduler and answers once.
    ``address`` ``local`` starts a cluster of ``jobs`` worker processes here."""

    def __init__(self, address: str, jobs: int, sweep_id: str):
        try:
            import distributed
        except ImportError:
            raise UsageError("--dask needs Dask distributed: pip install 'oomemu[cluster]'") from None
        self.sweep_id, self.cluster, self.client, self.futures = sweep_id, None, None, {}
        try:
            if address == "local":
                self.cluster = _local_cluster(distributed, jobs)
                address = self.cluster.scheduler_address
            _refused(address)
            try:
                self.client = _connect(distributed, address)
            except UsageError:
                raise
            except (OSError, TimeoutError, ValueError) as e:
                raise UsageError(f"--dask {address}: no Dask scheduler answers there ({e})") from None
            except Exception as e:            # what answers reads as garbage: sshd, say
                raise UsageError(f"--dask {address}: what answers there is not a Dask scheduler "
                                 f"({type(e).__name__} reading its answer)") from None
            check_workers(self.client, address)
        except BaseException:
            self.close()
            raise

    def results(self, specs: dict[Point, PointSpec]):
        from distributed import as_completed
        self.futures = {self.client.submit(point.run_point, spec, pure=False,
                                           key=f"oomemu-point-{self.sweep_id}-{n}"): p
                        for n, (p, spec) in enumerate(specs.items())}
        for fut in as_completed(list(self.futures)):
            p = self.futures.pop(fut)         # what is left is what stop() cancels
            try:
                answer = fut.result()
            except Exception as e:            # KilledWorker: it took down every worker it ran on
                answer = {"status": "fault", "message": f"its Dask task failed: {e!r}"}
            fut.release()                     # its result leaves the worker's memory now, not at the end
            yield p, answer

    def stop(self) -> None:
        """Start no more points, and end those under way on every worker (through their
        teardown, as here)."""
        if self.client is None:
            return
        try:
            self.client.cancel(list(self.futures))
            self.client.run(point.stop_points, self.sweep_id, on_error="return")
        except Exception as e:             # the cluster went away: its points watch their workers
            print(f"oomemu sweep: could not reach every Dask worker to stop its points ({e!r})",
                  file=sys.stderr)

    def close(self) -> None:
        try:
            if self.client is not None:
                with contextlib.suppress(Exception):
                    self.client.run(point.forget, self.sweep_id, on_error="return")
                self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


HANDSHAKE_MARGIN_S = 5.0


def connect_timeout_s() -> float:
    """Dask's own connect timeout (``distributed.comm.timeouts.connect``: 30 s unless its
    configuration or DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT says otherwise)."""
    import dask
    from dask.utils import parse_timedelta
    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="s"))
DASK_WORKERS_S = 30.0


def _connect(distributed, address: str):
    """A Client of the scheduler at ``address``, within Dask's connect timeout and a margin. Dask's
    own timeout does not cover its handshake (dask/distributed#8071): at a port where
    something else listens and says nothing, an HTTP server such as the dashboard's,
    it would wait for ever. So the connection is made in a thread of its own, and one
    that does not come in time is a usage error; its thread, a daemon, is left behind
    with the process about to exit."""
    import threading
    box: dict = {}
    wait_s = connect_timeout_s() + HANDSHAKE_MARGIN_S

    def connect():
        try:
            box["client"] = distributed.Client(address)
        except BaseException as e:
            box["error"] = e
    t = threading.Thread(target=connect, name="dask-connect", daemon=True)
    t.start()
    t.join(wait_s)
    if t.is_alive():
        raise UsageError(f"--dask {address}: something listens there but does not answer as a Dask scheduler "
                         f"(no handshake in {wait_s:g} s; the dashboard's port, 8787?)")
    if "error" in box:
        raise box["error"]
    return box["client"]


def _refused(address: str) -> None:
    """A TCP address nobody listens at is one line at once (Dask would retry for
    its connect timeout); anything else is left to Dask to judge."""
    import socket
    from urllib.parse import urlsplit
    try:
        where = urlsplit(address if "://" in address else f"tcp://{address}")
        if where.scheme != "tcp" or not where.hostname or not where.port:
            return
        socket.create_connection((where.hostname, where.port), timeout=connect_timeout_s()).close()
    except ValueError:
        return
    except OSError as e:
        raise UsageError(f"--dask {address}: no Dask scheduler answers there ({e.strerror or e})") from None


def _local_cluster(distributed, jobs: int):
    """``--dask local``: ``jobs`` worker processes of one thread each, here, its
    dashboard on a free port. They start with SIGINT ignored: Ctrl-C at the terminal is the sweep's
    to handle (it stops the points through them), not theirs to die of."""
    import logging
    print(f"oomemu sweep: starting a local Dask cluster of {jobs} worker(s) (Ctrl-C counts once it is up)",
          file=sys.stderr, flush=True)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return distributed.LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                        dashboard_address=":0", silence_logs=logging.ERROR)
    finally:
        signal.signal(signal.SIGINT, old)


def check_workers(client, address: str) -> dict:
    """Every worker runs this very code (the sweep's outcomes would mix otherwise) on Linux;
    at least one must be there within DASK_WORKERS_S. Returns their facts by address."""
    try:
        client.wait_for_workers(1, timeout=DASK_WORKERS_S)
    except TimeoutError:
        raise UsageError(f"--dask {address}: the scheduler has no workers "
                         f"(none came in {DASK_WORKERS_S:.0f} s)") from None
    try:
        facts = client.run(point.worker_facts)
    except Exception as e:
        raise UsageError(f"--dask {address}: a worker cannot run oomemu ({e!r}): "
                         "install it there, the same version as here") from None
    mine = point.code_digest()
    for where, f in facts.items():
        if f["system"] != "Linux":
            raise UsageError(f"--dask: worker {where} ({f['host']}) runs {f['system']}: oomemu needs Linux")
        if f["digest"] != mine:
            raise UsageError(f"--dask: worker {where} ({f['host']}) has other oomemu code (digest {f['digest']}, "
                             f"here {mine}): install the same there")
    return facts


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
    scenarios: set = field(default_factory=set)        # the scenarios (family members) it ran
    bad: set = field(default_factory=set)              # ... and those where a run panicked or hung
    front: bool = False

    @property
    def bad_share(self) -> float:
        """Of the scenarios it ran, the share where a run panicked or hung."""
        return len(self.bad) / len(self.scenarios) if self.scenarios else 0.0

    @property
    def costs(self) -> tuple[float, float, float]:
        """What the Pareto front weighs, lower better each: extra kills per run, the median
        time to resolve, and the share of scenarios that panic or hang (a hung run kills
        nobody more and has no time to resolve: without it, hanging would look cheap)."""
        return (self.extra_mean, self.ttr_median, self.bad_share)

    @property
    def bad_text(self) -> str:
        """The share of the scenarios (a family's members) where this point panics or hangs
        (in any of its repeats): ``2/12 (17%)``."""
        if not self.scenarios:
            return "-"
        return f"{len(self.bad)}/{len(self.scenarios)} ({100 * len(self.bad) / len(self.scenarios):.0f}%)"

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
    (Summary.costs, lower is better on each) marked."""
    rows: dict = {}
    for r in records:
        key = (r["policy"], tuple(sorted(r.get("set", {}).items())))
        s = rows.setdefault(key, Summary(*key))
        s.runs += 1
        verdict = r.get("verdict")
        if verdict == "error":
            s.errors += 1
            continue
        s.scenarios.add(r["scenario"])
        if verdict in ("panic", "hung"):
            s.bad.add(r["scenario"])
        s.panics += verdict == "panic"
        s.hangs += verdict == "hung"
        s.extra.append(max(0, r.get("kills", 0) - r.get("min_kills", 0)))
        if verdict == "resolved" and r.get("time_to_resolve_s") is not None:
            s.ttr.append(r["time_to_resolve_s"])
    order = list(dict.fromkeys(policy for policy, _ in rows))     # policies as they first come
    out = sorted(rows.values(), key=lambda s: (order.index(s.policy), [_value_key(v) for _, v in s.set]))
    scored = [s for s in out if s.extra_mean is not None and s.ttr_median is not None]
    for s in scored:
        s.front = not any(o is not s and _dominates(o.costs, s.costs) for o in scored)
    return out


def _dominates(a: tuple, b: tuple) -> bool:
    return all(x <= y for x, y in zip(a, b)) and a != b


def _value_key(value: str):
    """Values as numbers where they are numbers (0.25 before 10), else as text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def render(summaries: list[Summary]) -> str:
    def settings(s):
        return ", ".join(f"{k}={v}" for k, v in s.set) or "(defaults)"

    def num(x, fmt):
        return "-" if x is None else fmt % x
    rows = [("policy", "constants", "runs", "extra kills/run", "time to resolve", "panic", "hung", "error",
             "scenarios panic|hung", "front")]
    for s in summaries:
        rows.append((s.policy, settings(s), str(s.runs), num(s.extra_mean, "%.2f"), num(s.ttr_median, "%.2fs"),
                     str(s.panics), str(s.hangs), str(s.errors), s.bad_text, "*" if s.front else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _label_groups(scored: list[Summary]) -> list[tuple[tuple[float, float], list[tuple[str, str]]]]:
    """One label per group of points that lie close together (within 3 % of the axes'
    spans: their labels would overlap), at the group's first point, a line (policy, text)
    per point: its constants' values (their names are in the legend), its panics and hangs."""
    xs, ys = [s.ttr_median for s in scored], [s.extra_mean for s in scored]
    dx = 0.03 * ((max(xs) - min(xs)) or 1.0) if xs else 1.0
    dy = 0.03 * ((max(ys) - min(ys)) or 1.0) if ys else 1.0
    groups: list[tuple[tuple[float, float], list[tuple[str, str]]]] = []
    for s in sorted(scored, key=lambda s: (s.ttr_median, s.extra_mean)):
        label = ", ".join(v for _, v in s.set) or s.policy
        if s.bad:
            label += f" [panic|hung {len(s.bad)}/{len(s.scenarios)}]"
        near = next((g for g in groups if abs(g[0][0] - s.ttr_median) <= dx and abs(g[0][1] - s.extra_mean) <= dy),
                    None)
        if near:
            near[1].append((s.policy, label))
        else:
            groups.append(((s.ttr_median, s.extra_mean), [(s.policy, label)]))
    return groups


def plot(summaries: list[Summary], out: str) -> list[Summary]:
    """The trade-off as a picture: x the median time to resolve, y the extra kills per run;
    a colour per policy (its constants' names in the legend), each point labelled with their
    values; the Pareto front ringed. A row none of whose runs resolved has no time to
    resolve and no place on the axes: it is named in a corner, and returned."""
    from .plot import _matplotlib
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    scored = [s for s in summaries if s.extra_mean is not None and s.ttr_median is not None]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {p: colours[i % len(colours)] for i, p in enumerate(dict.fromkeys(s.policy for s in scored))}
    for policy in colour:
        mine = [s for s in scored if s.policy == policy]
        names = list(dict.fromkeys(k for s in mine for k, _ in s.set))
        ax.scatter([s.ttr_median for s in mine], [s.extra_mean for s in mine], s=40, zorder=3,
                   label=f"{policy} ({', '.join(names)})" if names else policy, color=colour[policy])
    for (x, y), lines in _label_groups(scored):
        for j, (policy, text) in enumerate(lines):       # a line each, in its policy's colour
            ax.annotate(text, (x, y), fontsize=7, xytext=(4, 4 + 9 * j), textcoords="offset points",
                        color=colour[policy])
    front = sorted((s for s in scored if s.front), key=lambda s: s.ttr_median)
    if front:
        ax.scatter([s.ttr_median for s in front], [s.extra_mean for s in front], s=110, facecolors="none",
                   edgecolors="black", linewidths=1, zorder=4, label="Pareto front (kills, time, panic|hung)")
    ax.set_xlabel("time to resolve, median (emulated s)")
    ax.set_ylabel("extra kills per run (mean)")
    ax.set_title("extra kills against time to resolve ([panic|hung k/n]: of the n scenarios)")
    if scored:
        ax.legend(fontsize=8)
    undrawn = [s for s in summaries if s.extra_mean is None or s.ttr_median is None]
    if undrawn:
        names = "; ".join(f"{s.policy} {', '.join(f'{k}={v}' for k, v in s.set)}".strip() for s in undrawn)
        ax.text(0.01, 0.01, textwrap.fill(f"no run resolved, not drawn: {names}", 110), transform=ax.transAxes,
                fontsize=7, color="firebrick", va="bottom")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=120)
    except OSError as e:
        raise UsageError(f"--plot {out}: {e.strerror}") from None
    finally:
        plt.close(fig)
    return undrawn


def read_records(path: str) -> list[dict]:
    """The runs in a results file, one per point: a later line of a point (the re-run of
    one the machine broke) replaces an earlier one."""
    out: dict[str, dict] = {}
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = raw.decode()
            except UnicodeDecodeError:            # a picture, say, given for a results file
                raise UsageError(f"{path}: not a sweep's results file (JSON lines): it is not text") from None
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "policy" in rec:
                try:
                    key = Point.of(rec).key
                except (TypeError, ValueError):       # a "set" that is no table: no run of ours
                    continue
                out.pop(key, None)
                out[key] = rec
    return list(out.values())


CSV_FIELDS = ("scenario", "policy", "repeat", "verdict", "kills", "min_kills", "extra_kills", "time_to_resolve_s",
              "first_oom_at_s", "resolved_at_s", "speed", "lagged", "lag_ms", "error", "error_kind", "host",
              "run_id", "oomemu_version", "scenario_sha256", "scenario_digest")


def to_csv(records: list[dict]) -> str:
    """The runs as CSV, one row each: the point (a ``set.NAME`` column per constant any
    run has), then the run's scalar fields (CSV_FIELDS). The victims, the log and the
    accounting are lists and tables: they stay in the JSON lines."""
    import csv
    import io
    consts = sorted({k for r in records for k in r.get("set", {})})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*CSV_FIELDS[:3], *(f"set.{k}" for k in consts), *CSV_FIELDS[3:]])
    for r in records:
        sets = r.get("set", {})
        w.writerow([*(r.get(k) for k in CSV_FIELDS[:3]), *(sets.get(k, "") for k in consts),
                    *("" if r.get(k) is None else r.get(k) for k in CSV_FIELDS[3:])])
    return buf.getvalue()


# -- two results files of the same grid (pure) -------------------------------------------

@dataclass
class Agreement:
    """Two results files, point by point (a point: scenario, policy, constants)."""
    only_a: list[tuple] = field(default_factory=list)
    only_b: list[tuple] = field(default_factory=list)
    same: int = 0                       # its repeats agree in each file, and the files agree
    varies: list[tuple] = field(default_factory=list)    # its repeats disagree in a file: not compared
    differ: list[tuple] = field(default_factory=list)    # (point, outcome in a, outcome in b)

    @property
    def ok(self) -> bool:
        return not (self.only_a or self.only_b or self.differ)


def _outcomes(records: list[dict]) -> dict[tuple, dict[int, tuple]]:
    out: dict[tuple, dict[int, tuple]] = {}
    for r in records:
        key = (r["scenario"], r["policy"], tuple(sorted(r.get("set", {}).items())))
        out.setdefault(key, {})[r.get("repeat", 0)] = (r.get("verdict"), r.get("kills"))
    return out


def agreement(a: list[dict], b: list[dict]) -> Agreement:
    """Which points two sweeps of one grid share, and, of those whose repeats give one
    outcome (verdict, kills) in each file, whether the files give the same one. A point
    whose repeats disagree within a file is timing-sensitive there: it is counted apart,
    not compared (its repeats must also be the same ones: the same indices)."""
    oa, ob = _outcomes(a), _outcomes(b)
    g = Agreement(only_a=sorted(set(oa) - set(ob)), only_b=sorted(set(ob) - set(oa)))
    for key in sorted(set(oa) & set(ob)):
        ra, rb = oa[key], ob[key]
        if set(ra) != set(rb):
            (g.only_a if set(ra) - set(rb) else g.only_b).append(key)
            continue
        va, vb = set(ra.values()), set(rb.values())
        if len(va) > 1 or len(vb) > 1:
            g.varies.append(key)
        elif va != vb:
            g.differ.append((key, va.pop(), vb.pop()))
        else:
            g.same += 1
    return g


def render_agreement(g: Agreement, a: str, b: str) -> str:
    def point(key):
        scenario, policy, sets = key
        return f"{scenario} under {policy}" + (f" ({', '.join(f'{k}={v}' for k, v in sets)})" if sets else "")

    def outcome(o):
        return f"{o[0]}, kills {o[1]}"
    shared = g.same + len(g.varies) + len(g.differ)
    lines = [f"{shared} point(s) in both: {g.same} the same in both, {len(g.varies)} whose repeats vary "
             f"(not compared), {len(g.differ)} differ"]
    for key, oa, ob in g.differ:
        lines.append(f"  differs: {point(key)}: {outcome(oa)} in {a}, {outcome(ob)} in {b}")
    for key in g.varies:
        lines.append(f"  varies: {point(key)}")
    for which, keys in ((a, g.only_a), (b, g.only_b)):
        for key in keys:
            lines.append(f"  only in {which} (or with other repeats): {point(key)}")
    return "\n".join(lines)
