"""The ``oomemu`` command line. Exit codes: 0 the command did its job (whatever
a run's verdict), 1 a fault of ours, 2 a mistake in the input or a machine that
cannot hold the run, 3 ``compare --check`` found a difference, 4 ``kill`` or
``mrelease`` failed as the system call would (the line names the errno), 128+N
killed by signal N (after tearing the run down)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys

from ..errors import UsageError
from ..result import RunResult
from .columns import columns

EXIT_OK, EXIT_FAULT, EXIT_USAGE, EXIT_CHECK, EXIT_ERRNO = 0, 1, 2, 3, 4


class _Parser(argparse.ArgumentParser):
    def error(self, message):                      # one line, exit 2
        raise UsageError(message)


def _speed(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < v <= 1e6:
        raise argparse.ArgumentTypeError(f"must be > 0 and at most 1e6: {text!r}")
    return v


MIN_SPEED = 0.1      # a day of emulated time (the longest run_deadline_s) is then 10 real days,
                     # inside the ~24.8 days that one epoll wait can last (INT_MAX ms)


def _run_speed(text: str) -> float:
    v = _speed(text)
    if v < MIN_SPEED:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_SPEED:g} (and at most 1e6): {text!r}")
    return v


def _overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item}: expected name=value")
        out[key.strip()] = value.strip()
    return out


def _echo(line: str) -> None:
    print(line, flush=True)


def cmd_run(a) -> int:
    if a.json == "-":                      # the JSON alone on stdout; what a run says goes to stderr
        out = sys.stdout
        a.json = None
        with contextlib.redirect_stdout(sys.stderr):
            rc, result = _cmd_run(a)
        out.write(result.to_json() + "\n")
        out.flush()
        return rc
    return _cmd_run(a)[0]


def _cmd_run(a):
    from ..runtime.supervisor import Run
    from ..scenario import load_scenario
    if a.policy == "host":                 # what the machine must give first: root, a memory controller
        from ..host.run import check_host
        check_host()
    scenario = load_scenario(a.scenario)
    def started(run):
        if not a.quiet:
            print(f"oomemu: run {run.run_id}: {scenario.name} under {run.policy.name}, "
                  f"speed {a.speed:g}, {len(scenario.tasks)} tasks, {scenario.memory_mb:g} MB", flush=True)
        if a.hold:
            _hold_banner(run, scenario)
        elif getattr(run, "door", None) and not a.quiet:
            print(f"oomemu: run {run.run_id}'s door (its /proc as files, see docs/door.md): {run.door}",
                  flush=True)

    if a.policy == "host":
        run = _host_run(a, scenario, started)
    else:
        run = Run(scenario, a.policy, a.speed, _overrides(a.set), echo=None if a.quiet else _echo,
                  trace=a.trace, hold=a.hold, on_start=started)
        if a.door is not None and a.no_door:
            raise UsageError("--door and --no-door: one or the other")
        if a.door is not None or (a.hold and not a.no_door):
            from .door import door_path
            run.door = door_path(run.run_id, a.door or None)
    for opt, path in (("--json", a.json), ("--trace", a.trace)):
        if path:
            try:
                open(path, "a").close()
            except OSError as e:
                raise UsageError(f"{opt} {path}: {e.strerror}") from None
    result = run.execute()
    print(result.summary(), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            f.write(result.to_json() + "\n")
    if result.error is not None:
        print(f"oomemu: error: {result.error}", file=sys.stderr, flush=True)
    return result.exit_code, result


def _host_run(a, scenario, started):
    """``--policy host``: the scenario on this machine's kernel (emulator.host)."""
    for given, opt in ((a.hold, "--hold"), (a.set, "--set"), (a.speed != 1, "--speed"),
                       (a.door is not None, "--door")):
        if given:
            raise UsageError(f"--policy host runs on the kernel's own clock and constants: {opt} does not apply")
    from ..host.run import HostRun
    return HostRun(scenario, echo=None if a.quiet else _echo, trace=a.trace, on_start=started)


