"""What a user-space OOM daemon model is: what it sees, what it may do, and its constants.

A daemon model is pure decision logic, like a reaper policy: the runtime
(``workers/userspace.py``) takes a :class:`Snapshot` of the run as such a
daemon reads /proc (``/proc/meminfo``, ``/proc/pressure/memory``, each
task's ``oom_score``, ``oom_score_adj`` and rss, each memcg's usage), at the
emulated time the model asked to look, hands it to :meth:`Daemon.poll`, and
does what the returned :class:`Decision` says: log lines in the daemon's own
shapes, signals (the emulated SIGKILL, or SIGTERM, which a task answers as
its ``sigterm`` key says), and process_mrelease() in the daemon's own
context. Nothing here sleeps, reads a clock or touches a process, so a model
can be driven through hours of emulated time by a test with hand-made
snapshots.

To add a daemon: subclass :class:`Daemon` in a file of its own (with its
lineage and sources in the docstring), set ``name``, ``summary``,
``DEFAULTS`` (named after the daemon's own options) and ``LIMITS``, implement
:meth:`Daemon.poll`, and pass the class to :func:`emulator.policies.register_daemon`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..kernel.policies.base import Limit, Tunable

#: Task states as /proc/PID/status shows them (the first letter of ``State:``).
RUNNING, SLEEPING, DISK_SLEEP, ZOMBIE, DEAD = "R", "S", "D", "Z", "X"


@dataclass(frozen=True)
class MemInfo:
    """/proc/meminfo, in kB (the fields the daemons read)."""
    MemTotal: int
    MemFree: int
    MemAvailable: int            # free + reclaimable page cache (si_mem_available, no watermarks)
    Cached: int = 0              # page cache and shmem
    Dirty: int = 0
    Shmem: int = 0
    AnonPages: int = 0
    PageTables: int = 0
    SwapTotal: int = 0
    SwapFree: int = 0

    def percent(self, field_name: str) -> float:
        """A memory field as a percentage of MemTotal (earlyoom's mem_avail_percent)."""
        return 100.0 * getattr(self, field_name) / self.MemTotal if self.MemTotal else 0.0

    @property
    def swap_free_percent(self) -> float:
        """SwapFree as a percentage of SwapTotal; 0 with no swap (as earlyoom computes it)."""
        return 100.0 * self.SwapFree / self.SwapTotal if self.SwapTotal else 0.0


@dataclass(frozen=True)
class Pressure:
    """One line of a pressure file: ``some`` or ``full`` (avg in percent, total in us)."""
    avg10: float = 0.0
    avg60: float = 0.0
    avg300: float = 0.0
    total: int = 0


@dataclass(frozen=True)
class MemoryPressure:
    """/proc/pressure/memory (or a memcg's memory.pressure)."""
    some: Pressure = Pressure()
    full: Pressure = Pressure()


@dataclass(frozen=True)
class TaskInfo:
    """One process as /proc/PID shows it."""
    pid: int
    comm: str
    state: str                   # RUNNING, SLEEPING, DISK_SLEEP, ZOMBIE (dying, or dead not reaped), DEAD
    oom_score: int               # /proc/PID/oom_score: 0..2000 (1000 + badness * 1000 / totalpages)
    oom_score_adj: int
    rss_kb: int                  # VmRSS: anon + file + shmem
    anon_kb: int = 0             # RssAnon
    file_kb: int = 0             # RssFile
    shmem_kb: int = 0            # RssShmem
    swap_kb: int = 0             # VmSwap
    memcg: str = "/"             # its memcg's path
    killed: bool = False         # a fatal signal is pending (SIGNAL_GROUP_EXIT), or it is exiting

    @property
    def gone(self) -> bool:
        """Dead for a daemon that waits for it: reaped, or a zombie (earlyoom's is_alive)."""
        return self.state in (ZOMBIE, DEAD)


@dataclass(frozen=True)
class MemcgInfo:
    """One memory cgroup, as cgroup v2 files show it."""
    path: str
    current_kb: int              # memory.current
    max_kb: int | None           # memory.max (None: max)
    swap_kb: int = 0             # memory.swap.current
    pressure: MemoryPressure = MemoryPressure()   # memory.pressure
    pids: tuple[int, ...] = ()   # cgroup.procs (its own tasks, not its children's)


@dataclass(frozen=True)
class Snapshot:
    """What a daemon sees at emulated time ``now``."""
    now: float
    meminfo: MemInfo
    pressure: MemoryPressure
    tasks: tuple[TaskInfo, ...]
    memcgs: tuple[MemcgInfo, ...] = ()

    def task(self, pid: int) -> TaskInfo | None:
        for t in self.tasks:
            if t.pid == pid:
                return t
        return None


# -- what a daemon may do -------------------------------------------------------

@dataclass(frozen=True)
class Log:
    """A line in the daemon's own shape (the run's log shows it under the daemon's name)."""
    line: str


@dataclass(frozen=True)
class Kill:
    """Send ``signal`` ("SIGKILL" or "SIGTERM") to ``pid``; then, if ``mrelease``,
    process_mrelease() it from the daemon's own context (the answer comes back in the
    next snapshot's ``mrelease`` results). ``reason``: why, for the trace."""
    pid: int
    signal: str = "SIGKILL"
    mrelease: bool = False
    reason: str = ""


@dataclass(frozen=True)
class Decision:
    """What to do now, and when to look again: at ``next_at`` (emulated s), or earlier if
    ``wake_on_exit`` (a pid: the daemon waits on its pidfd, as lmkd does) dies first."""
    actions: tuple = ()
    next_at: float = 0.0
    wake_on_exit: int | None = None


@dataclass
class Results:
    """What the runtime reports back of the last decision's actions, by pid: the errno
    name of a failed kill or process_mrelease ("" for success)."""
    kill: dict[int, str] = field(default_factory=dict)
    mrelease: dict[int, str] = field(default_factory=dict)


#: a poll interval or a wait, in seconds: a millisecond to an hour
SECONDS = Limit(0.001, 3600.0, why="seconds, 0.001 to 3600")
#: a percentage
PERCENT = Limit(0.0, 100.0, why="a percentage, 0 to 100")


class Daemon(Tunable):
    """A user-space OOM daemon model (pure). ``poll`` is called at the times it asks for.
    Its tunables (``DEFAULTS``, ``LIMITS``) are named after the daemon's own options."""
    FLOAT_LIMIT = SECONDS
    KIND, CONSTANT = "daemon", "option"

    def start(self, now: float) -> Decision:
        """The daemon starts at emulated time ``now`` (the run's time 0): its banner lines,
        and when to take the first look."""
        return Decision(next_at=now)

    def poll(self, snap: Snapshot, results: Results) -> Decision:
        """Look at ``snap`` (taken at ``snap.now``); ``results``: how the previous
        decision's kills and process_mrelease calls went."""
        raise NotImplementedError
