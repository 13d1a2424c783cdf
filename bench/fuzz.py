"""Fuzz the scenario loader, then run what it accepts: ``python -m bench.fuzz --n 2000``
(``make fuzz``).

The mutants and the checks are the test suite's (``tests/fuzz_scenarios.py``),
which runs a few hundred of them; this runs as many as asked and exits non-zero
if anything failed. The runs use a /dev/shm prefix of their own, and a run
that outlives the bound is killed with its process group and reported as a
hang.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from hypothesis import HealthCheck, Phase, given, seed, settings

from emulator.scenario import Scenario
from tests.fuzz_scenarios import REPO_ROOT, check_load, mutants, run_cli, runnable


def _leftovers(prefix: str) -> list[str]:
    return sorted(e for e in os.listdir("/dev/shm") if e.startswith((f"{prefix}.", f"sem.{prefix}.")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="mutated files to make (default 2000)")
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="runs at once")
    ap.add_argument("--timeout", type=float, default=120.0, help="wall-clock seconds before a run is a hang")
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "out", "fuzz"),
                    help="where the mutants and the failures are kept")
    ap.add_argument("--no-run", action="store_true", help="only load, do not run")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    prefix = f"oomemu_fuzz{os.getpid()}"
    env = dict(os.environ, OOMEMU_PREFIX=prefix)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    the_seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "little")
    print(f"fuzz_scenarios: {a.n} mutants, seed {the_seed}, files in {a.out}", flush=True)

    failures: list[tuple[str, str]] = []
    to_run: list[tuple[str, Scenario]] = []
    stats = Counter()
    seen: set[bytes] = set()

    @seed(the_seed)                 # hypothesis repeats itself: ask for more, keep n distinct
    @settings(max_examples=2 * a.n + 100, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(mutants())
    def one(m):
        origin, raw = m
        if stats["made"] >= a.n or raw in seen:
            return
        stats["made"] += 1
        seen.add(raw)
        path = os.path.join(a.out, f"m{stats['made']:05d}-{origin}.toml")
        with open(path, "wb") as f:
            f.write(raw)
        s, problem = check_load(path)
        if problem:
            failures.append((path, "load: " + problem))
        elif s is None:
            stats["refused"] += 1
            os.unlink(path)
        else:
            stats["loaded"] += 1
            if a.no_run or not runnable(s):
                stats["loaded, not run" + ("" if a.no_run else " (too big for this machine)")] += 1
                os.unlink(path)
            else:
                to_run.append((path, s))

    one()
    print(f"fuzz_scenarios: made {stats['made']} distinct files, "
          f"refused {stats['refused']}, loaded {stats['loaded']}, load failures {len(failures)}", flush=True)

    outcomes = Counter()
    if to_run:
        def job(item):
            path, s = item
            return path, *run_cli(path, s, a.timeout, env)

        with ThreadPoolExecutor(max(1, a.jobs)) as pool:
            for n, (path, problem, code, last) in enumerate(pool.map(job, to_run), 1):
                if problem:
                    failures.append((path, "run: " + problem))
                    outcomes["failed"] += 1
                else:
                    m = re.search(r": (resolved|panic|hung)", last)
                    outcomes[m.group(1) if m else f"exit {code}"] += 1
                    os.unlink(path)
                if n % 100 == 0:
                    print(f"fuzz_scenarios: ran {n}/{len(to_run)}", flush=True)
        subprocess.run([sys.executable, "-m", "emulator", "cleanup"], env=env, cwd=REPO_ROOT,
                       capture_output=True, timeout=120)
        left = _leftovers(prefix)
        if left:
            failures.append(("/dev/shm", f"left behind after cleanup: {left[:10]}"))
    print(f"fuzz_scenarios: ran {len(to_run)}: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())),
          flush=True)
    for k in sorted(stats):
        if k.startswith("loaded, not run"):
            print(f"fuzz_scenarios: {k}: {stats[k]}")
    for path, problem in failures:
        print(f"FAIL {path}: {problem}")
    print(f"fuzz_scenarios: {len(failures)} failure(s); seed {the_seed}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
