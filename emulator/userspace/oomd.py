"""oomd: Facebook's cgroup-aware OOM killer, with the desktop ruleset it ships.

Lineage and sources: facebookincubator/oomd, commit 88c28fdedcf7 (March
2026), read for this model:

- src/oomd/etc/desktop.json, the shipped desktop configuration: ruleset
  "user session protection" (detector group: ``pressure_above`` user.slice
  memory 60 for 30 s, and ``memory_reclaim`` within 10 s; action
  ``kill_by_memory_size_or_growth``), ruleset "protection against low swap"
  (``swap_free`` under 10 %; action ``kill_by_swap_usage``). (The
  system.slice group, 80 for 60 s, watches the same machine here and would
  fire later; it is left out.)
- Main.cpp:237 the event loop interval, 5 s (``--interval``).
- engine/Ruleset.h:29 DEFAULT_POST_ACTION_DELAY 15; engine/Ruleset.cpp:
  193-330: detectors run every tick, actions only once ``now`` is past
  ``pause_actions_until_``, set to now + 15 s when an action chain ends.
- plugins/PressureAbove.cpp: memory pressure is the ``full`` line's avg10
  (CgroupContext.cpp:109), above the threshold for ``duration`` whole
  seconds. plugins/MemoryReclaim.cpp: reclaim (pgscan grew) within
  ``duration`` s. plugins/SwapFree.cpp: free swap under threshold_pct % of
  the total.
- plugins/KillMemoryGrowth-inl.h: rank by (size >= 50 % of the siblings'
  total ? usage : 0, growth >= 1.25 among the P80 largest ? growth : 0,
  usage); growth = memory.current / its decaying average
  (CgroupContext.cpp:476, average_size_decay 4, one step a tick).
  plugins/KillSwapUsage-inl.h: the most swap, above 1 byte.
- plugins/BaseKillPlugin.cpp:530-623 ``tryToKillCgroup``: "Trying to kill",
  then up to 10 rounds of SIGKILL to every pid of the cgroup not a zombie,
  the second at once, later ones 1 s apart, until a round finds none left
  alive; then (``reap_memory``, default true) process_mrelease() on each of
  its pids. It never waits for the memory to come back.

Emulated: candidates as :mod:`emulator.userspace.cgroups` says (a task in
the root memcg counts as a cgroup of its own; the root memcg ``/`` plays
user.slice: its pressure is /proc/pressure/memory). Reclaim activity (pgscan,
which a run does not count) is taken from PSI: some stall time that grew
since the detector last looked. The second kill round, which runs
microseconds after the first, is merged with it. While a kill's rounds run
the event loop is blocked, as in oomd; the other ruleset is looked at on the
next tick. Not modelled: kill preferences (xattrs), memory.low protection,
prekill hooks, drop-in configs, the io rulesets, dump_cgroup_overview.
"""

from __future__ import annotations

import math

from ..kernel.policies.base import Limit
from .base import Daemon, Decision, Kill, Log, Results, Snapshot
from .cgroups import Cgroup, candidates

AVERAGE_SIZE_DECAY = 4.0          # OomdContext.h: average_size_decay
KILL_TRIES = 10                   # tryToKillCgroup: tries
KILL_ROUND_PAUSE_S = 1.0          # "Give it a breather before killing again"
USEC = 1e-6                       # steady_clock resolution enough to call two emulated times equal


