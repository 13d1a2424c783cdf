"""lmkd: Android 13's low memory killer daemon, woken by PSI triggers, killing by oom_score_adj band.

Lineage and sources: AOSP platform/system/memory/lmkd, android-13 branch, as
carried by yaap/system_memory_lmkd branch ``thirteen`` (commit 2ab9b1acf94f,
a merge of AOSP android-13; lmkd.cpp line numbers are that file's):

- lmkd.cpp:135-160 PSI_WINDOW_SIZE_MS 1000, PSI_POLL_PERIOD_SHORT_MS 10,
  PSI_POLL_PERIOD_LONG_MS 100, DEF_LOW_SWAP 10, DEF_PARTIAL_STALL 70,
  DEF_COMPLETE_STALL 700; lmkd.cpp:3238-3240 the new strategy's triggers:
  medium = "some 70 ms in 1 s", critical = "full 700 ms in 1 s" (low: none);
  lmkd.cpp:3752-3776 properties: kill_heaviest_task false, kill_timeout_ms
  100, swap_util_max 100, stall_limit_critical 100.
- lmkd.cpp:2583-2911 ``mp_event_psi``: skip while a kill is pending and
  under kill_timeout_ms; the reasons in order: "min watermark is breached
  even after kill" (the first look after a kill), "device is not
  responding" (a critical event), low swap and thrashing, "%s watermark is
  breached and swap is low", swap utilization, thrashing; perceptible apps
  (oom_score_adj <= 200) are spared unless below the min watermark; polling
  every 10 ms during and after a kill or with low swap, else 100 ms, for
  PSI_WINDOW_SIZE_MS after each start (lmkd.cpp:3561-3599 ``call_handler``).
- lmkd.cpp:2421-2460 ``find_and_kill_process``: from oom_score_adj 1000 down
  to the minimum, the least recently registered task of each adj
  (``proc_adj_tail``), or the heaviest (rss) at or below PERCEPTIBLE_APP_ADJ
  200 or with kill_heaviest_task; lmkd.cpp:2304-2418 ``kill_one_process``
  skips zombies (no VmRSS), waits on the victim's pidfd, logs "Kill '%s'
  (%d), uid %d, oom_score_adj %d to free %ldkB rss, %ldkB swap; reason: %s".
- lmkd.cpp:3601-3660 ``mainloop``: while waiting for the kill, the pidfd's
  death notification or the end of kill_timeout_ms wakes it; polling then
  resumes at once. reaper.cpp: pidfd_send_signal(SIGKILL), then
  process_mrelease().

Emulated: the kernel's PSI triggers. The stall growth of
``pressure.some.total`` / ``pressure.full.total`` over the last 1 s window,
looked at every 100 ms (the kernel's trigger poll runs every window/10) and
at each of lmkd's polls, fires a trigger at or above its threshold, at most
once per window. Zone watermarks are derived from MemTotal as the kernel
does (min_free_kbytes = sqrt(16 * MemTotal kB), clamped to 128 kB..256 MiB;
low/high add max(min/4, 0.1 % of memory) once/twice; no lowmem_reserve) and
compared with MemFree. Reclaim activity (/proc/vmstat's pgscan and
workingset_refault, which a run does not count) is taken from PSI: some
stall time that grew since the last look. "Least recently registered" is
the lowest pid (a run's tasks register in start order). Not modelled: the
thrashing reasons (no refault counter), the file cache check, the
low-RAM-device defaults, the vmpressure (minfree) strategy, memcg v1.
"""

from __future__ import annotations

import math
from collections import deque

from ..kernel.policies.base import Limit
from .base import Daemon, Decision, Kill, Log, Results, Snapshot, TaskInfo

