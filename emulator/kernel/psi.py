"""Memory pressure as kernel/sched/psi.c counts it (PSI, memory resource only). Pure.

Tasks start and stop memory stalls (``psi_memstall_enter``/``psi_memstall_leave``
around direct reclaim, waiting for writeback under reclaim, the refault of a
reclaimed page cache page (``folio_wait_bit_common`` on a workingset page) and
swap-in (``swap_readpage``)); they wake and sleep. The OOM killer's retry wait
(``schedule_timeout_killable(1)`` after ``out_of_memory``) is outside every
memstall section: a task there is simply asleep, so :meth:`PsiGroup.memstall_enter`
refuses it as a reason.

Per CPU, as ``psi_group_change``/``record_times``/``test_state`` (Linux 6.x):

- ``NR_RUNNING``: runnable tasks; ``NR_IOWAIT``: tasks asleep in iowait;
  ``NR_MEMSTALL``: tasks inside a memstall section, running or asleep;
  ``NR_MEMSTALL_RUNNING``: of them, runnable.
- SOME: ``NR_MEMSTALL > 0`` (some task is stalled on memory);
  FULL: ``NR_MEMSTALL > 0 and NR_RUNNING == NR_MEMSTALL_RUNNING`` (no runnable
  task is doing productive work; a task asleep in plain iowait does not stop FULL);
  NONIDLE: any of the three counts.
- Each state's time accrues in nanoseconds while it holds.

``collect_percpu_times`` folds the CPUs into one sample weighted by each CPU's
non-idle time in jiffies (``nsecs_to_jiffies``, rounded down; a collection that saw
less than one jiffy of non-idle time adds nothing, as in the kernel), into ``total``
(shown in microseconds as ``total=``). ``update_averages``/``calc_avgs`` turn the
stall time of each period into a whole percentage (``time * 100 / period``, rounded
down) and fold it into avg10/avg60/avg300 with ``calc_load``'s fixed-point decay
(``include/linux/sched/loadavg.h``: ``FSHIFT`` 11, ``EXP_10s`` 1677, ``EXP_60s`` 1981,
``EXP_300s`` 2034); periods with no update are decayed as zeros at once by
``calc_load_n`` (``fixed_power_int``).

The averaging work (``psi_avgs_work``) is a delayed work on the jiffy grid: a task
change schedules it ``PSI_FREQ`` = 2*HZ+1 jiffies ahead when it is not pending; it
updates the averages when ``avg_next_update`` has come (a fixed grid, psi_period
apart) and re-arms itself ``nsecs_to_jiffies(avg_next_update - now) + 1`` jiffies on
while the CPUs were non-idle since the last collection or a task is non-idle now (the
kernel's test, without a kworker of its own to discount). An idle system stops it; the
next reader or task change catches the missed periods up. Reading
(:meth:`PsiGroup.show`, ``psi_show``) collects and updates if the period is over.

Time is a parameter: every method takes ``now`` in emulated seconds, kept as integer
nanoseconds inside. Not modelled: the other resources (cpu, io, irq), cgroup
hierarchies (one group: the system), triggers (poll/rtpoll), u32 wrap-around of the
per-CPU buckets, and the sampling races the kernel's "punt the overage" comment
guards against (a sample is still capped at its period).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .clock import HZ

NSEC_PER_SEC = 1_000_000_000
NSEC_PER_USEC = 1_000
JIFFY_NS = NSEC_PER_SEC // HZ                 # 4 ms at HZ=250

FSHIFT = 11                                   # include/linux/sched/loadavg.h
FIXED_1 = 1 << FSHIFT
EXP_10s = 1677                                # 1/exp(2s/10s) as fixed-point
EXP_60s = 1981                                # 1/exp(2s/60s)
EXP_300s = 2034                               # 1/exp(2s/300s)
EXPS = (EXP_10s, EXP_60s, EXP_300s)

PSI_FREQ = 2 * HZ + 1                         # jiffies: "2 sec intervals"
PSI_PERIOD_NS = PSI_FREQ * JIFFY_NS           # psi_period = jiffies_to_nsecs(PSI_FREQ)

SOME, FULL, NONIDLE = 0, 1, 2                 # PSI_MEM_SOME, PSI_MEM_FULL, PSI_NONIDLE

#: what enters a memstall section (what PSI counts as memory stall)
MEMSTALL_REASONS = ("reclaim", "writeback", "refault", "swapin")
#: waits that are not memory stalls for PSI, refused by name with the reason why
NOT_MEMSTALL = {
    "oom_wait": "the OOM retry wait sleeps outside any memstall section: use sleep()",
    "oom": "the OOM killer's wait sleeps outside any memstall section: use sleep()",
}


# --- include/linux/sched/loadavg.h and kernel/sched/loadavg.c ----------------------

def calc_load(load: int, exp: int, active: int) -> int:
    """a1 = a0 * e + a * (1 - e), in fixed point, rounded up while rising."""
    newload = load * exp + active * (FIXED_1 - exp)
    if active >= load:
        newload += FIXED_1 - 1
    return newload // FIXED_1


def fixed_power_int(x: int, frac_bits: int, n: int) -> int:
    """x**n in fixed point with ``frac_bits`` fractional bits, rounding each product."""
    result = 1 << frac_bits
    while n:
        if n & 1:
            result = (result * x + (1 << (frac_bits - 1))) >> frac_bits
        n >>= 1
        if not n:
            break
        x = (x * x + (1 << (frac_bits - 1))) >> frac_bits
    return result


def calc_load_n(load: int, exp: int, active: int, n: int) -> int:
    """``calc_load`` applied as if ``n`` periods of ``active`` had passed."""
    return calc_load(load, fixed_power_int(exp, FSHIFT, n), active)


def calc_avgs(avg: list[int], missed_periods: int, time_ns: int, period_ns: int) -> None:
    """kernel/sched/psi.c's calc_avgs: decay ``avg`` (avg10, avg60, avg300, fixed point
    percentages) over the missed periods as zeros, then fold in this period's sample."""
    if missed_periods:
        for i, e in enumerate(EXPS):
            avg[i] = calc_load_n(avg[i], e, 0, missed_periods)
    pct = (time_ns * 100) // period_ns * FIXED_1
    for i, e in enumerate(EXPS):
        avg[i] = calc_load(avg[i], e, pct)