def _hold_banner(run, scenario) -> None:
    rid = run.run_id
    first = scenario.tasks[0].name
    example = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "examples", "hold_mmap_sem.py")
    print(f"""oomemu: run {rid} holds: its tasks stay after their steps until Ctrl-C or 'oomemu stop {rid}'.
oomemu: try, from another terminal:
    oomemu ps {rid} --watch
    oomemu inject {rid} hold-mmap-sem {first} --seconds 5
    oomemu inject {rid} hold-mmap-sem {first} --read --seconds 5
    oomemu inject {rid} alloc {scenario.tasks[-1].name} 50
    oomemu inject {rid} crash {first}
    {sys.executable} {example} {rid} 0 read 5""", flush=True)
    if run.door:
        daemon = os.path.join(os.path.dirname(example), "door_daemon.py")
        print(f"""oomemu: its door, its /proc as files for a daemon of your own (docs/door.md): {run.door}
    oomemu kill {rid} {first}
    oomemu mrelease {rid} {first}
    {sys.executable} {daemon} {run.door}""", flush=True)
    print(flush=True)


def summary_table(results: list[RunResult]) -> str:
    head = ("policy", "verdict", "kills", "fewest", "extra", "time to resolve")
    rows = [head] + [(r.policy, r.verdict, str(r.kills), str(r.min_kills), str(r.extra_kills),
                      "-" if r.time_to_resolve_s is None else f"{r.time_to_resolve_s:.3f}s")
                     for r in results]
    return columns(rows)


def cmd_demo(a) -> int:
    import os

    from ..runtime.supervisor import run_scenario
    from ..scenario import load_scenario
    scenario = load_scenario("mlocked")
    print(f"oomemu demo: {scenario.name}: {scenario.description.strip()}\n", flush=True)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
    results, traces = [], []
    for policy in ("v4.17", "timeout"):
        print(f"--- {scenario.name} under {policy} (speed {a.speed:g}) ---", flush=True)
        trace = os.path.join(a.out, f"{scenario.name}-{policy}.jsonl") if a.out else None
        r = run_scenario(scenario, policy=policy, speed=a.speed, echo=_echo, trace=trace)
        print(r.summary() + "\n", flush=True)
        results.append(r)
        traces.append(trace)
    print(f"{scenario.name}, side by side:")
    print(summary_table(results))
    if a.out:
        print()
        for trace in traces:
            out = trace[:-len(".jsonl")] + ".perfetto.json"
            _write_perfetto([trace], out)
            print(f"oomemu demo: trace events {trace}\n             Perfetto timeline {out} "
                  f"(open it in https://ui.perfetto.dev)")
        try:
            for trace in traces:
                png = trace[:-len(".jsonl")] + ".png"
                _write_plot([trace], png)
                print(f"oomemu demo: picture {png}")
            png = os.path.join(a.out, f"{scenario.name}.png")
            _write_plot(traces, png)
            print(f"oomemu demo: both runs, one above the other, each on its own time axis: {png}")
        except UsageError as e:
            print(f"oomemu demo: no pictures ({e})")
    return EXIT_OK


def _timelines(paths):
    from .timeline import build
    from ..runtime.trace import load_trace
    return [build(load_trace(p)) for p in paths]


def _write_perfetto(paths, out) -> None:
    from .perfetto import to_trace_events
    data = to_trace_events(_timelines(paths))
    try:
        with open(out, "w") as f:
            json.dump(data, f)
    except OSError as e:
        raise UsageError(f"--perfetto {out}: {e.strerror}") from None


def _write_plot(paths, out) -> None:
    from .plot import plot
    plot(_timelines(paths), out)


