"""oomemu: the Linux OOM killer and OOM reaper, emulated with real processes.

Three layers, each importing only the ones below it (tests/test_layers.py)::

    kernel/         the pure model: what the kernel decides. mm_types (MMF_/VM_
                    flags, VMA kinds, TaskState), oom_kill (oom_badness,
                    select_bad_process, out_of_memory's decision), clock (FakeClock),
                    verdict, policies/ (one file per reaper policy)
    userspace/      user-space OOM daemons as pure models (earlyoom, lmkd, oomd,
                    systemd-oomd): what they see (Snapshot), what they decide
    runtime/        processes and IPC: supervisor, resources, protocol, mm, rwsem, zone,
                    layout, machine, reaper, clock (RunClock), stall (PSI), view, door,
                    userspace, klog, trace, names, cleanup, signals, shm_trust, proc_trust
    tools/          what a user types and sees: cli, compare, claims, live,
                    timeline, perfetto, plot, columns, door, sweep, family,
                    point (a sweep's run as a process, here or on a Dask worker)

Shared by every layer (pure, importing only kernel/)::

    errors.py       UsageError (exit 2), ScenarioError
    scenario.py     TOML scenario files -> Scenario (validated, tasks expanded)
    result.py       RunResult, VictimRecord
    policies/       the registry: get_policy, register, POLICIES

The workers (``workers/task.py``, one process per task; ``workers/userspace.py``, a
run's daemon and door) use kernel/, userspace/ and runtime/.

For your own tests::

    import emulator
    r = emulator.run_scenario(emulator.load_scenario("mlocked"), policy="timeout", speed=10)
    assert r.verdict == "resolved" and r.extra_kills == 0
"""

# The names below are imported on first use (PEP 562), so that a worker, which
# needs only runtime's mm/zone/names, starts without loading the supervisor and friends.
_LAZY = {
    "load_scenario": "scenario", "Scenario": "scenario",
    "run_scenario": "runtime.supervisor",
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
