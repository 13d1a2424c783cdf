"""What a run produced: the verdict, the kills, a record per victim, the log."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .kernel.verdict import Verdict


@dataclass
class VictimRecord:
    name: str
    pid: int
    killed_at_s: float
    reaped_kb: int = 0
    exit_freed_kb: int = 0
    oom_skip_at_s: float | None = None
    oom_skip_by: str | None = None          # "oom_reaper" or "exit_mmap"
    exited_at_s: float | None = None
    unable_to_reap: bool = False
    memcg: str = "/"                        # the victim's memcg, as a cgroup path
    oom_memcg: str | None = None            # the memcg whose limit was hit (None: a global OOM)
    oom_group: str | None = None            # killed with the memcg it names (memory.oom.group)
    killed_by: str = "oom_killer"           # or the user-space killer that sent the signal: "earlyoom[PID]"
    signal: str = "SIGKILL"                 # what it was sent ("SIGTERM": a user-space killer's first step)
    mreleased_kb: int = 0                   # freed by process_mrelease() calls, in their callers' context
    oom_victim: bool = True                 # marked an OOM victim (MMF_OOM_VICTIM), by its kill or later


@dataclass
class RunResult:
    scenario: str
    policy: str
    speed: float
    verdict: Verdict              # a StrEnum: compares, prints and serialises as "resolved", ...
    kills: int
    min_kills: int
    time_to_resolve_s: float | None
    victims: list[VictimRecord] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    run_id: str = ""
    first_oom_at_s: float | None = None
    resolved_at_s: float | None = None
    accounting: dict | None = None           # charged/rss/segment pages at the end (all equal)
    # Verdict.ERROR: the run itself broke (a worker died unexplained, the machine ran short,
    # or the accounting disagreed): ``error`` says why, in one line, ``error_kind`` whose
    # fault: "environment" (exit 2) or "fault" (ours, exit 1).
    error: str | None = None
    error_kind: str | None = None
    stops: int = 0                           # times the run was stopped by Ctrl-Z
    stopped_s: float = 0.0                   # real seconds it was stopped, in all (its clock stood still)
    # How far the run fell behind its emulated clock: the worst lateness of anything due at
    # an emulated time that the clock did not wait for (see emulator.runtime.clock: a
    # sleeper late past the clock's hold limit, or stopped from outside, and what it then
    # does late), in real ms; ``lagged`` if past ``lag_tolerance_ms`` (the larger of 5 ms
    # emulated and 2 ms real): its timings, and so perhaps its outcome, may not be those
    # of the speed asked for.
    lag_ms: float = 0.0
    lagged: bool = False
    lag_tolerance_ms: float = 0.0
    # Real ms the run clock stood still for tasks at work (faulting, zapping: real work takes
    # no emulated time) or woken late, in all and the longest: what real work and a busy
    # machine cost in real time instead of in truth.
    held_ms: float = 0.0
    held_max_ms: float = 0.0
    # Real seconds from the start of the run (Run.execute) until every task's process had
    # faulted its memory in and was ready (time 0), and until the verdict (the end of the
    # run's loop; the teardown follows): what starting and running the tasks cost. None:
    # the run did not get that far.
    ready_real_s: float | None = None
    verdict_real_s: float | None = None
    oomemu_version: str = ""
    scenario_sha256: str | None = None       # of the scenario file, None if built in memory
    # Host runs (--policy host): what was approximated (a line each), and why the run is not
    # comparable with a policy's (a task meant to be spared was killed), None if it is.
    notes: list[str] = field(default_factory=list)
    diverged: str | None = None

    @property
    def extra_kills(self) -> int:
        return max(0, self.kills - self.min_kills)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["extra_kills"] = self.extra_kills
        order = ["scenario", "policy", "speed", "verdict", "kills", "min_kills", "extra_kills",
                 "time_to_resolve_s", "victims", "log"]
        return {k: d[k] for k in order} | {k: v for k, v in d.items() if k not in order}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @property
    def exit_code(self) -> int:
        """What ``oomemu run`` exits with: 0 for a verdict, 2 if the machine broke the
        run, 1 if oomemu did."""
        if self.verdict != Verdict.ERROR:
            return 0
        return 2 if self.error_kind == "environment" else 1

    def summary(self) -> str:
        if self.verdict == Verdict.ERROR:
            return (f"oomemu: {self.scenario} under {self.policy}: error, kills {self.kills} "
                    f"before it broke: {self.error}")
        ttr = "-" if self.time_to_resolve_s is None else f"{self.time_to_resolve_s:.3f}s"
        extra = f", {self.extra_kills} extra" if self.extra_kills else ""
        stopped = (f" (stopped {self.stopped_s:.1f}s by Ctrl-Z: its clock stood still)" if self.stops else "")
        lagged = (f"; LAGGED {self.lag_ms:.1f} ms behind its clock (tolerance {self.lag_tolerance_ms:g} ms): "
                  f"try a lower --speed" if self.lagged else "")
        diverged = f"; DIVERGED: {self.diverged}" if self.diverged else ""
        return (f"oomemu: {self.scenario} under {self.policy}: {self.verdict}, "
                f"kills {self.kills} (fewest needed {self.min_kills}{extra}), time to resolve {ttr}{stopped}"
                f"{lagged}{diverged}")
