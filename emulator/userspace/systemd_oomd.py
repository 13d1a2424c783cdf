"""systemd-oomd: systemd's cgroup killer, its swap path and its memory pressure path.

Lineage and sources: systemd/systemd src/oom/, read at commits 00a99cb427b0
(oomd-manager.c, the current handlers) and 0ae7dabab219 (oomd-util.c and
oomd-util.h, the v250-era selection and kill, whose "Killed ..." log lines
this model prints):

- oomd-manager.h: SWAP_INTERVAL_USEC 0.15 s, MEM_PRESSURE_INTERVAL_USEC 1 s,
  DEFAULT_MEM_PRESSURE_DURATION_USEC 30 s, DEFAULT_MEM_PRESSURE_LIMIT_PERCENT
  60 (of the ``full`` line's avg10), DEFAULT_SWAP_USED_LIMIT_PERCENT 90,
  THRESHOLD_SWAP_USED_PERCENT 5, RECLAIM_DURATION_USEC 30 s,
  POST_ACTION_DELAY_USEC 15 s. oomd.conf: SwapUsedLimit=,
  DefaultMemoryPressureLimit=, DefaultMemoryPressureDurationSec=.
- oomd-manager.c ``monitor_swap_contexts_handler``: every 0.15 s, when
  MemAvailable and SwapFree are both under 100 % - SwapUsedLimit of their
  totals, kill the candidate using the most swap (above 5 % of the swap
  total); no post-action delay.
- oomd-manager.c ``monitor_memory_pressure_contexts_handler``: every 1 s,
  skip during the 15 s post-action delay ("pressure counters are lagging
  ... kill storm"); a monitored cgroup whose avg10 has been above its limit
  for the duration (oomd-util.c ``oomd_pressure_above``) and that saw
  reclaim in the last 30 s has its candidate with the highest pgscan rate
  killed, ties broken by the larger memory.current
  (oomd-util.h ``compare_pgscan_rate_and_memory_usage``); candidates with
  neither are skipped; one kill, then the delay.
- oomd-util.c ``oomd_cgroup_kill``: SIGKILL to every process of the cgroup,
  recursively (cg_kill_recursive). systemd-oomd does not call
  process_mrelease and never waits for the exit.

Emulated: both paths watch the root, as Fedora's systemd-oomd-defaults does
for swap (-.slice, ManagedOOMSwap=kill); Fedora's user@.service pressure
limit is 50 % for 20 s (``--set DefaultMemoryPressureLimit=50
--set DefaultMemoryPressureDurationSec=20``). Candidates as
:mod:`emulator.userspace.cgroups` says (a task in the root memcg counts as a
cgroup of its own). pgscan, which a run does not count, is unknown: every
candidate's pgscan rate is 0, so the one with the largest memory.current
goes first, as systemd's comparison does on equal rates; the reclaim
activity check uses PSI's some stall time instead (grown since the last
look). Not modelled: ManagedOOMPreference (avoid/omit xattrs), per-unit
limits, the newer deferred kill ("Marked ... for killing"), OOMRules, the
candidate dump's memory.stat details.
"""

from __future__ import annotations

import math

from ..kernel.policies.base import Limit
from .base import Daemon, Decision, Kill, Log, Results, Snapshot
from .cgroups import Cgroup, candidates

SWAP_INTERVAL_S = 0.15
MEM_PRESSURE_INTERVAL_S = 1.0     # "Pressure counters are lagging (~2 seconds) compared to swap"
THRESHOLD_SWAP_USED_PERCENT = 5   # "Only tackle candidates with large swap usage."
RECLAIM_DURATION_S = 30.0
POST_ACTION_DELAY_S = 15.0
DUMP_ON_KILL_COUNT = 10
USEC = 1e-6                       # the daemon's clock resolution, for comparing emulated times


def format_timespan(seconds: float) -> str:
    """FORMAT_TIMESPAN(..., USEC_PER_SEC) for whole minutes and seconds ("30s", "1min 30s")."""
    s = int(round(seconds))
    mins, secs = divmod(s, 60)
    return " ".join(p for p in (f"{mins}min" if mins else "", f"{secs}s" if secs or not mins else "") if p)


def pct2(value: float) -> str:
    """A loadavg_t or permyriad as systemd prints it: "%lu.%02lu%%"."""
    return "%d.%02d%%" % (int(value), int(round(value * 100)) % 100)