class Oomd(Daemon):
    """Two rulesets, a tick every ``interval`` s; a kill blocks the loop for its rounds."""
    name = "oomd"
    summary = "oomd desktop.json: full avg10 > 60 for 30 s with reclaim -> kill the biggest/growing cgroup; 15 s pause"
    DEFAULTS = {
        "interval": 5.0,                  # --interval: the event loop's period, s
        "threshold": 60.0,                # pressure_above threshold (full avg10, %)
        "duration": 30,                   # pressure_above duration, whole s
        "reclaim_duration": 10,           # memory_reclaim duration, whole s
        "threshold_pct": 10,              # swap_free threshold_pct
        "size_threshold": 50,             # kill_by_memory_size_or_growth size_threshold, % of siblings
        "growing_size_percentile": 80,
        "min_growth_ratio": 1.25,
        "post_action_delay": 15,          # DEFAULT_POST_ACTION_DELAY, s
        "reap_memory": 1,                 # process_mrelease() after the kill
    }
    LIMITS = {
        "interval": Limit(1.0, 3600.0, why="seconds; oomd refuses less than 1"),
        "threshold": Limit(0.0, 100.0, why="a percentage"),
        "duration": Limit(0, 3600, integer=True, why="whole seconds"),
        "reclaim_duration": Limit(0, 3600, integer=True, why="whole seconds"),
        "threshold_pct": Limit(0, 100, integer=True, why="a percentage"),
        "size_threshold": Limit(0, 100, integer=True, why="a percentage"),
        "growing_size_percentile": Limit(0, 99, integer=True, why="0 to 99"),
        "min_growth_ratio": Limit(0.0, 1000.0, why="a ratio"),
        "post_action_delay": Limit(0, 3600, integer=True, why="whole seconds"),
        "reap_memory": Limit(0, 1, integer=True, why="1 to call process_mrelease"),
    }

    def __init__(self, overrides=None):
        super().__init__(overrides)
        self.avg: dict[str, float] = {}          # path -> decaying average usage, kB
        self.hit_thres_at: float | None = None   # PressureAbove
        self.last_stall = 0                      # MemoryReclaim: the "pgscan" it saw last (last_pgscan_ 0)
        self.last_reclaim_at = -math.inf
        self.pause_until = {"user session protection": -math.inf, "protection against low swap": -math.inf}
        self.kill: dict | None = None            # the cgroup being killed, its rounds

    def start(self, now: float) -> Decision:
        return Decision((Log("Running oomd (emulated), desktop.json rulesets, interval=%g" % self.consts["interval"]),),
                        next_at=now)

    # -- detectors ---------------------------------------------------------------

    def pressure_above(self, snap: Snapshot) -> list[Log] | None:
        c, full = self.consts, snap.pressure.full
        if full.avg10 > c["threshold"]:
            if self.hit_thres_at is None:
                self.hit_thres_at = snap.now
            if int(snap.now - self.hit_thres_at + USEC) >= c["duration"]:
                usage = sum(m.current_kb for m in snap.memcgs if m.path == "/") or (
                    snap.meminfo.MemTotal - snap.meminfo.MemAvailable)
                return [Log("10s pressure %.2f is over the threshold of %g for %d seconds , total usage is %dMB"
                            % (full.avg10, c["threshold"], c["duration"], usage // 1024))]
        else:
            self.hit_thres_at = None
        return None

    def memory_reclaim(self, snap: Snapshot) -> bool:
        stall = snap.pressure.some.total
        if stall > self.last_stall:
            self.last_reclaim_at = snap.now
        self.last_stall = stall
        return int(snap.now - self.last_reclaim_at + USEC) <= self.consts["reclaim_duration"] \
            if self.last_reclaim_at > -math.inf else False

    def swap_free(self, snap: Snapshot) -> list[Log] | None:
        m = snap.meminfo
        thres = m.SwapTotal * self.consts["threshold_pct"] // 100
        if m.SwapFree < thres:
            return [Log("SwapFree %dMB is smaller than the threshold of %dMB, total swap is %dMB"
                        % (m.SwapFree // 1024, thres // 1024, m.SwapTotal // 1024))]
        return None

    # -- rankings ------------------------------------------------------------------

    def update_averages(self, cgs: list[Cgroup]) -> None:
        """prerun: each candidate's decaying average usage, one step a tick."""
        d, avg = AVERAGE_SIZE_DECAY, {}
        for cg in cgs:
            avg[cg.path] = self.avg.get(cg.path, 0.0) * ((d - 1) / d) + cg.current_kb / d
        self.avg = avg

    def growth(self, cg: Cgroup) -> float:
        a = self.avg.get(cg.path, 0.0)
        return cg.current_kb / a if a else 0.0

    def rank_by_size_or_growth(self, cgs: list[Cgroup]) -> list[tuple[Cgroup, str]]:
        """KillMemoryGrowth's ranking, best first, each with its "Picked" phrase."""
        c = self.consts
        total = sum(cg.current_kb for cg in cgs)
        size_thres = total * c["size_threshold"] / 100
        growth_floor = 0
        if cgs and c["growing_size_percentile"] > 0:
            nth = math.ceil(len(cgs) * (100 - c["growing_size_percentile"]) / 100) - 1
            growth_floor = sorted((cg.current_kb for cg in cgs), reverse=True)[nth]
        ranked = []
        for cg in cgs:
            g = self.growth(cg)
            size_ok = cg.current_kb >= size_thres
            growth_ok = g >= c["min_growth_ratio"] and cg.current_kb >= growth_floor
            if size_ok:
                why = "based on size > %d%% of sibling total %dMB" % (c["size_threshold"], total // 1024)
            elif growth_ok:
                why = "based on growth rate %.2f (min growth rate %.2f) among P%d largest," % (
                    g, c["min_growth_ratio"], c["growing_size_percentile"])
            else:
                why = "based on effective usage of %dMB" % (cg.current_kb // 1024)
            key = (cg.current_kb if size_ok else 0, g if growth_ok else 0.0, cg.current_kb)
            ranked.append((key, cg, why))
        ranked.sort(key=lambda r: r[0], reverse=True)
        return [(cg, why) for _, cg, why in ranked]

    def rank_by_swap(self, cgs: list[Cgroup]) -> list[tuple[Cgroup, str]]:
        """KillSwapUsage's ranking: the most swap first, those above 1 byte only."""
        keep = sorted((cg for cg in cgs if cg.swap_kb * 1024 > 1), key=lambda cg: cg.swap_kb, reverse=True)
        return [(cg, "based on swap usage at %dMB" % (cg.swap_kb // 1024)) for cg in keep]

    # -- the loop ----------------------------------------------------------------------

    def poll(self, snap: Snapshot, results: Results) -> Decision:
        if self.kill is not None:
            return self.kill_round(snap, results)
        cgs = candidates(snap)
        self.update_averages(cgs)
        out: list = []
        fired = self.pressure_above(snap)
        reclaim = self.memory_reclaim(snap)            # every detector runs every tick (DetectorGroup::check)
        if fired is not None and reclaim:
            out += fired
            if snap.now + USEC >= self.pause_until["user session protection"]:
                started = self.try_to_kill(snap, "user session protection", self.rank_by_size_or_growth(cgs), out)
                if started is not None:
                    return started
        fired = self.swap_free(snap)
        if fired is not None:
            out += fired
            if snap.now + USEC >= self.pause_until["protection against low swap"]:
                started = self.try_to_kill(snap, "protection against low swap", self.rank_by_swap(cgs), out)
                if started is not None:
                    return started
        return Decision(tuple(out), snap.now + self.consts["interval"])

    def try_to_kill(self, snap: Snapshot, ruleset: str, ranked, out: list) -> Decision | None:
        """The first candidate with a live pid: "Picked", "Trying to kill", rounds 1 and 2."""
        for cg, why in ranked:
            live = [snap.task(p) for p in cg.pids]
            live = [t for t in live if t is not None and not t.gone]
            if not live:
                continue                               # nrKilled 0: try the next best
            out += [Log('Picked "%s" (%dMB) %s with kill preference NORMAL' % (cg.relative, cg.current_kb // 1024, why)),
                    Log("Trying to kill %s" % cg.path)]
            out += self.kill_pids(live, ruleset)
            self.kill = {"cg": cg, "ruleset": ruleset, "tries": KILL_TRIES - 2, "reaping": False, "at": snap.now}
            return Decision(tuple(out), snap.now + KILL_ROUND_PAUSE_S)
        return None

    @staticmethod
    def kill_pids(live, ruleset: str) -> list:
        """tryToKillPids: SIGKILL each, and its "Killed N: PID(COMM) ..." line."""
        acts: list = [Kill(t.pid, "SIGKILL", reason=f"oomd: {ruleset}") for t in live]
        acts.append(Log("Killed %d: %s" % (len(live), " ".join("%d(%s)" % (t.pid, t.comm) for t in live))))
        return acts

    def kill_round(self, snap: Snapshot, results: Results) -> Decision:
        """A later round of tryToKillCgroup, the reap, or the end of the action chain."""
        k, c = self.kill, self.consts
        assert k is not None
        cg, out = k["cg"], []
        if k["reaping"]:
            reaped = sum(1 for p in cg.pids if results.mrelease.get(p, "x") == "")
            out.append(Log("Reaped %d processes in %dms" % (reaped, round((snap.now - k["at"]) * 1000))))
            return self.kill_done(snap, out)
        live = [t for t in (snap.task(p) for p in cg.pids) if t is not None and not t.gone]
        if live and k["tries"] > 0:
            k["tries"] -= 1
            out += self.kill_pids(live, k["ruleset"])
            return Decision(tuple(out), snap.now + KILL_ROUND_PAUSE_S)
        if c["reap_memory"] and live:
            out.append(Log("Reaping processes in %s" % cg.path))
            out += [Kill(t.pid, "SIGKILL", mrelease=True, reason="oomd: reap_memory") for t in live]
            k["reaping"], k["at"] = True, snap.now
            return Decision(tuple(out), snap.now)
        if c["reap_memory"]:
            out += [Log("Reaping processes in %s" % cg.path), Log("Reaped 0 processes in 0ms")]
        return self.kill_done(snap, out)

    def kill_done(self, snap: Snapshot, out: list) -> Decision:
        """The action returned STOP: that ruleset's actions pause for post_action_delay."""
        k = self.kill
        assert k is not None
        self.pause_until[k["ruleset"]] = snap.now + self.consts["post_action_delay"]
        self.kill = None
        return Decision(tuple(out), snap.now + self.consts["interval"])