PSI_WINDOW_SIZE_S = 1.0           # PSI_WINDOW_SIZE_MS: a trigger's window, and how long polling lasts
PSI_POLL_PERIOD_SHORT_S = 0.010   # during and after a kill, or with low swap
PSI_POLL_PERIOD_LONG_S = 0.100
TRIGGER_POLL_S = 0.100            # the kernel's psi trigger poll: window / 10
PERCEPTIBLE_APP_ADJ = 200
OOM_SCORE_ADJ_MAX = 1000
WMARK_MIN, WMARK_LOW, WMARK_HIGH, WMARK_NONE = range(4)   # enum zone_watermark
MEDIUM, CRITICAL = "medium", "critical"


def watermarks(mem_total_kb: int) -> tuple[int, int, int]:
    """The zones' (min, low, high) watermarks in kB, as the kernel sets them by default
    (init_per_zone_wmark_min, __setup_per_zone_wmarks with watermark_scale_factor 10)."""
    wmin = min(max(math.isqrt(mem_total_kb * 16), 128), 262144)
    step = max(wmin // 4, mem_total_kb * 10 // 10000)
    return wmin, wmin + step, wmin + 2 * step


def lowest_watermark(free_kb: int, wm: tuple[int, int, int]) -> int:
    """get_lowest_watermark: the lowest watermark that free memory is under."""
    for level, mark in zip((WMARK_MIN, WMARK_LOW, WMARK_HIGH), wm):
        if free_kb < mark:
            return level
    return WMARK_NONE


class StallTrigger:
    """A PSI trigger (``some|full STALL_US WINDOW_US``) emulated from the stall totals: it
    fires when the stall time in the last window reaches the threshold, at most once a window."""

    def __init__(self, kind: str, threshold_s: float, window_s: float = PSI_WINDOW_SIZE_S):
        self.kind, self.threshold_us, self.window = kind, threshold_s * 1e6, window_s
        self.last_event = -math.inf

    def check(self, now: float, history: deque) -> bool:
        """``history``: (time, some_total_us, full_total_us), oldest first, ending at ``now``."""
        if self.threshold_us <= 0 or now < self.last_event + self.window:
            return False
        col = 1 if self.kind == "some" else 2
        start = history[0]
        for sample in history:                 # the latest sample at or before the window's start
            if sample[0] > now - self.window:
                break
            start = sample
        if history[-1][col] - start[col] >= self.threshold_us:
            self.last_event = now
            return True
        return False


class Lmkd(Daemon):
    """mp_event_psi on trigger events and on its polls; one kill at a time, waited for on its pidfd."""
    name = "lmkd"
    summary = "Android 13 lmkd: PSI-woken, kills by oom_score_adj band, waits <=100 ms on the pidfd"
    DEFAULTS = {
        "psi_partial_stall_ms": 70,        # ro.lmk.psi_partial_stall_ms: the medium trigger (some)
        "psi_complete_stall_ms": 700,      # ro.lmk.psi_complete_stall_ms: the critical trigger (full)
        "kill_timeout_ms": 100,            # ro.lmk.kill_timeout_ms: longest wait for a victim's death; 0: no bound
        "swap_free_low_percentage": 10,    # ro.lmk.swap_free_low_percentage: swap is low under this
        "swap_util_max": 100,              # ro.lmk.swap_util_max: 100 disables the swap utilization reason
        "kill_heaviest_task": 0,           # ro.lmk.kill_heaviest_task: the biggest in every band, not the oldest
        "stall_limit_critical": 100,       # ro.lmk.stall_limit_critical: full avg10 above it allows adj >= 0
    }
    LIMITS = {
        "psi_partial_stall_ms": Limit(0, 1000, integer=True, why="ms of some stall in 1 s; 0: no trigger"),
        "psi_complete_stall_ms": Limit(0, 1000, integer=True, why="ms of full stall in 1 s; 0: no trigger"),
        "kill_timeout_ms": Limit(0, 60000, integer=True, why="ms; 0 waits for the death without a bound"),
        "swap_free_low_percentage": Limit(0, 100, integer=True, why="a percentage"),
        "swap_util_max": Limit(0, 100, integer=True, why="a percentage; 100 turns it off"),
        "kill_heaviest_task": Limit(0, 1, integer=True, why="1: the heaviest task of each adj"),
        "stall_limit_critical": Limit(0, 100, integer=True, why="a percentage"),
    }

    def __init__(self, overrides=None):
        super().__init__(overrides)
        c = self.consts
        self.triggers = {MEDIUM: StallTrigger("some", c["psi_partial_stall_ms"] / 1000),
                         CRITICAL: StallTrigger("full", c["psi_complete_stall_ms"] / 1000)}
        self.history: deque = deque()
        self.polling = False               # poll_params.poll_handler set
        self.poll_start = 0.0
        self.last_poll = 0.0
        self.interval = PSI_POLL_PERIOD_LONG_S
        self.level = MEDIUM                 # the level of the handler that started polling
        self.pending: int | None = None     # the pid whose death we wait for
        self.last_kill = -math.inf
        self.killing = False
        self.removed: set[int] = set()      # pid_remove(): killed or found dead, never chosen again
        self.last_stall: int | None = None  # some.total at the last evaluation (reclaim activity)

    def start(self, now: float) -> Decision:
        c = self.consts
        return Decision((Log("Using psi monitors for memory pressure detection"),            # lmkd.cpp:3367
                         Log("(emulated) medium: some %d ms, critical: full %d ms, in %d ms; kill_timeout_ms %d"
                             % (c["psi_partial_stall_ms"], c["psi_complete_stall_ms"], PSI_WINDOW_SIZE_S * 1000,
                                c["kill_timeout_ms"]))), next_at=now)

    # -- the kernel's triggers ------------------------------------------------------

    def events(self, snap: Snapshot) -> list[str]:
        """The trigger levels that fire at this look."""
        h = self.history
        h.append((snap.now, snap.pressure.some.total, snap.pressure.full.total))
        while len(h) > 2 and h[1][0] <= snap.now - PSI_WINDOW_SIZE_S:
            h.popleft()
        return [lvl for lvl, trig in self.triggers.items() if trig.check(snap.now, h)]

    # -- mp_event_psi -----------------------------------------------------------------

    def poll(self, snap: Snapshot, results: Results) -> Decision:
        now = snap.now
        fired = self.events(snap)
        out: list = []
        if self.pending is not None:
            victim, err = snap.task(self.pending), results.kill.get(self.pending, "")
            if err:                                    # kill_one_process: "kill(%d): errno=%d"
                out.append(Log("kill(%d): errno=%s" % (self.pending, err)))
                self.killing = False
            dead = victim is None or victim.gone or bool(err)
            timeout = self.consts["kill_timeout_ms"] / 1000
            if not dead and (timeout == 0 or now < self.last_kill + timeout):
                return self.next_look(now, out)        # still waiting: the wait in mainloop goes on
            self.pending = None                       # death notification, or kill_timeout_ms is over
            self.polling, self.poll_start, self.interval = True, now, PSI_POLL_PERIOD_SHORT_S   # resume_polling
            self.last_poll = now - self.interval       # POLLING_RESUME: poll at once
        if fired:
            self.level = CRITICAL if CRITICAL in fired else MEDIUM
            out += self.mp_event_psi(snap, self.level, events=True)
        elif self.polling and now >= self.last_poll + self.interval - 1e-9:
            out += self.mp_event_psi(snap, self.level, events=False)
        return self.next_look(now, out)

    def next_look(self, now: float, out: list) -> Decision:
        """When to look again: the end of the kill wait (or the victim's death, whichever comes
        first); else the next trigger check or lmkd's next poll, whichever comes first."""
        if self.pending is not None:
            timeout = self.consts["kill_timeout_ms"] / 1000
            due = self.last_kill + timeout if timeout else now + TRIGGER_POLL_S
            return Decision(tuple(out), max(due, now + 1e-6), wake_on_exit=self.pending)
        due = now + TRIGGER_POLL_S
        if self.polling:
            due = min(due, self.last_poll + self.interval)
        return Decision(tuple(out), max(due, now + 1e-6))

    def mp_event_psi(self, snap: Snapshot, level: str, events: bool) -> list:
        """One call of the PSI handler; returns its log lines and kill."""
        c, m, now = self.consts, snap.meminfo, snap.now
        self.last_poll = now
        out: list = []
        cycle_after_kill = self.killing
        self.killing = False
        swap_low_threshold = m.SwapTotal * c["swap_free_low_percentage"] // 100
        swap_is_low = m.SwapFree < swap_low_threshold
        stall = snap.pressure.some.total
        reclaim = self.last_stall is None and stall > 0 or self.last_stall is not None and stall > self.last_stall
        self.last_stall = stall
        reason, min_adj = "", 0
        if reclaim:
            wmark = lowest_watermark(m.MemFree, watermarks(m.MemTotal))
            which = "min" if wmark < WMARK_LOW else "low"
            if cycle_after_kill and wmark < WMARK_LOW:
                reason = "min watermark is breached even after kill"
            elif level == CRITICAL and events:
                reason = "device is not responding"
            elif swap_is_low and wmark < WMARK_HIGH:
                reason = "%s watermark is breached and swap is low (%dkB < %dkB)" % (
                    which, m.SwapFree, swap_low_threshold)
                if wmark > WMARK_MIN:
                    min_adj = PERCEPTIBLE_APP_ADJ + 1
            elif wmark < WMARK_HIGH and c["swap_util_max"] < 100:
                used = m.SwapTotal - m.SwapFree
                swappable = m.AnonPages + m.Shmem + used
                util = used * 100 // swappable if swappable > 0 else 0
                if util > c["swap_util_max"]:
                    reason = "%s watermark is breached and swap utilization is high (%d%% > %d%%)" % (
                        which, util, c["swap_util_max"])
            if reason:
                if snap.pressure.full.avg10 > c["stall_limit_critical"]:
                    min_adj = 0                        # "Allow killing perceptible apps if the system is stalled"
                out += self.find_and_kill_process(snap, min_adj, reason)
        if self.pending is not None:
            self.polling = False                       # POLLING_PAUSE while waiting for the death
            return out
        if events or self.killing or reclaim:
            self.polling, self.poll_start = True, now  # POLLING_START
        elif self.polling and now - self.poll_start > PSI_WINDOW_SIZE_S:
            self.polling = False
        self.interval = PSI_POLL_PERIOD_SHORT_S if swap_is_low or self.killing else PSI_POLL_PERIOD_LONG_S
        return out

    def find_and_kill_process(self, snap: Snapshot, min_adj: int, reason: str) -> list:
        """find_and_kill_process: from adj 1000 down to ``min_adj``, the least recently registered
        task of each adj (the heaviest at or below PERCEPTIBLE_APP_ADJ, or with kill_heaviest_task).
        One pass over the tasks to group them by adj."""
        bands: dict[int, list[TaskInfo]] = {}
        for t in snap.tasks:
            if t.oom_score_adj >= min_adj and t.pid not in self.removed:
                bands.setdefault(t.oom_score_adj, []).append(t)
        for adj in sorted(bands, reverse=True):
            heaviest = bool(self.consts["kill_heaviest_task"]) or adj <= PERCEPTIBLE_APP_ADJ
            order = (sorted(bands[adj], key=lambda t: (-t.rss_kb, t.pid)) if heaviest
                     else sorted(bands[adj], key=lambda t: t.pid))      # proc_adj_tail: the oldest
            for t in order:
                self.removed.add(t.pid)                # pid_remove(), killed or not
                if t.gone:
                    continue                           # "Zombie processes will not have RSS / Swap fields"
                self.pending, self.last_kill, self.killing = t.pid, snap.now, True
                return [Kill(t.pid, "SIGKILL", mrelease=True, reason=f"lmkd: {reason}"),
                        Log("Kill '%s' (%d), uid 0, oom_score_adj %d to free %dkB rss, %dkB swap; reason: %s"
                            % (t.comm, t.pid, t.oom_score_adj, t.rss_kb, t.swap_kb, reason))]
        return []