class SystemdOomd(Daemon):
    """Two timers: swap (0.15 s, no delay after a kill) and memory pressure (1 s, 15 s delay)."""
    name = "systemd-oomd"
    summary = "systemd-oomd: swap >90 % -> most swap (every 0.15 s); full avg10 >60 % for 30 s -> biggest (15 s pause)"
    DEFAULTS = {
        "SwapUsedLimit": 90.0,                      # oomd.conf, %
        "DefaultMemoryPressureLimit": 60.0,         # oomd.conf, % of the full avg10
        "DefaultMemoryPressureDurationSec": 30.0,   # oomd.conf, s
    }
    LIMITS = {
        "SwapUsedLimit": Limit(0.0, 100.0, why="a percentage"),
        "DefaultMemoryPressureLimit": Limit(0.0, 100.0, why="a percentage"),
        "DefaultMemoryPressureDurationSec": Limit(0.0, 3600.0, why="seconds"),
    }

    def __init__(self, overrides=None):
        super().__init__(overrides)
        self.next_swap = 0.0
        self.next_pressure = 0.0
        self.hit_start: float | None = None          # mem_pressure_limit_hit_start of "/"
        self.last_had_mem_reclaim = -math.inf
        self.last_stall = 0
        self.delay_start: float | None = None        # mem_pressure_post_action_delay_start

    def start(self, now: float) -> Decision:
        self.next_swap = self.next_pressure = now
        c = self.consts
        return Decision((Log("systemd-oomd (emulated): SwapUsedLimit=%s DefaultMemoryPressureLimit=%s "
                             "DefaultMemoryPressureDurationSec=%s" % (
                                 pct2(c["SwapUsedLimit"]), pct2(c["DefaultMemoryPressureLimit"]),
                                 format_timespan(c["DefaultMemoryPressureDurationSec"]))),), next_at=now)

    def poll(self, snap: Snapshot, results: Results) -> Decision:
        now, out = snap.now, []
        cgs = None
        if now >= self.next_swap - USEC:
            self.next_swap = now + SWAP_INTERVAL_S
            cgs = candidates(snap) if self.swap_used_above(snap) else None
            if cgs is not None:
                out += self.kill_by_swap_usage(snap, cgs)
        if now >= self.next_pressure - USEC:
            self.next_pressure = now + MEM_PRESSURE_INTERVAL_S
            out += self.monitor_memory_pressure(snap, cgs)
        return Decision(tuple(out), min(self.next_swap, self.next_pressure))

    # -- the swap path ------------------------------------------------------------

    def swap_used_above(self, snap: Snapshot) -> bool:
        """oomd_mem_available_below and oomd_swap_free_below at 100 % - SwapUsedLimit."""
        m, permyriad = snap.meminfo, 10000 - int(round(self.consts["SwapUsedLimit"] * 100))
        return (m.MemAvailable < m.MemTotal * permyriad // 10000
                and m.SwapFree < m.SwapTotal * permyriad // 10000)

    def kill_by_swap_usage(self, snap: Snapshot, cgs: list[Cgroup]) -> list:
        m = snap.meminfo
        threshold_kb = m.SwapTotal * THRESHOLD_SWAP_USED_PERCENT // 100
        ranked = sorted(cgs, key=lambda cg: cg.swap_kb, reverse=True)
        out: list = []
        for cg in ranked:
            if cg.swap_kb <= threshold_kb:
                continue
            acts = self.cgroup_kill(snap, cg, "swap")
            if not acts:
                continue
            out += acts
            out += self.dump(ranked, "Swap Usage", lambda c: c.swap_kb)
            out.append(Log("Killed %s due to memory used (%d) / total (%d) and swap used (%d) / total (%d) being "
                           "more than %s" % (cg.path, (m.MemTotal - m.MemAvailable) * 1024, m.MemTotal * 1024,
                                             (m.SwapTotal - m.SwapFree) * 1024, m.SwapTotal * 1024,
                                             pct2(self.consts["SwapUsedLimit"]))))
            break
        return out

    # -- the memory pressure path --------------------------------------------------

    def monitor_memory_pressure(self, snap: Snapshot, cgs: list[Cgroup] | None) -> list:
        c, now = self.consts, snap.now
        stall = snap.pressure.some.total
        if stall > self.last_stall:
            self.last_had_mem_reclaim = now
        self.last_stall = stall
        in_delay = False
        if self.delay_start is not None:
            if self.delay_start + POST_ACTION_DELAY_S > now + USEC:     # usec_t: equal times are equal
                in_delay = True
            else:
                self.delay_start = None
        avg10, limit = snap.pressure.full.avg10, c["DefaultMemoryPressureLimit"]
        above = False
        if avg10 > limit:                                  # oomd_pressure_above
            if self.hit_start is None:
                self.hit_start = now
            above = now - self.hit_start >= c["DefaultMemoryPressureDurationSec"] - USEC
        else:
            self.hit_start = None
        if not above or in_delay or now - self.last_had_mem_reclaim > RECLAIM_DURATION_S:
            return []
        cgs = candidates(snap) if cgs is None else cgs
        ranked = sorted(cgs, key=lambda cg: cg.current_kb, reverse=True)   # pgscan rates all 0
        for cg in ranked:
            if cg.current_kb == 0:
                continue                                   # "no reclaim and memory usage"
            acts = self.cgroup_kill(snap, cg, "memory pressure")
            if not acts:
                continue
            self.delay_start = now
            return acts + self.dump(ranked, "Memory Usage", lambda x: x.current_kb) + [
                Log("Killed %s due to memory pressure for / being %s > %s for > %s with reclaim activity" % (
                    cg.path, pct2(avg10), pct2(limit), format_timespan(c["DefaultMemoryPressureDurationSec"])))]
        return []

    # -- both --------------------------------------------------------------------------

    @staticmethod
    def cgroup_kill(snap: Snapshot, cg: Cgroup, why: str) -> list:
        """oomd_cgroup_kill(path, recurse=true): SIGKILL every process still there; [] if none."""
        pids = [p for p in cg.pids if (t := snap.task(p)) is not None and not t.gone]
        return [Kill(p, "SIGKILL", reason=f"systemd-oomd: {why}, {cg.path}") for p in pids]

    @staticmethod
    def dump(ranked: list[Cgroup], what: str, value) -> list:
        """dump_kill_candidates, one line a candidate."""
        top = ranked[:DUMP_ON_KILL_COUNT]
        return [Log("Considered %d cgroups for killing, top candidates were:" % len(ranked))] + [
            Log("\tPath: %s %s: %dK" % (cg.path, what, value(cg))) for cg in top]
