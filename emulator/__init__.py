"""oomemu: the Linux OOM killer and OOM reaper, emulated with real processes.

The map, from pure decision logic to process plumbing to what users see::

    scenario.py     TOML scenario files -> Scenario (validated, tasks expanded)
    oom_kill.py     oom_badness, select_bad_process              (pure)
    policies/       reaper policies, a module each: v4.17, timeout, handover, v6.6
                    (pure: the reaper asks them what to do at time ``now``)
    clock.py        emulated seconds on a scaled monotonic clock; FakeClock for tests

    mm.py           an mm = a POSIX shared-memory segment: header, VMA table, pages
    zone.py         the zone and memcgs: shared page counts under one semaphore
    names.py        what a run's segments, semaphores and FIFO are called in /dev/shm
    reaper.py       the oom_reaper thread: drives a policy against real mms
    supervisor.py   spawns the workers (../workers/task.py), plays the OOM killer,
                    reaches the verdict, tears everything down
    klog.py         printk with dmesg timestamps;  result.py  RunResult, VictimRecord
    trace.py        trace events (JSON lines)
    cleanup.py      removes leftovers of runs whose supervisor died
    signals.py      terminating signals deferred to a run's safe points
    shm_trust.py    opening what lies in /dev/shm, trusting it only as far as checked
    proc_trust.py   proving a process is the run's before signalling it (pidfds)

    cli.py          the ``oomemu`` command;  live.py  runs / ps / stop / inject
    columns.py      plain-text tables as the commands print them
    compare.py      every scenario under every policy, one table;  claims.py  make claims
    timeline.py     trace events -> states per task;  perfetto.py, plot.py  render them

For your own tests::

    import emulator
    r = emulator.run_scenario(emulator.load_scenario("mlocked"), policy="timeout", speed=10)
    assert r.verdict == "resolved" and r.extra_kills == 0
"""

# The names below are imported on first use (PEP 562), so that a worker, which
# needs only mm/zone/names, starts without loading the supervisor and friends.
_LAZY = {
    "load_scenario": "scenario", "Scenario": "scenario",
    "run_scenario": "supervisor",
    "RunResult": "result", "VictimRecord": "result",
    "ScenarioError": "errors", "UsageError": "errors",
}

__all__ = list(_LAZY)


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("oomemu")
    except metadata.PackageNotFoundError:          # a checkout not installed: read pyproject.toml
        import os
        import tomllib
        try:
            with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "pyproject.toml"), "rb") as f:
                return tomllib.load(f)["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def __getattr__(name):
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
