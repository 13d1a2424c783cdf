"""The four daemon models, driven with hand-made snapshots and a fake clock.

Each test states what a user of that daemon would see: its log lines, whom
it kills with which signal, and when it looks again. A :class:`Driver` plays
the runtime: it calls ``poll`` at the times the model asks for (or earlier,
when a ``wake_on_exit`` victim dies), with a snapshot the test builds for
that time, and reports every kill and process_mrelease as done.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from emulator.errors import UsageError
from emulator.policies import DAEMONS, get_policy
from emulator.userspace.base import (SLEEPING, ZOMBIE, Decision, Kill, Log, MemcgInfo, MemInfo,
                                     MemoryPressure, Pressure, Results, Snapshot, TaskInfo)
from emulator.userspace.cgroups import candidates
from emulator.userspace.earlyoom import Earlyoom
from emulator.userspace.lmkd import Lmkd, watermarks
from emulator.userspace.oomd import Oomd
from emulator.userspace.systemd_oomd import SystemdOomd

pytestmark = pytest.mark.timeout(30)

MB = 1024


def task(pid, comm, score=500, adj=0, rss_mb=100, state=SLEEPING, swap_mb=0, memcg="/"):
    return TaskInfo(pid=pid, comm=comm, state=state, oom_score=score, oom_score_adj=adj, rss_kb=rss_mb * MB,
                    anon_kb=rss_mb * MB, swap_kb=swap_mb * MB, memcg=memcg)


def meminfo(avail_mb, anon_mb=900, total_mb=1000, free_mb=None, swap_mb=0, swap_free_mb=0):
    return MemInfo(MemTotal=total_mb * MB, MemFree=(avail_mb if free_mb is None else free_mb) * MB,
                   MemAvailable=avail_mb * MB, AnonPages=anon_mb * MB, SwapTotal=swap_mb * MB,
                   SwapFree=swap_free_mb * MB)


def pressure(some_total_us=0, full_total_us=0, full_avg10=0.0, some_avg10=0.0):
    return MemoryPressure(some=Pressure(avg10=some_avg10, total=some_total_us),
                          full=Pressure(avg10=full_avg10, total=full_total_us))


class Driver:
    """The runtime's loop over a model, in emulated time; every kill and mrelease succeeds
    unless ``fail`` names the pid's kill errno."""

    def __init__(self, daemon, world, fail=None):
        self.daemon, self.world, self.fail = daemon, world, fail or {}
        self.lines: list[tuple[float, str]] = []
        self.kills: list[tuple[float, Kill]] = []
        self.looks: list[float] = []
        self.decisions: list[tuple[float, Decision]] = []
        self.decision = daemon.start(0.0)
        self.results = self.act(self.decision, 0.0)

    def act(self, d: Decision, now: float) -> Results:
        r = Results()
        for a in d.actions:
            if isinstance(a, Log):
                self.lines.append((now, a.line))
            else:
                self.kills.append((now, a))
                r.kill[a.pid] = self.fail.get(a.pid, "")
                if a.mrelease and not r.kill[a.pid]:
                    r.mrelease[a.pid] = ""
        return r

    def run(self, until: float, died_at=None) -> None:
        """Poll until emulated time ``until``; ``died_at``: {pid: when the world shows it dead},
        a wake-up for a model waiting on that pid's exit (each once)."""
        died_at = dict(died_at or {})
        while True:
            d = self.decision
            due = d.next_at
            if d.wake_on_exit in died_at:
                due = min(due, max(died_at.pop(d.wake_on_exit), self.looks[-1] if self.looks else 0.0))
            if due > until + 1e-9:
                return
            snap = self.world(due)
            self.looks.append(due)
            self.decision = self.daemon.poll(snap, self.results)
            self.decisions.append((due, self.decision))
            assert self.decision.next_at > due or self.decision.actions, "a model must not spin"
            self.results = self.act(self.decision, due)

    def said(self, fragment: str) -> list[float]:
        return [t for t, line in self.lines if fragment in line]

    def victims(self, signal="SIGKILL") -> list[int]:
        return [k.pid for _, k in self.kills if k.signal == signal]


# -- earlyoom ------------------------------------------------------------------------

