"""The ``oomemu`` command line. Exit codes: 0 the command did its job (whatever
a run's verdict), 1 a fault of ours, 2 a mistake in the input."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from .errors import UsageError
from .result import RunResult

EXIT_OK, EXIT_FAULT, EXIT_USAGE, EXIT_CHECK = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message):                      # one line, exit 2
        raise UsageError(message)


def _speed(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
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
    from .scenario import load_scenario
    from .supervisor import Run
    scenario = load_scenario(a.scenario)
    run = Run(scenario, a.policy, a.speed, _overrides(a.set), echo=None if a.quiet else _echo)
    if a.json:
        try:
            open(a.json, "a").close()
        except OSError as e:
            raise UsageError(f"--json {a.json}: {e.strerror}") from None
    if not a.quiet:
        print(f"oomemu: run {run.run_id}: {scenario.name} under {run.policy.name}, "
              f"speed {a.speed:g}, {len(scenario.tasks)} tasks, {scenario.memory_mb:g} MB", flush=True)
    result = run.run()
    print(result.summary(), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            f.write(result.to_json() + "\n")
    return EXIT_OK


def summary_table(results: list[RunResult]) -> str:
    head = ("policy", "verdict", "kills", "fewest", "extra", "time to resolve")
    rows = [head] + [(r.policy, r.verdict, str(r.kills), str(r.min_kills), str(r.extra_kills),
                      "-" if r.time_to_resolve_s is None else f"{r.time_to_resolve_s:.3f}s")
                     for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def cmd_demo(a) -> int:
    from .scenario import load_scenario
    from .supervisor import run_scenario
    scenario = load_scenario("mlocked")
    print(f"oomemu demo: {scenario.name}: {scenario.description.strip()}\n", flush=True)
    results = []
    for policy in ("v4.17", "timeout"):
        print(f"--- {scenario.name} under {policy} (speed {a.speed:g}) ---", flush=True)
        r = run_scenario(scenario, policy=policy, speed=a.speed, echo=_echo)
        print(r.summary() + "\n", flush=True)
        results.append(r)
    print(f"{scenario.name}, side by side:")
    print(summary_table(results))
    return EXIT_OK


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
    cells = compare.run_matrix(scenarios, policies, speed=a.speed, repeat=a.repeat, jobs=a.jobs,
                               progress=compare.Progress())
    header = f"oomemu compare --speed {a.speed:g} --repeat {a.repeat}: verdict kills/fewest [+extra] time to resolve"
    fmt = compare.FORMATS[a.format]
    text = fmt(cells, header) if a.format in ("table", "markdown") else fmt(cells)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    bad = compare.mismatches(cells)
    if a.check and bad:
        print(f"oomemu compare: {len(bad)} cell(s) differ from the stated outcome", file=sys.stderr)
        return EXIT_CHECK
    return EXIT_OK


def cmd_scenarios(a) -> int:
    from .scenario import builtin_names, load_scenario
    for name in builtin_names():
        s = load_scenario(name)
        first = s.description.strip().splitlines()[0] if s.description.strip() else ""
        print(f"{name:16} {first}")
    return EXIT_OK


def cmd_policies(a) -> int:
    from .policies import POLICIES
    for name, cls in POLICIES.items():
        consts = ", ".join(f"{k}={v:g}" for k, v in cls.DEFAULTS.items())
        print(f"{name:10} {cls.summary} [{consts}]")
    return EXIT_OK


def cmd_cleanup(a) -> int:
    from .cleanup import cleanup
    done = cleanup()
    for line in done:
        print(f"oomemu cleanup: {line}")
    if not done:
        print("oomemu cleanup: nothing left behind")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="oomemu", description="Emulate the Linux OOM killer and OOM reaper with real processes.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run a scenario under a reaper policy")
    r.add_argument("scenario", help="a built-in name (see 'oomemu scenarios') or a TOML file")
    r.add_argument("--policy", default="v4.17", help="reaper policy (see 'oomemu policies'); default v4.17")
    r.add_argument("--speed", type=_speed, default=1.0, help="run N times faster than real time")
    r.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a policy constant")
    r.add_argument("--json", metavar="FILE", help="write the result as JSON")
    r.add_argument("--quiet", action="store_true", help="print only the summary line")
    r.set_defaults(func=cmd_run)
    d = sub.add_parser("demo", help="mlocked under v4.17 and timeout, side by side")
    d.add_argument("--speed", type=_speed, default=1.0)
    d.set_defaults(func=cmd_demo)
    c = sub.add_parser("compare", help="every scenario under every policy, one table")
    c.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="built-in names or files (default: all built-in)")
    c.add_argument("--policies", help="comma-separated (default: all)")
    c.add_argument("--speed", type=_speed, default=10.0, help="run N times faster (default 10)")
    c.add_argument("--repeat", type=_positive_int, default=1, help="runs per cell (default 1)")
    c.add_argument("--jobs", type=_positive_int, default=None, help="cells at once (default: one per core)")
    c.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    c.add_argument("--out", metavar="FILE", help="write the table here instead of stdout")
    c.add_argument("--check", action="store_true",
                   help="exit 3 if a measured outcome differs from the one the scenario file states")
    c.set_defaults(func=cmd_compare)
    sub.add_parser("scenarios", help="list the built-in scenarios").set_defaults(func=cmd_scenarios)
    sub.add_parser("policies", help="list the reaper policies").set_defaults(func=cmd_policies)
    sub.add_parser("cleanup", help="remove leftovers of runs whose supervisor is gone").set_defaults(
        func=cmd_cleanup)
    return p


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)                 # so that the run's finally: tears down


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        a = build_parser().parse_args(argv)
        return a.func(a)
    except UsageError as e:
        print(f"oomemu: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("oomemu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except SystemExit:
        raise
    except Exception as e:                          # a fault of ours: say so, with context
        import traceback
        traceback.print_exc()
        print(f"oomemu: internal error: {e!r} (please report this)", file=sys.stderr)
        return EXIT_FAULT