def load_int(x: int) -> int:
    return x >> FSHIFT


def load_frac(x: int) -> int:
    return load_int((x & (FIXED_1 - 1)) * 100)


def format_pressure(some_avg, some_total_ns: int, full_avg, full_total_ns: int) -> str:
    """/proc/pressure/memory's two lines, as psi_show prints them (each ends in a newline);
    ``*_avg`` are the three fixed-point averages, ``*_total_ns`` the stall times."""
    lines = []
    for name, avg, total in (("some", some_avg, some_total_ns), ("full", full_avg, full_total_ns)):
        a = [f"{load_int(v)}.{load_frac(v):02d}" for v in avg]
        lines.append(f"{name} avg10={a[0]} avg60={a[1]} avg300={a[2]} "
                     f"total={total // NSEC_PER_USEC}\n")
    return "".join(lines)


def to_ns(now: float) -> int:
    return round(now * NSEC_PER_SEC)


def nsecs_to_jiffies(ns: int) -> int:
    return ns // JIFFY_NS


# --- the model -----------------------------------------------------------------------

@dataclass
class _Task:
    cpu: int
    runnable: bool = False
    iowait: bool = False
    memstall: int = 0          # nesting depth of memstall sections
    reason: str = ""           # the outermost section's reason


@dataclass
class _Cpu:
    """struct psi_group_cpu, memory and non-idle states only."""
    running: int = 0
    iowait: int = 0
    memstall: int = 0
    memstall_running: int = 0
    state_mask: int = 0
    state_start: int = 0
    times: list[int] = field(default_factory=lambda: [0, 0, 0])
    times_prev: list[int] = field(default_factory=lambda: [0, 0, 0])

    def test_states(self) -> int:
        mask = 0
        if self.memstall:
            mask |= 1 << SOME
            if self.running == self.memstall_running:
                mask |= 1 << FULL
        if self.running or self.iowait or self.memstall:
            mask |= 1 << NONIDLE
        return mask

    def record_times(self, now: int) -> None:
        delta = now - self.state_start
        self.state_start = now
        for s in (SOME, FULL, NONIDLE):
            if self.state_mask & (1 << s):
                self.times[s] += delta

    def recent_times(self, now: int) -> list[int]:
        """get_recent_times: per-state time since the previous collection, the
        states still running included."""
        out = []
        for s in (SOME, FULL, NONIDLE):
            t = self.times[s] + (now - self.state_start if self.state_mask & (1 << s) else 0)
            out.append(t - self.times_prev[s])
            self.times_prev[s] = t
        return out