def earlyoom_world(avail_at, tasks_at=None, swap=(0, 0)):
    """Memory available (MiB of 1000, AnonPages fills the rest) as a function of time."""
    base = (task(10, "editor", score=300), task(11, "browser", score=700, rss_mb=600),
            task(12, "sshd", score=0, adj=-1000, rss_mb=900))

    def world(t):
        avail = avail_at(t)
        tasks = tasks_at(t) if tasks_at else base
        return Snapshot(t, meminfo(avail, anon_mb=1000 - avail, swap_mb=swap[0], swap_free_mb=swap[1]), pressure(),
                        tasks)
    return world


def test_earlyoom_reports_memory_each_second_and_polls_slower_with_more_headroom():
    d = Driver(Earlyoom(), earlyoom_world(lambda t: 500))
    d.run(3.0)
    assert d.kills == []
    first = [line for _, line in d.lines if line.startswith("mem avail")][0]
    assert first == "mem avail:   500 of  1000 MiB (50.00%), swap free:    0 of    0 MiB ( 0.00%)"
    assert d.said("sending SIGTERM when mem avail <= 10.00% and swap free <= 10.00%,")
    # 40 % of 1000 MiB of headroom at 6000 MiB/s: 68 ms, clamped up to 100 ms
    assert d.looks[1] - d.looks[0] == pytest.approx(0.1)
    reports = [t for t, line in d.lines if line.startswith("mem avail")]
    assert reports == [0.0, pytest.approx(1.0), pytest.approx(2.0), pytest.approx(3.0)]   # a second apart


def test_earlyoom_sleeps_up_to_a_second_when_memory_is_plentiful():
    e = Earlyoom()
    huge = Snapshot(0.0, meminfo(60000, anon_mb=0, total_mb=64000), pressure(), ())
    assert e.sleep_time_ms(huge) == 1000


def test_earlyoom_sends_sigterm_to_the_highest_oom_score_then_sees_it_exit():
    gone_at = 0.35
    tasks = lambda t: (task(10, "editor", score=300), task(12, "sshd", score=1500, adj=-1000),  # noqa: E731
                       task(11, "browser", score=700, rss_mb=600, state=ZOMBIE if t >= gone_at else SLEEPING))
    d = Driver(Earlyoom(), earlyoom_world(lambda t: 80, tasks))
    d.run(0.55)
    assert d.said("low memory! at or below SIGTERM limits: mem 10.00%, swap 10.00%")
    assert d.said('sending SIGTERM to process 11 uid 0 "browser": oom_score 700, oom_score_adj 0, VmRSS 600 MiB')
    (t_kill, kill), (t_next, nxt) = d.kills
    assert (t_kill, kill.pid, kill.signal, kill.mrelease) == (0.0, 11, "SIGTERM", True)
    assert d.said("kill_release: pid=11: process_mrelease pidfd=4 success") == [0.0]
    # polled every 100 ms from the kill: dead (a zombie) at the 0.4 s round
    assert d.said("process 11 exited after 0.400 seconds") == [pytest.approx(0.4)]
    assert nxt.pid == 10 and t_next == pytest.approx(0.5)    # memory still low 100 ms later: the next, not the zombie


def test_earlyoom_sigkill_at_once_below_the_kill_level():
    d = Driver(Earlyoom(), earlyoom_world(lambda t: 40))
    d.run(0.05)
    assert d.said("low memory! at or below SIGKILL limits: mem  5.00%, swap  5.00%")
    assert d.victims("SIGKILL") == [11] and d.victims("SIGTERM") == []


def test_earlyoom_escalates_to_sigkill_when_memory_falls_to_the_kill_level_while_waiting():
    d = Driver(Earlyoom(), earlyoom_world(lambda t: 80 if t < 1.25 else 30))
    d.run(1.5)
    assert d.victims("SIGTERM") == [11]
    assert d.said("escalating to SIGKILL after 1.300 seconds")
    assert d.victims("SIGKILL") == [11]