def cmd_trace(a) -> int:
    if not a.perfetto and not a.plot:
        from collections import Counter
        from ..runtime.trace import load_trace
        from .timeline import build, text
        for path in a.files:
            events = load_trace(path)
            counts = Counter(e["ev"] for e in events)
            print(f"{path}: {len(events)} events over {max(e['t'] for e in events):.3f}s: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
            print("\n".join(text(build(events))))
        return EXIT_OK
    if a.perfetto:
        _write_perfetto(a.files, a.perfetto)
        print(f"oomemu trace: wrote {a.perfetto} (open it in ui.perfetto.dev or chrome://tracing)")
    if a.plot:
        _write_plot(a.files, a.plot)
        print(f"oomemu trace: wrote {a.plot}")
    return EXIT_OK


def cmd_runs(a) -> int:
    from .live import runs_table
    print(runs_table())
    return EXIT_OK


def cmd_ps(a) -> int:
    import time

    from .live import ignored_line, open_run, ps_table
    run = open_run(a.run)
    warned = set()

    def show():
        text = ps_table(run, show_all=a.all)
        if a.watch and sys.stdout.isatty():
            print("\033[H\033[J", end="")
        print(text, flush=True)
        line = ignored_line(run)
        if line and line not in warned:     # once, not at every refresh
            warned.add(line)
            print(f"oomemu ps: {line}", file=sys.stderr, flush=True)

    try:
        show()
        while a.watch:
            time.sleep(a.interval)
            run.close()
            try:
                run = open_run(a.run)
            except UsageError:              # it was there a moment ago: it has ended
                run = None
                print(f"oomemu ps: run {a.run} has ended")
                return EXIT_OK
            show()
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if run is not None:
            run.close()


def cmd_stop(a) -> int:
    from .live import stop
    pid = stop(a.run)
    print(f"oomemu stop: asked run {a.run} (supervisor {pid}) to stop")
    return EXIT_OK


def cmd_inject(a) -> int:
    from .live import inject
    arg = getattr(a, "seconds", None)
    if a.action == "alloc":
        arg = a.mb
    inject(a.run, a.action, a.target, arg, echo=lambda line: print(line, flush=True),
           mode=getattr(a, "mode", None) or "write")
    return EXIT_OK


def cmd_kill(a) -> int:
    from ..runtime.door import DoorError
    from .door import kill_task
    try:
        print(kill_task(a.run, a.task, a.signal), flush=True)
    except DoorError as e:
        print(f"oomemu kill: kill({a.task}, {a.signal}) failed: {e.name}: {e.strerror}", file=sys.stderr)
        return EXIT_ERRNO
    return EXIT_OK


def cmd_mrelease(a) -> int:
    from ..runtime.door import DoorError
    from .door import mrelease_task
    try:
        def waiting(on: bool) -> None:
            if on:
                _say(f"oomemu mrelease: waiting for the mmap_sem of {a.task} (Ctrl-C: EINTR) ...")
        print(mrelease_task(a.run, a.task, on_wait=waiting), flush=True)
    except DoorError as e:
        print(f"oomemu mrelease: process_mrelease({a.task}) failed: {e.name}: {e.strerror}", file=sys.stderr)
        return EXIT_ERRNO
    return EXIT_OK


def _bounded(lo: float, hi: float, what: str):
    """An argparse type: a number in [lo, hi]."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not lo <= v <= hi:                       # NaN fails too
            raise argparse.ArgumentTypeError(f"{what} must be from {lo:g} to {hi:g}: {text!r}")
        return v
    return parse


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return v


def cmd_compare(a) -> int:
    from . import compare
    scenarios = compare.load_all(a.scenarios)
    policies = compare.resolve_policies([p.strip() for p in a.policies.split(",") if p.strip()]
                                        if a.policies else None)
    if a.out:
        try:
            open(a.out, "a").close()
        except OSError as e:
            raise UsageError(f"--out {a.out}: {e.strerror}") from None
    trace_dir = a.trace_dir
    if a.plot_dir and not trace_dir:
        trace_dir = a.plot_dir
    for d in (trace_dir, a.plot_dir):
        if d:
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as e:
                raise UsageError(f"{d}: {e.strerror}") from None
    if a.plot_dir:
        from .plot import _matplotlib
        _matplotlib()                     # fail before the runs if it is missing
    progress = compare.Progress()
    try:
        cells = compare.run_matrix(scenarios, policies, speed=a.speed, repeat=a.repeat, jobs=a.jobs,
                                   progress=progress, trace_dir=trace_dir)
    except compare.CellFailed as e:          # the other cells were stopped and torn down
        progress(0, 0, "")
        if e.usage:
            raise UsageError(str(e)) from None
        print(f"oomemu: internal error: {e} (please report this)", file=sys.stderr)
        return EXIT_FAULT
    text = compare.render(cells, a.format, a.speed, a.repeat)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    if a.plot_dir:
        for s in scenarios:
            paths = [c.traces[0] for c in cells if c.scenario.name == s.name and c.traces]
            png = os.path.join(a.plot_dir, f"{s.name}.png")
            _write_plot(paths, png)
            print(f"oomemu compare: {png}: {s.name}, one panel per policy", file=sys.stderr)
    bad = compare.mismatches(cells)
    if a.check and bad:
        errs = sum(1 for c in bad if c.errors())
        print(f"oomemu compare: {len(bad)} cell(s) differ from the stated outcome"
              + (f" ({errs} with a run that ended in error)" if errs else ""), file=sys.stderr)
        return EXIT_CHECK
    return EXIT_OK


def cmd_sweep(a) -> int:
    from . import compare, family, sweep
    scenarios = []
    for arg in a.scenarios:                   # a family file stands for its members
        scenarios += family.load_family(arg) if family.is_family(arg) else compare.load_all([arg])
    if a.policies is not None and not all(p.strip() for p in a.policies.split(",")):
        raise UsageError(f"--policies {a.policies!r}: comma-separated names, none empty")
    if a.dask is not None and not a.dask.strip():
        raise UsageError("--dask '': a scheduler's address (tcp://HOST:8786) or 'local'")
    policies = compare.resolve_policies([p.strip() for p in a.policies.split(",")] if a.policies else None)
    if "host" in policies:
        raise UsageError("sweep: the host policy has no constants to sweep (use kernel-check)")
    points = sweep.grid(scenarios, policies, sweep.parse_sets(a.set), a.repeat)
    if a.dask and a.dask != "local" and a.jobs:
        raise UsageError("--jobs: with --dask ADDRESS, the cluster's workers and their threads decide "
                         "how many points run at once")
    if a.plot:
        from .plot import _matplotlib
        _matplotlib()                     # fail before the runs if it is missing
    for arg in a.scenarios:               # the runs appended to a scenario or family file would spoil it
        if os.path.isfile(arg) and os.path.exists(a.out) and os.path.samefile(arg, a.out):
            raise UsageError(f"--out {a.out}: a scenario file of this sweep: the runs would be appended to it")
    for opt, path in (("--out", a.out), ("--csv", a.csv), ("--plot", a.plot)):
        if path:
            there = os.path.exists(path)
            try:
                open(path, "a").close()
            except OSError as e:
                raise UsageError(f"{opt} {path}: {e.strerror}") from None
            if opt == "--plot" and not there:
                os.unlink(path)           # only asked whether it can be written (after the runs)
    for opt, path in (("--csv", a.csv), ("--plot", a.plot)):
        if path and os.path.exists(path) and os.path.samefile(path, a.out):
            raise UsageError(f"{opt} {path}: the results file (--out): it would be written over")
    progress = compare.Progress()
    jobs = a.jobs or compare.default_jobs()
    where = (f"on a local Dask cluster of {jobs} workers" if a.dask == "local" else
             f"on the Dask cluster at {a.dask}" if a.dask else f"{jobs} at once")

    def on_start(to_run: int, total: int) -> None:
        _say(f"oomemu sweep: {to_run} of {total} run(s) to do, {total - to_run} in {a.out} already, {where}")
    try:
        ran = sweep.run_sweep(scenarios, points, a.out, a.speed, jobs, progress, dask=a.dask, on_start=on_start)
    except (KeyboardInterrupt, SystemExit):
        progress(0, 0, "")
        _say(f"oomemu sweep: stopped; {len(sweep.done_keys(a.out))} run(s) in {a.out}: "
             "the same command resumes")
        raise
    except compare.CellFailed as e:
        progress(0, 0, "")
        if e.usage:
            raise UsageError(str(e)) from None
        print(f"oomemu: internal error: {e} (please report this)", file=sys.stderr)
        return EXIT_FAULT
    progress(0, 0, "")
    print(f"oomemu sweep: {ran} run(s) now, {len(points) - ran} of {len(points)} in {a.out} already",
          file=sys.stderr)
    records = sweep.read_records(a.out)
    summaries = sweep.summarize(records)
    print(sweep.render(summaries))
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            f.write(sweep.to_csv(records))
        print(f"oomemu sweep: {a.csv}: {len(records)} run(s) as CSV", file=sys.stderr)
    if a.plot:
        undrawn = sweep.plot(summaries, a.plot)
        print(f"oomemu sweep: {a.plot}: extra kills against time to resolve"
              + (f" ({len(undrawn)} row(s) with no resolved run: named in the picture, not drawn)" if undrawn else ""),
              file=sys.stderr)
    return EXIT_OK


def cmd_sweep_diff(a) -> int:
    from . import sweep
    recs = []
    for path in (a.a, a.b):
        try:
            recs.append(sweep.read_records(path))
        except OSError as e:
            raise UsageError(f"{path}: {e.strerror}") from None
        if not recs[-1]:
            raise UsageError(f"{path}: no runs in it (a sweep's --out file, JSON lines)")
    g = sweep.agreement(*recs)
    print(sweep.render_agreement(g, a.a, a.b))
    return EXIT_OK if g.ok else EXIT_CHECK


def cmd_scenarios(a) -> int:
    from ..scenario import builtin_names, load_scenario
    for name in builtin_names():
        s = load_scenario(name)
        first = s.description.strip().splitlines()[0] if s.description.strip() else ""
        print(f"{name:16} {first}")
    return EXIT_OK


def cmd_policies(a) -> int:
    from ..policies import POLICIES
    for name, cls in POLICIES.items():
        consts = ", ".join(f"{k}={v:g}" for k, v in cls.DEFAULTS.items())
        print(f"{name:10} {cls.summary} [{consts}]")
    print(f"{'host':10} this machine's own kernel, in a memory cgroup (root; see docs/host.md)")
    from ..policies import DAEMONS
    if DAEMONS:
        print("\nuser-space OOM daemons, on top of a kernel policy: KERNEL+DAEMON (e.g. v6.6+earlyoom; "
              "see docs/daemons.md)")
    for name, cls in DAEMONS.items():
        consts = ", ".join(f"{k}={v:g}" for k, v in cls.DEFAULTS.items())
        print(f"  +{name:13} {cls.summary} [{consts}]")
    return EXIT_OK


def cmd_kernel_check(a) -> int:
    from . import compare
    from ..host.run import check_host
    from .kernel_check import kernel_check
    check_host()
    agree = kernel_check(compare.load_all(a.scenarios), a.repeat, say=_echo)
    if a.check and not agree:
        print("oomemu kernel-check: v6.6 disagrees with this kernel (see the table)", file=sys.stderr)
        return 3
    return EXIT_OK


def cmd_cleanup(a) -> int:
    from ..runtime.cleanup import cleanup
    done = cleanup()
    if os.geteuid() == 0:                 # host runs (root only): their files, FUSE mounts, memcgs
        from ..host.run import cleanup_leftovers
        done += cleanup_leftovers()
    for line in done:
        print(f"oomemu cleanup: {line}")
    if not any(not line.startswith("left alone") for line in done):
        print("oomemu cleanup: nothing " + ("of yours " if done else "") + "left behind")
    return EXIT_OK


def _say(line: str) -> None:
    """A last line on stderr, which may be a terminal that has hung up."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="oomemu", description="Emulate the Linux OOM killer and OOM reaper with real processes.")
    from .. import __version__
    p.add_argument("--version", action="version", version=f"oomemu {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run a scenario under a reaper policy")
    r.add_argument("scenario", help="a built-in name (see 'oomemu scenarios') or a TOML file")
    r.add_argument("--policy", default="v4.17", help="reaper policy (see 'oomemu policies'); default v4.17")
    r.add_argument("--speed", type=_run_speed, default=1.0, help="run N times faster than real time")
    r.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a policy constant")
    r.add_argument("--json", metavar="FILE", help="write the result as JSON ('-': to stdout, alone; "
                   "the log then goes to stderr)")
    r.add_argument("--quiet", action="store_true", help="print only the summary line")
    r.add_argument("--trace", metavar="FILE", help="write trace events as JSON lines")
    r.add_argument("--hold", action="store_true",
                   help="keep the tasks alive after their steps until Ctrl-C or 'oomemu stop RUN'")
    r.add_argument("--door", nargs="?", const="", default=None, metavar="DIR",
                   help="write the run's /proc as files for a user-space daemon (docs/door.md) into DIR "
                        "(a new directory; default: one under $OOMEMU_DOOR_DIR, /run/oomemu or "
                        "$XDG_RUNTIME_DIR/oomemu); a held run has one unless --no-door")
    r.add_argument("--no-door", action="store_true", help="no door for a held run")
    r.set_defaults(func=cmd_run)
    d = sub.add_parser("demo", help="mlocked under v4.17 and timeout, side by side")
    d.add_argument("--speed", type=_run_speed, default=1.0)
    d.add_argument("--out", metavar="DIR", help="write traces, Perfetto timelines and a picture here")
    d.set_defaults(func=cmd_demo)
    t = sub.add_parser("trace", help="a text timeline of trace files, or a Perfetto timeline or a picture")
    t.add_argument("files", nargs="+", metavar="FILE", help="trace files from 'run --trace' (several: stacked)")
    t.add_argument("--perfetto", metavar="OUT.json", help="Chrome trace-event JSON (ui.perfetto.dev)")
    t.add_argument("--plot", metavar="OUT.png", help="a picture (needs matplotlib: oomemu[plot])")
    t.set_defaults(func=cmd_trace)
    sub.add_parser("runs", help="the live runs on this machine").set_defaults(func=cmd_runs)
    ps = sub.add_parser("ps", help="the tasks of a live run, read from shared memory")
    ps.add_argument("run")
    ps.add_argument("--all", action="store_true",
                    help="a row for every task (past 40 tasks, ps shows the ones in a state worth a row and "
                         "the next in line by badness, and names the others in one line)")
    ps.add_argument("--watch", action="store_true", help="refresh until Ctrl-C or the run ends")
    ps.add_argument("--interval", type=_bounded(0.1, 3600, "--interval"), default=0.5,
                    help="seconds between refreshes (0.1 to 3600; default 0.5)")
    ps.set_defaults(func=cmd_ps)
    st = sub.add_parser("stop", help="end a held run (as Ctrl-C in its terminal would)")
    st.add_argument("run")
    st.set_defaults(func=cmd_stop)
    inj = sub.add_parser("inject", help="inject a fault into a live run")
    inj.add_argument("run")
    acts = inj.add_subparsers(dest="action", required=True, parser_class=_Parser)
    for name, what, helptext in (("hold-mmap-sem", "TASK", "take TASK's mmap_sem and hold it"),
                                 ("hold-lock", "NAME", "take a named lock of the run and hold it")):
        x = acts.add_parser(name, help=helptext)
        x.add_argument("target", metavar=what)
        x.add_argument("--seconds", type=_bounded(0.001, 1e6, "--seconds"), default=None,
                       help="hold for S seconds of the run's time (default: until Ctrl-C)")
        if name == "hold-mmap-sem":
            how = x.add_mutually_exclusive_group()
            how.add_argument("--read", dest="mode", action="store_const", const="read",
                             help="down_read: other readers and the reaper's trylock still get in")
            how.add_argument("--write", dest="mode", action="store_const", const="write",
                             help="down_write (the default): nobody else gets in")
    x = acts.add_parser("alloc", help="make TASK allocate MB now (when it is idle)")
    x.add_argument("target", metavar="TASK")
    x.add_argument("mb", type=_bounded(0, 1e9, "MB"), metavar="MB",
                   help="at least a page (0.004); at most what TASK can still grow by")
    for name, helptext in (("stop", "SIGSTOP the task's process"), ("cont", "SIGCONT it"),
                           ("crash", "a real SIGKILL: what it holds stays held")):
        acts.add_parser(name, help=helptext).add_argument("target", metavar="TASK")
    inj.set_defaults(func=cmd_inject)
    kl = sub.add_parser("kill", help="kill(2) a task of a live run, as a user-space OOM killer does")
    kl.add_argument("run")
    kl.add_argument("task", metavar="TASK", help="its name or pid")
    kl.add_argument("--signal", choices=("SIGKILL", "SIGTERM"), default="SIGKILL")
    kl.set_defaults(func=cmd_kill)
    mr = sub.add_parser("mrelease", help="process_mrelease(2) a dying task of a live run, in this process")
    mr.add_argument("run")
    mr.add_argument("task", metavar="TASK", help="its name or pid")
    mr.set_defaults(func=cmd_mrelease)
    c = sub.add_parser("compare", help="every scenario under every policy, one table")
    c.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="built-in names or files (default: all built-in)")
    c.add_argument("--policies", help="comma-separated (default: all)")
    c.add_argument("--speed", type=_run_speed, default=10.0, help="run N times faster (default 10)")
    c.add_argument("--repeat", type=_positive_int, default=1, help="runs per cell (default 1)")
    c.add_argument("--jobs", type=_positive_int, default=None, help="cells at once (default: one per core)")
    c.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    c.add_argument("--out", metavar="FILE", help="write the table here instead of stdout")
    c.add_argument("--trace-dir", metavar="DIR", help="write each run's trace events here")
    c.add_argument("--plot-dir", metavar="DIR",
                   help="write a picture per scenario here, its policies one above the other")
    c.add_argument("--check", action="store_true",
                   help="exit 3 if a measured outcome differs from the one the scenario file states")
    c.set_defaults(func=cmd_compare)
    w = sub.add_parser("sweep", help="a grid of scenarios x policies x constants, results appended to a file")
    w.add_argument("scenarios", nargs="+", metavar="SCENARIO",
                   help="built-in names, scenario files, or family files (a [family] table: docs/sweep.md)")
    w.add_argument("--policies", help="comma-separated (default: all kernel policies)")
    w.add_argument("--set", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="a constant's values (repeatable); each applies to the policies that have it")
    w.add_argument("--speed", type=_run_speed, default=10.0, help="run N times faster (default 10)")
    w.add_argument("--repeat", type=_positive_int, default=1, help="runs per point (default 1)")
    w.add_argument("--jobs", type=_positive_int, default=None, help="runs at once (default: one per core)")
    w.add_argument("--out", metavar="FILE", required=True,
                   help="JSON lines, one per run, appended as each ends; a sweep run again resumes")
    w.add_argument("--csv", metavar="FILE", help="also write every run in --out as CSV (a column per field "
                   "and per constant; the victims and the log stay in the JSON)")
    w.add_argument("--plot", metavar="PNG", help="draw the trade-off (extra kills against time to resolve)")
    w.add_argument("--dask", metavar="ADDRESS", help="run the points on a Dask distributed cluster "
                   "(tcp://HOST:8786; 'local': --jobs worker processes here); needs oomemu[cluster]")
    w.set_defaults(func=cmd_sweep)
    d = sub.add_parser("sweep-diff", help="two sweeps' results files of one grid: exit 3 if a point whose "
                       "repeats agree in each gives another verdict or kills, or a point is in one only")
    d.add_argument("a", metavar="A.jsonl")
    d.add_argument("b", metavar="B.jsonl")
    d.set_defaults(func=cmd_sweep_diff)
    k = sub.add_parser("kernel-check", help="each scenario on this kernel (root) beside every policy")
    k.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="built-in names or files (default: all built-in)")
    k.add_argument("--repeat", type=_positive_int, default=1, help="runs per cell (default 1)")
    k.add_argument("--check", action="store_true",
                   help="exit 3 if v6.6 (the policy of the running kernel) disagrees with the host")
    k.set_defaults(func=cmd_kernel_check)
    sub.add_parser("scenarios", help="list the built-in scenarios").set_defaults(func=cmd_scenarios)
    sub.add_parser("policies", help="list the reaper policies").set_defaults(func=cmd_policies)
    sub.add_parser("cleanup", help="remove leftovers of runs whose supervisor is gone").set_defaults(
        func=cmd_cleanup)
    return p


def _terminate(signum, frame):
    from ..runtime.signals import exiting
    if exiting():
        return                                     # already on the way out with the first signal
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)                 # outside a run: nothing to tear down but ours


def main(argv=None) -> int:
    # Outside a run, a terminating signal exits with 128+N through Python's own
    # unwinding; during a run, the run defers it until it has torn down (emulator.runtime.signals).
    from ..runtime.signals import TERMINATING, name
    for sig in TERMINATING:
        if sig != signal.SIGINT or signal.getsignal(sig) is signal.default_int_handler:
            try:
                signal.signal(sig, _terminate)
            except (OSError, ValueError):
                pass
    try:
        a = build_parser().parse_args(argv)
        return a.func(a)
    except UsageError as e:
        print(f"oomemu: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("oomemu: interrupted (SIGINT)")
        return 130
    except SystemExit as e:
        if isinstance(e.code, int) and e.code > 128:
            _say(f"oomemu: interrupted ({name(e.code - 128)})")
        raise
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:                          # a fault of ours: say so, with context
        import traceback
        traceback.print_exc()
        print(f"oomemu: internal error: {e!r} (please report this)", file=sys.stderr)
        return EXIT_FAULT