@dataclass(frozen=True)
class Pressure:
    """One line of /proc/pressure/memory as a daemon parses it: percentages with two
    decimals (as printed) and the total stall time in microseconds."""
    avg10: float
    avg60: float
    avg300: float
    total_us: int


class PsiGroup:
    """The system's memory pressure (psi_system, memory only) over ``ncpus`` CPUs.

    Contract: every method takes ``now`` (emulated seconds), never earlier than the
    last call's (ValueError otherwise). Tasks are named by any hashable id; a task
    first seen by :meth:`wake` is placed on ``cpu``. :meth:`show` is a read of
    /proc/pressure/memory at ``now``; :meth:`pressure` the same as numbers.
    """

    def __init__(self, now: float = 0.0, ncpus: int = 1):
        if ncpus < 1:
            raise ValueError("ncpus must be at least 1")
        t = to_ns(now)
        self._now = t
        self.cpus = [_Cpu(state_start=t) for _ in range(ncpus)]
        self.tasks: dict[object, _Task] = {}
        self.total = [0, 0]                    # SOME, FULL stall time, ns (total[PSI_AVGS])
        self.avg_total = [0, 0]
        self.avg = [[0, 0, 0], [0, 0, 0]]      # fixed-point percentages
        self.avg_last_update = t
        self.avg_next_update = t + PSI_PERIOD_NS
        self.work_due: int | None = None       # when psi_avgs_work runs next (ns), None: idle
        self.updates: list[int] = []           # when the averages were updated (ns), for tests

    # -- time --

    def _at(self, now: float) -> int:
        t = to_ns(now)
        if t < self._now:
            raise ValueError(f"time goes backwards: {now} s after {self._now / NSEC_PER_SEC} s")
        self._run_work_until(t)
        self._now = t
        return t

    def _run_work_until(self, t: int) -> None:
        while self.work_due is not None and self.work_due <= t:
            w = self.work_due
            changed = self._collect(w)
            if w >= self.avg_next_update:
                self._update_averages(w)
            if changed or any(c.state_mask & (1 << NONIDLE) for c in self.cpus):
                self.work_due = (nsecs_to_jiffies(w)
                                 + nsecs_to_jiffies(self.avg_next_update - w) + 1) * JIFFY_NS
            else:
                self.work_due = None

    # -- kernel/sched/psi.c --

    def _collect(self, now: int) -> bool:
        """collect_percpu_times; returns whether any CPU was non-idle since the last."""
        deltas = [0, 0]
        nonidle_total = 0
        changed = False
        for cpu in self.cpus:
            times = cpu.recent_times(now)
            changed |= times[NONIDLE] > 0
            nonidle = nsecs_to_jiffies(times[NONIDLE])
            nonidle_total += nonidle
            for s in (SOME, FULL):
                deltas[s] += times[s] * nonidle
        for s in (SOME, FULL):
            self.total[s] += deltas[s] // max(nonidle_total, 1)
        return changed

    def _update_averages(self, now: int) -> None:
        missed = 0
        expires = self.avg_next_update
        if now - expires >= PSI_PERIOD_NS:
            missed = (now - expires) // PSI_PERIOD_NS
        self.avg_next_update = expires + (1 + missed) * PSI_PERIOD_NS
        period = now - (self.avg_last_update + missed * PSI_PERIOD_NS)
        self.avg_last_update = now
        for s in (SOME, FULL):
            sample = min(self.total[s] - self.avg_total[s], period)
            self.avg_total[s] += sample
            calc_avgs(self.avg[s], missed, sample, period)
        self.updates.append(now)

    def _change(self, task: _Task, now: int, **new) -> None:
        """psi_group_change for one task's CPU: close the running states' time, move
        the counts, reopen the states; arm the averaging work if it is idle."""
        cpu = self.cpus[task.cpu]
        cpu.record_times(now)
        self._count(cpu, task, -1)
        for k, v in new.items():
            setattr(task, k, v)
        self._count(cpu, task, +1)
        cpu.state_mask = cpu.test_states()
        if self.work_due is None:
            self.work_due = (nsecs_to_jiffies(now) + PSI_FREQ) * JIFFY_NS

    @staticmethod
    def _count(cpu: _Cpu, task: _Task, d: int) -> None:
        cpu.running += d * task.runnable
        cpu.iowait += d * (task.iowait and not task.runnable)
        cpu.memstall += d * (task.memstall > 0)
        cpu.memstall_running += d * (task.memstall > 0 and task.runnable)

    # -- task state changes --

    def wake(self, tid, now: float, cpu: int = 0) -> None:
        """The task is runnable (woken, forked, or back from a wait)."""
        t = self._at(now)
        task = self.tasks.get(tid)
        if task is None:
            if not 0 <= cpu < len(self.cpus):
                raise ValueError(f"no cpu {cpu}")
            task = self.tasks[tid] = _Task(cpu=cpu)
        self._change(task, t, runnable=True, iowait=False)

    def sleep(self, tid, now: float, iowait: bool = False) -> None:
        """The task sleeps: idle for PSI unless ``iowait`` (waiting on IO that is not
        a memory stall) or inside a memstall section (then it stays stalled)."""
        t = self._at(now)
        self._change(self._task(tid), t, runnable=False, iowait=iowait)

    def exit(self, tid, now: float) -> None:
        """The task is gone; its memstall sections end with it."""
        t = self._at(now)
        task = self._task(tid)
        self._change(task, t, runnable=False, iowait=False, memstall=0, reason="")
        del self.tasks[tid]

    def memstall_enter(self, tid, now: float, reason: str) -> None:
        """psi_memstall_enter: the task starts a memory stall (``reason`` one of
        MEMSTALL_REASONS). Nested sections count once, as the kernel's ``flags``."""
        if reason in NOT_MEMSTALL:
            raise ValueError(f"{reason!r} is not a memory stall: {NOT_MEMSTALL[reason]}")
        if reason not in MEMSTALL_REASONS:
            raise ValueError(f"unknown memstall reason {reason!r}; one of {MEMSTALL_REASONS}")
        t = self._at(now)
        task = self._task(tid)
        if task.memstall:
            task.memstall += 1
            return
        self._change(task, t, memstall=1, reason=reason)

    def memstall_leave(self, tid, now: float) -> None:
        """psi_memstall_leave: the innermost memstall section ends."""
        t = self._at(now)
        task = self._task(tid)
        if not task.memstall:
            raise ValueError(f"task {tid!r} is not in a memory stall")
        if task.memstall > 1:
            task.memstall -= 1
            return
        self._change(task, t, memstall=0, reason="")

    def _task(self, tid) -> _Task:
        try:
            return self.tasks[tid]
        except KeyError:
            raise ValueError(f"unknown task {tid!r}: wake() it first") from None

    # -- reading --

    def stalled(self, tid) -> bool:
        return self._task(tid).memstall > 0

    def read(self, now: float) -> None:
        """What psi_show does before printing: collect, and update the averages if
        the period is over (with missed periods decayed)."""
        t = self._at(now)
        self._collect(t)
        if t >= self.avg_next_update:
            self._update_averages(t)

    def show(self, now: float) -> str:
        """/proc/pressure/memory read at ``now``: the "some" and "full" lines."""
        self.read(now)
        return format_pressure(self.avg[SOME], self.total[SOME], self.avg[FULL], self.total[FULL])

    def pressure(self, now: float) -> dict[str, Pressure]:
        """The same read as :meth:`show`, as {"some": Pressure, "full": Pressure}."""
        self.read(now)
        out = {}
        for name, s in (("some", SOME), ("full", FULL)):
            vals = [load_int(v) + load_frac(v) / 100 for v in self.avg[s]]
            out[name] = Pressure(*vals, total_us=self.total[s] // NSEC_PER_USEC)
        return out