def test_earlyoom_gives_up_after_ten_seconds_with_timer_expired_and_picks_again():
    d = Driver(Earlyoom(), earlyoom_world(lambda t: 80))     # the victim ignores SIGTERM, memory stays low
    d.run(10.15)
    t0 = d.kills[0][0]
    assert d.said("process 11 did not exit") == [pytest.approx(t0 + 10.0)]
    assert d.said("kill failed: Timer expired") == [pytest.approx(t0 + 10.0)]
    assert len([t for t in d.looks if t <= t0 + 10.0 + 1e-9]) == 1 + 100 + 1   # the kill, rounds 0..99, the expiry
    assert [t for t, k in d.kills] == [t0, pytest.approx(t0 + 10.1)]    # the next poll, 100 ms later: again


def test_earlyoom_never_picks_oom_score_adj_minus_1000_and_sleeps_a_second_without_a_victim():
    only_protected = lambda t: (task(12, "sshd", score=0, adj=-1000),)   # noqa: E731
    d = Driver(Earlyoom(), earlyoom_world(lambda t: 40, only_protected))
    d.run(1.2)
    assert d.kills == []
    # 1 s, then the adaptive 100 ms, and the same again
    assert d.said("Could not find a process to kill. Sleeping 1 second.") == [0.0, pytest.approx(1.1)]


def test_earlyoom_needs_both_memory_and_swap_low():
    d = Driver(Earlyoom(), earlyoom_world(lambda t: 40, swap=(1000, 500)))
    d.run(2.0)
    assert d.kills == []                                     # swap is 50 % free
    d = Driver(Earlyoom(), earlyoom_world(lambda t: 40, swap=(1000, 40)))
    d.run(0.1)
    assert d.victims("SIGKILL") == [11]


def test_earlyoom_says_why_a_kill_failed():
    d = Driver(Earlyoom(), earlyoom_world(lambda t: 40), fail={11: "ESRCH"})
    d.run(0.05)
    assert d.said("kill failed: No such process")


def test_earlyoom_set_options():
    assert Earlyoom({"mem_term_percent": "30"}).consts["mem_kill_percent"] == 15.0   # -m 30: kill at 15
    e = Earlyoom({"mem_term_percent": 20, "mem_kill_percent": 18})
    assert (e.consts["mem_term_percent"], e.consts["mem_kill_percent"]) == (20.0, 18.0)
    with pytest.raises(UsageError, match=r"^--set mem_term_percent=120: must be a number from 0 to 100"):
        Earlyoom({"mem_term_percent": "120"})
    with pytest.raises(UsageError, match="daemon earlyoom has no such option") as e:
        Earlyoom({"mem_percent": 5})
    assert "\n" not in str(e.value) and "mem_term_percent" in str(e.value)
    p = get_policy("v6.6+earlyoom", {"oom_reaper_delay_s": 1, "swap_term_percent": 20})   # each key to its owner
    assert p.daemon.consts["swap_kill_percent"] == 10.0


# -- lmkd ---------------------------------------------------------------------------

def lmkd_world(full_rate=0.0, some_rate=0.0, free_mb=lambda t: 5, tasks_at=None, swap=(0, 0), since=0.0):
    """Stall totals growing at ``*_rate`` s per s from ``since``; MemFree ``free_mb(t)`` of 1000 MiB."""
    base = (task(20, "launcher", adj=0, rss_mb=50), task(21, "cached_a", adj=900, rss_mb=30),
            task(22, "cached_b", adj=900, rss_mb=80), task(23, "service", adj=500, rss_mb=40),
            task(24, "visible", adj=100, rss_mb=200), task(25, "native", adj=-900, rss_mb=300))

    def world(t):
        dt = max(0.0, t - since)
        tasks = tasks_at(t) if tasks_at else base
        return Snapshot(t, meminfo(free_mb(t), free_mb=free_mb(t), swap_mb=swap[0], swap_free_mb=swap[1]),
                        pressure(int((some_rate or full_rate) * dt * 1e6), int(full_rate * dt * 1e6)), tasks)
    return world


def test_lmkd_watermarks_follow_the_kernel_defaults():
    # min: sqrt(16 * 1024000 kB); low and high add max(min / 4, 0.1 % of memory) = 1024 kB once, twice
    assert watermarks(1000 * MB) == (4047, 5071, 6095)


def test_lmkd_sleeps_without_pressure():
    d = Driver(Lmkd(), lmkd_world())
    d.run(2.0)
    assert d.kills == []
    assert d.looks[1] - d.looks[0] == pytest.approx(0.1)


def test_lmkd_critical_stall_kills_the_oldest_cached_app_first_and_waits_100ms_on_its_pidfd():
    d = Driver(Lmkd(), lmkd_world(full_rate=0.8, free_mb=lambda t: 500))
    d.run(1.0)
    t0, first = d.kills[0]
    assert (first.pid, first.signal, first.mrelease) == (21, "SIGKILL", True)   # adj 900, lowest pid: not the bigger 22
    assert t0 == pytest.approx(0.9)                           # 0.72 s of full stall within 1 s: critical
    assert d.said("Kill 'cached_a' (21), uid 0, oom_score_adj 900 to free 30720kB rss, 0kB swap; "
                  "reason: device is not responding")
    decision = dict(d.decisions)[t0]
    assert decision.wake_on_exit == 21 and decision.next_at == pytest.approx(t0 + 0.1)


def test_lmkd_makes_no_new_kill_while_one_is_pending_then_kills_again_after_kill_timeout_ms():
    world = lmkd_world(full_rate=0.8, free_mb=lambda t: 3)    # under the min watermark
    d = Driver(Lmkd(), world)
    d.run(0.95)
    t0, first = d.kills[0]
    assert d.decision.wake_on_exit == 21 and d.decision.next_at == pytest.approx(t0 + 0.1)
    early = d.daemon.poll(world(t0 + 0.05), Results())        # woken early, the victim alive: nothing
    assert early.actions == () and early.next_at == pytest.approx(t0 + 0.1) and early.wake_on_exit == 21
    d.run(t0 + 0.1)
    assert [k.pid for _, k in d.kills] == [21, 22]            # the victim never died: 100 ms later, the next
    assert d.kills[1][0] == pytest.approx(t0 + 0.1)
    assert d.said("reason: min watermark is breached even after kill")


def test_lmkd_looks_again_as_soon_as_the_victim_dies():
    died = {}
    base = lmkd_world()(0).tasks
    tasks = lambda t: tuple(x if t < died.get(x.pid, 99) else replace(x, state=ZOMBIE) for x in base)  # noqa: E731
    d = Driver(Lmkd(), lmkd_world(full_rate=0.8, free_mb=lambda t: 3, tasks_at=tasks))
    d.run(0.95)
    t0 = d.kills[0][0]
    died[21] = t0 + 0.03
    d.run(t0 + 0.05, died_at=died)
    assert d.looks[-1] == pytest.approx(t0 + 0.03)
    assert d.kills[-1][0] == pytest.approx(t0 + 0.03)         # resumed polling at once, killed the next


def test_lmkd_partial_stall_with_low_swap_spares_perceptible_apps_until_the_min_watermark():
    tasks = lambda t: (task(24, "visible", adj=100, rss_mb=200), task(20, "launcher", adj=0))   # noqa: E731
    d = Driver(Lmkd(), lmkd_world(some_rate=0.1, free_mb=lambda t: 4.5, tasks_at=tasks, swap=(1000, 50)))
    d.run(2.0)
    assert d.kills == []                                      # under the low watermark, swap low: only adj >= 201
    event = d.looks.index(pytest.approx(0.7))                 # 70 ms of some stall in 1 s: medium
    assert d.looks[event + 1] - d.looks[event] == pytest.approx(0.01)   # then polls every 10 ms: swap is low
    d = Driver(Lmkd(), lmkd_world(some_rate=0.1, free_mb=lambda t: 3, tasks_at=tasks, swap=(1000, 50)))
    d.run(2.0)
    assert d.victims()[0] == 24                               # under min: the heaviest perceptible app
    assert d.said("reason: min watermark is breached and swap is low (51200kB < 102400kB)")


def test_lmkd_a_medium_event_alone_kills_nothing_and_never_kills_negative_adj():
    d = Driver(Lmkd(), lmkd_world(some_rate=0.2, free_mb=lambda t: 500))
    d.run(3.0)
    assert d.kills == []
    only_native = lambda t: (task(25, "native", adj=-900),)   # noqa: E731
    d = Driver(Lmkd(), lmkd_world(full_rate=0.9, free_mb=lambda t: 1, tasks_at=only_native))
    d.run(3.0)
    assert d.kills == []


def test_lmkd_set_options():
    assert Lmkd({"kill_timeout_ms": "0"}).consts["kill_timeout_ms"] == 0
    with pytest.raises(UsageError, match=r"^--set kill_timeout_ms=2.5: must be a whole number"):
        Lmkd({"kill_timeout_ms": "2.5"})


# -- oomd --------------------------------------------------------------------------

def cgroup_world(full_avg10_at, tasks_at=None, memcgs_at=None, stall_rate=0.3, swap=(0, 0), avail_mb=100):
    base = (task(30, "web", rss_mb=500, memcg="/big"), task(31, "web-worker", rss_mb=100, memcg="/big"),
            task(32, "db", rss_mb=200, memcg="/small"), task(33, "shell", rss_mb=20, memcg="/"))
    cgs = (MemcgInfo("/", 820 * MB, None), MemcgInfo("/big", 600 * MB, None, pids=(30, 31)),
           MemcgInfo("/small", 200 * MB, None, pids=(32,)))

    def world(t):
        return Snapshot(t, meminfo(avail_mb, swap_mb=swap[0], swap_free_mb=swap[1]),
                        pressure(int(stall_rate * t * 1e6), 0, full_avg10=full_avg10_at(t)),
                        tasks_at(t) if tasks_at else base, memcgs_at(t) if memcgs_at else cgs)
    return world


def test_candidates_are_leaf_memcgs_and_each_root_task():
    snap = cgroup_world(lambda t: 0)(0.0)
    assert [(c.path, c.pids, c.current_kb // MB) for c in candidates(snap)] == [
        ("/big", (30, 31), 600), ("/shell[33]", (33,), 20), ("/small", (32,), 200)]
    nested = Snapshot(0.0, meminfo(100), pressure(),
                      (task(40, "agent", rss_mb=10, memcg="/a"), task(41, "job", rss_mb=50, memcg="/a/b"),
                       task(42, "old", rss_mb=5, state=ZOMBIE)),
                      (MemcgInfo("/", 65 * MB, None), MemcgInfo("/a", 60 * MB, None, pids=(40,)),
                       MemcgInfo("/a/b", 50 * MB, None, pids=(41,))))
    # a task of an inner memcg counts on its own; a zombie in the root is no candidate
    assert [(c.path, c.pids) for c in candidates(nested)] == [("/a/agent[40]", (40,)), ("/a/b", (41,))]


def test_oomd_kills_the_biggest_cgroup_after_30s_of_pressure_then_pauses_15s():
    everyone = cgroup_world(lambda t: 0)(0).tasks
    d = Driver(Oomd(), cgroup_world(lambda t: 75.0 if t >= 3 else 10.0,
                                    tasks_at=lambda t: everyone if t < 36 else everyone[2:]))
    d.run(60.0)
    assert d.said('Picked "big" (600MB) based on size > 50% of sibling total 820MB with kill preference NORMAL')
    t0 = d.said("Trying to kill /big")[0]
    assert t0 == pytest.approx(35.0)                          # first above at the 5 s tick, 30 s later
    assert d.said("Killed 2: 30(web) 31(web-worker)")[0] == t0
    assert sorted(k.pid for t, k in d.kills if t < t0 + 15) == [30, 31]   # gone by the next round: one kill each
    assert d.said("Reaping processes in /big") == [pytest.approx(t0 + 1)]
    # pressure stays high; "/small" is next, but not before the 15 s post-action delay
    assert d.said("Trying to kill /small") == [pytest.approx(t0 + 1 + 15)]


def test_oomd_re_kills_a_stuck_cgroup_each_second_ten_rounds_then_reaps_it():
    d = Driver(Oomd({"duration": 0}), cgroup_world(lambda t: 75.0))
    d.run(20.0)
    rounds = d.said("Killed 2: 30(web) 31(web-worker)")
    t0 = rounds[0]                                            # the first tick that saw reclaim
    assert rounds == [t0 + k for k in range(0, 9)]            # rounds 1-2 at once, then 1 s apart: 10 in all
    assert d.said("Reaping processes in /big") == [pytest.approx(t0 + 9.0)]
    assert [k.pid for t, k in d.kills if k.mrelease] == [30, 31]
    assert d.said("Reaped 2 processes in 0ms")


def test_oomd_low_swap_kills_the_cgroup_with_the_most_swap():
    tasks = (task(30, "web", memcg="/big", swap_mb=10), task(32, "db", memcg="/small", swap_mb=300))
    d = Driver(Oomd(), cgroup_world(lambda t: 0.0, tasks_at=lambda t: tasks, swap=(1000, 50)))
    d.run(0.0)
    assert d.said("SwapFree 50MB is smaller than the threshold of 100MB, total swap is 1000MB")
    assert d.said('Picked "small" (200MB) based on swap usage at 300MB') and d.victims() == [32]


def test_oomd_needs_reclaim_activity():
    d = Driver(Oomd({"duration": 0}), cgroup_world(lambda t: 75.0, stall_rate=0.0))
    d.run(20.0)
    assert d.kills == []


# -- systemd-oomd ---------------------------------------------------------------------

def test_systemd_oomd_pressure_path_waits_the_duration_then_kills_a_whole_cgroup_then_pauses():
    everyone = cgroup_world(lambda t: 0)(0).tasks
    alive = lambda t: everyone if t < 31 else everyone[2:]   # noqa: E731
    d = Driver(SystemdOomd(), cgroup_world(lambda t: 70.0, tasks_at=alive))
    d.run(60.0)
    first = d.said("Killed /big due to memory pressure for / being 70.00% > 60.00% for > 30s with reclaim activity")
    assert first == [pytest.approx(30.0)]
    assert sorted(k.pid for t, k in d.kills if t == first[0]) == [30, 31]
    assert not any(k.mrelease for _, k in d.kills)            # systemd-oomd has no process_mrelease
    assert d.said("Killed /small due to memory pressure")[0] == pytest.approx(45.0)   # POST_ACTION_DELAY 15 s


def test_systemd_oomd_pressure_below_the_limit_or_too_short_kills_nothing():
    d = Driver(SystemdOomd(), cgroup_world(lambda t: 70.0 if t % 40 < 29 else 10.0))
    d.run(80.0)
    assert d.kills == []


def test_systemd_oomd_swap_path_every_150ms_without_a_delay():
    tasks_at = lambda t: tuple(x for x in (task(30, "web", memcg="/big", swap_mb=400),          # noqa: E731
                                           task(32, "db", memcg="/small", swap_mb=300))
                               if not (x.pid == 30 and t > 0.1))
    d = Driver(SystemdOomd(), cgroup_world(lambda t: 0.0, tasks_at=tasks_at, swap=(1000, 50), avail_mb=50))
    d.run(0.2)
    assert d.victims() == [30, 32]                            # the most swap, then 150 ms later the next
    assert [t for t, _ in d.kills] == [0.0, pytest.approx(0.15)]
    assert d.said("Killed /big due to memory used (996147200) / total (1048576000) and swap used (996147200) / "
                  "total (1048576000) being more than 90.00%")


def test_systemd_oomd_swap_path_leaves_alone_while_memory_is_available():
    d = Driver(SystemdOomd(), cgroup_world(lambda t: 0.0, swap=(1000, 50), avail_mb=500))
    d.run(1.0)
    assert d.kills == []


def test_systemd_oomd_set_options_use_systemds_names():
    d = SystemdOomd({"DefaultMemoryPressureLimit": "50", "DefaultMemoryPressureDurationSec": "20"})
    assert (d.consts["DefaultMemoryPressureLimit"], d.consts["DefaultMemoryPressureDurationSec"]) == (50.0, 20.0)
    with pytest.raises(UsageError, match=r"^--set SwapUsedLimit=x: not a number"):
        get_policy("v6.6+systemd-oomd", {"SwapUsedLimit": "x"})


def test_every_daemon_is_registered_and_starts():
    assert set(DAEMONS) == {"earlyoom", "lmkd", "oomd", "systemd-oomd"}
    for name, cls in DAEMONS.items():
        p = get_policy(f"v6.6+{name}")
        assert p.name == f"v6.6+{name}" and isinstance(p.daemon, cls)
        assert p.daemon.start(0.0).next_at == 0.0
