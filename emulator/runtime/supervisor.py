"""The supervisor: orchestrates a run, from its first object to its verdict.

One process, two threads:

* the main thread owns the run: it starts the run's fork server
  (``forkserver``), has the run's objects made (``resources``) meanwhile, has
  one worker per task cloned from the fork server's template
  (``workers/task.py``, given a ``protocol.WorkerSpec``; each a child of
  ours), then waits on one FIFO (events from every worker, dispatched by
  kind through a table) and one pidfd per worker (deaths). Work per event
  does not depend on the number of idle tasks, except a real OOM kill, which scans every task as the kernel's
  ``select_bad_process`` does: every task's badness bounded by one read of
  the zone's charge table, the tasks that can win read in full (``oom_scan``).
* the ``oom_reaper`` thread (``emulator.runtime.reaper``).

What the OOM killer decides is pure code (``kernel.oom_kill.out_of_memory``);
the supervisor gives it views of the tasks and carries out its decision.
``out_of_memory`` and the reaper's attempts are serialised by ``oom_lock``,
as in the kernel. Whatever happens, :meth:`Run.execute` ends by killing every
worker with a real SIGKILL, repairing the mms of workers that died half-way
through a change (their journals say what to finish or undo), checking the
accounting, and removing every object of the run. Terminating signals are
deferred to safe points (``emulator.runtime.signals``), so none of that is
cut short.

A worker that dies other than by the emulated SIGKILL or ``oomemu inject
crash`` ends the run at once with verdict ``error`` and the cause.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import posix_ipc
import psutil

from ..errors import ENVIRONMENT_ERRNOS, EnvironmentProblem, UsageError
from ..kernel.clock import JIFFY_S
from ..kernel.memcontrol import NO_LIMIT
from ..kernel.mm_types import (MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MM_SWAPENTS, MMF_OOM_SKIP,
                               MMF_OOM_VICTIM, MMU_NOTIFIERS, PAGE_SIZE, PAGES_PER_MB, MmLayout, TaskState,
                               vm_flags_for)
from ..kernel.oom_kill import (MEMCG, NO_KILLABLE, MemcgState, OomAction, OomDecision, TaskView,
                               killed_process_line, out_of_memory, task_will_free_mem)
from ..kernel.verdict import Verdict
from ..kernel.vmscan import (THROTTLE_WRITEBACK_S, AnonView, Writeback, reclaimable, shrink_anon, shrink_page_cache,
                             throttle_until)
from ..policies import get_policy
from ..result import RunResult, VictimRecord
from ..scenario import Scenario, TaskSpec
from . import machine, names, signals
from .clock import (HOLD_LIMIT_S, RunClock, ScaledClock, hold_for_kill, holding_for, late_ms, release_slot,
                    stop_holding, tolerance_ms)
from .forkserver import ForkServer, ForkServerDied, Worker, kill_unreported
from .klog import KernelLog
from .mm import J_CHARGE, J_ZAP, MM_HEADER, SIGTERM_DEFAULT, SIGTERM_IGNORE, Mm
from .objects import RunObjects
from .oom_scan import OomScan
from .protocol import SIGKILL_EMULATED, Event, Message, ProtocolError, WorkerSpec, decode
from .reaper import OomReaper
from .resources import RunResources
from .rwsem import WRITE, MmapSem
from .stall import Segment, StallAccounting
from .trace import Tracer
from .userspace import UserSpaceFailed, UserSpaceProcess

KILL_WAIT_S = 10.0              # real seconds the teardown waits for killed workers, in all
READY_TIMEOUT_S = 60.0          # real seconds for every worker to fault in its VMAs
LINGER_S = 30.0                 # emulated seconds a resolved run waits for dying victims
# Slower than 0.1 would stretch a day-long run_deadline_s past what a wait can take.
MIN_SPEED, MAX_SPEED = 0.1, 1e6


#: events about a task that its own process did not send: PSI follows only the task's own, and
#: the run is resolved at the time of what a task itself last reported (_when_resolved)
_NOT_THE_TASKS = frozenset((Event.INJECT, Event.DAEMON, Event.KILL, Event.MRELEASE))

GIL_SWITCH_S = 0.0002           # see Run.execute
WATCH_S = 0.25                  # real seconds between looks at the run clock's holds (_watch_holds)


@contextlib.contextmanager
def _restoring_switch_interval(switch: float):
    try:
        yield
    finally:
        sys.setswitchinterval(switch)


class RunFault(RuntimeError):
    """Something of ours broke (exit code 1)."""


class _Interrupted(Exception):
    """A deferred terminating signal reached a safe point: end the run."""


@dataclass(eq=False)
class TaskRecord:
    """The supervisor's record of one task (also the reaper's victim handle)."""
    index: int
    spec: TaskSpec
    proc: Worker | None = None
    mm: Mm | None = None
    mmap_sem: MmapSem | None = None
    oom_reply: posix_ipc.Semaphore | None = None
    ready: bool = False
    steps_done: bool = False
    exiting: bool = False
    exited: bool = False
    crashed: bool = False             # SIGKILLed for real: its mm (and what it held) stays
    crash_expected: bool = False      # ``oomemu inject crash`` said it is coming
    fault: tuple | None = None        # (what, is the environment's) from the worker's last words
    stalled: bool = False
    reclaimed: int = 0                # pages direct reclaim took for its allocation so far
    throttled_s: float = 0.0          # emulated seconds it waited on writeback for it so far
    victim: VictimRecord | None = None   # an OOM victim's record (MMF_OOM_VICTIM)
    killed: VictimRecord | None = None   # a user-space killer's kill (the same record if it became one)
    signalled: set = field(default_factory=set)   # (killer, signal) pairs logged already
    swapped_out: int = 0              # pages direct reclaim swapped out for it so far
    initial_pages: tuple[int, ...] = ()   # pages per VMA at start
    grow_vma: int = 0                     # the VMA that ``alloc`` grows
    own: Mm | None = None                 # its segment: pid, state, comm, killed_at, mailbox (the mm
                                          # too, unless it shares another task's: then ``mm`` is that)
    owner: TaskRecord | None = None       # the task whose mm it shares (CLONE_VM), None: its own
    users: list | None = None             # every task using its mm (itself included), in task order
    sigkilled: bool = False               # killed as a process sharing a victim's mm
    detached: bool = False                # done with do_exit but for its mm, which others hold (mmput):
                                          # gone from the task list, its exit_mmap left to the last user

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def mm_index(self) -> int:
        """The task whose mm this one uses, whose counter in the zone its charges go to."""
        return self.owner.index if self.owner is not None else self.index

    @property
    def has_mm(self) -> bool:
        """find_lock_task_mm() finds an mm: the task has not exited, or it crashed
        (SIGKILLed for real) and its mm still holds pages until reaped or the run ends."""
        if self.crashed:
            return self.mm.resident_pages() > 0
        return not self.exited and self.own.state != TaskState.TASK_DEAD

    @property
    def oom_mm_live(self) -> bool:
        """The mm is still there (signal->oom_mm of a victim: some user of it has not let go)."""
        return any(u.has_mm for u in self.users or (self,))

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0


def _layout(spec: TaskSpec, zone_pages: int) -> tuple[MmLayout, tuple[int, ...], int]:
    """VMAs with room to grow: the first anon VMA may take the whole zone (sparse)."""
    vmas, initial, grow = [], [], None
    for v in spec.vmas:
        pages = round(v.mb * PAGES_PER_MB)
        cap = pages
        if grow is None and v.kind == "anon":
            grow, cap = len(vmas), pages + zone_pages
        vmas.append((v.kind, vm_flags_for(v.kind, v.mlocked), cap))
        initial.append(pages)
    objects = list(spec.vma_objects or (-1,) * len(spec.vmas))
    if grow is None:
        grow = len(vmas)
        vmas.append(("anon", 0, zone_pages))
        initial.append(0)
        objects.append(-1)
    return MmLayout(tuple(vmas), round(spec.pgtables_mb * PAGES_PER_MB), tuple(objects)), tuple(initial), grow


class Run:
    def __init__(self, scenario: Scenario, policy="v4.17", speed: float = 1.0,
                 overrides: dict | None = None, echo=None, trace: str | None = None,
                 hold: bool = False, on_start=None, door: str | None = None):
        if isinstance(speed, bool) or not (isinstance(speed, (int, float)) and MIN_SPEED <= speed <= MAX_SPEED):
            raise UsageError(f"--speed {speed}: must be a number from {MIN_SPEED:g} to {MAX_SPEED:g}")
        self.scenario = scenario
        self.policy = get_policy(policy, overrides)
        self._overrides = dict(overrides or {})
        self.door = door                               # a directory to write the run's /proc into
        self.userspace: UserSpaceProcess | None = None  # the daemon's and the door's process
        self.speed = float(speed)
        self.run_id = names.new_run_id()
        self.clock = ScaledClock(self.speed)          # re-based at time 0
        self.log = KernelLog(lambda: self.clock.now(), echo)
        self.hold = hold
        self._on_start = on_start                      # called at time 0, tasks started
        self._trace_path = trace
        self.tracer: Tracer | None = None
        self._last_abort: dict[int, int] = {}          # requester -> victim pid, to trace once
        self.signals = signals.DeferredSignals(hold_sigint=hold)
        self.error: str | None = None                  # verdict ERROR: why, in one line
        self.error_is_environment = False
        self.stops, self.stopped_s = 0, 0.0            # Ctrl-Z: how often, real seconds in all
        self.resources = RunResources(self.run_id)
        self.tasks = [TaskRecord(i, t) for i, t in enumerate(scenario.tasks)]
        by_name = {t.name: t for t in self.tasks}
        for t in self.tasks:                  # CLONE_VM: a sharer uses its owner's mm
            t.owner = by_name[t.spec.mm] if t.spec.mm else None
            t.users = [t] if t.owner is None else t.owner.users
            if t.owner is not None:
                t.users.append(t)
        self.zone = None
        self.objects: RunObjects | None = None
        self.writeback = Writeback(scenario.writeback_mb_per_s * PAGES_PER_MB)
        self.oom_lock = threading.Lock()
        self.reaper: OomReaper | None = None
        self.kills = 0
        self.victims: list[TaskRecord] = []
        self.user_killed: list[TaskRecord] = []        # killed by a user-space killer, in order
        self._records: list[VictimRecord] = []         # every kill's record, in order (the result's)
        self._holding: list[TaskRecord] = []           # the victims that may still hold their memory
        self._victim_of_mm: dict[int, TaskRecord] = {}  # id(mm) -> the first victim using it
        self._scan: OomScan | None = None              # every task as the OOM killer scans it
        self.pressure: StallAccounting | None = None   # the run's PSI, fed from time 0
        self._swap_bound = [0] * len(self.tasks)       # per task, at least its mm's swap entries (OomScan)
        self.verdict: Verdict | None = None
        self.first_oom_at: float | None = None
        self.resolved_at: float | None = None
        self.lag_ms = 0.0                              # the worst lateness seen (real ms), anyone's
        self._began = 0.0                              # time.monotonic() when execute() began
        self.ready_real_s: float | None = None         # real s from then until every worker was ready
        self.verdict_real_s: float | None = None       # ... until the verdict (the run loop's end)
        self._held = (0.0, 0.0)                        # the clock's holds for late sleepers (real s)
        self._latest_at = 0.0                          # the time of the latest thing a task reported
        self._lag_lock = threading.Lock()
        self._events_fd = -1
        self._forkserver: ForkServer | None = None
        self._forkserver_done = False                  # every worker made and reported
        self._buf = b""
        self._by_pid: dict[int, TaskRecord] = {}
        self._unready = len(self.tasks)                # tasks not yet faulted in (READY)
        self._unresolved: set[int] = set()             # see _track
        self._in_exit: set[int] = set()
        for t in self.tasks:
            self._track(t)
        # this batch's: index -> (pages, where, the memcg over its limit, at, the stall's time.monotonic())
        self._oom_requests: dict[int, tuple[int, str, int, float, float | None]] = {}
        # What each event kind does: a new kind is one entry here (and one in protocol.Event).
        self._handlers = {
            Event.READY: self._on_ready,
            Event.FAULT: self._on_fault,
            Event.INJECT: self._on_inject,
            Event.SHM: self._on_shm,
            Event.STATE: self._on_state,
            Event.ALLOC_STALL: self._on_alloc_stall,
            Event.OOM: self._on_oom_request,
            Event.ALLOC_OK: self._on_alloc_ok,
            Event.STEPS_DONE: self._on_steps_done,
            Event.EXITING: self._on_exiting,
            Event.HANDOVER: self._traced,
            Event.OOM_SKIP: self._on_exit_mmap_oom_skip,
            Event.EXIT_MMAP_START: self._traced,
            Event.EXIT_MMAP_DONE: self._on_exit_mmap_done,
            Event.EXITED: lambda t, msg, at: self._on_exit(t, at),
            Event.LATE: self._on_late,
            Event.MMAP_LOCK: self._on_mmap_lock,
            Event.MMPUT_WAIT: self._on_mmput_wait,
            Event.MM_PIN: self._on_mm_pin,
            Event.KILL: self._on_user_kill,
            Event.MRELEASE: self._on_mrelease,
            Event.DAEMON: self._on_daemon_log,
            Event.SLEEP: lambda t, msg, at: None,      # for PSI only (see _dispatch)
            Event.TOUCH: self._on_touch,
        }
        assert set(self._handlers) == set(Event), "every event kind needs a handler"

    # -- set-up -------------------------------------------------------------
    def needs(self) -> dict[str, int]:
        """What the run will take from the machine, in bytes and file descriptors."""
        return machine.needs(self.scenario)

    def check_room(self) -> None:
        """Refuse to start, in one line, if the machine cannot hold the run (EnvironmentProblem)."""
        machine.check_room(self.scenario)

    def _create(self) -> None:
        total = round(self.scenario.memory_mb * PAGES_PER_MB)
        self.zone = self.resources.create_zone({
            "supervisor_pid": os.getpid(), "supervisor_ctime": psutil.Process().create_time(),
            "speed": self.speed, "total_pages": total, "scenario": self.scenario.name,
            "policy": self.policy.name, "swap_pages": round(self.scenario.swap_mb * PAGES_PER_MB),
            "memcgs": [(m.name, round(m.limit_mb * PAGES_PER_MB), self.scenario.memcg_index(m.parent), m.oom_group)
                       for m in self.scenario.memcgs],
            "tasks": [self.scenario.memcg_index(t.spec.memcg) for t in self.tasks],
            "objects": [(o.kind, self.scenario.memcg_index(o.memcg), o.pages, o.dirty_pages, o.name)
                        for o in self.scenario.objects]})
        self.resources.create_start_and_locks(self.scenario.lock_names)
        self.objects = RunObjects(self.scenario, self.zone)
        for k, o in enumerate(self.scenario.objects):
            self._check_signals()
            self.objects.attach(k, self.resources.create_object(k, o.pages))
        for t in self.tasks:
            self._check_signals()
            if t.owner is None:
                layout, t.initial_pages, t.grow_vma = _layout(t.spec, total)
            else:                             # its segment holds only its task fields
                layout, t.initial_pages, t.grow_vma = MmLayout(()), (), _layout(t.owner.spec, total)[2]
            t.own, t.mmap_sem, t.oom_reply = self.resources.create_task(t.index, layout,
                                                                         f"the mmap_sem of {t.name}")
            t.mm = t.own
            t.own.oom_score_adj = t.spec.oom_score_adj
            t.own.mmu_notifier = MMU_NOTIFIERS[t.spec.mmu_notifier]
            t.own.memcg = self.scenario.memcg_index(t.spec.memcg)
            t.own.comm = t.name
            t.own.sigterm_ms = {"default": SIGTERM_DEFAULT, "ignore": SIGTERM_IGNORE}.get(t.spec.sigterm,
                                                                                         t.spec.sigterm)
            if t.owner is not None:
                t.own.shares_mm = 1 + t.owner.index
                t.mm, t.mmap_sem = t.owner.mm, t.owner.mmap_sem
                with t.mm.guard():            # copy_mm(CLONE_VM): mmget, one more user
                    for name in ("mm_users", "mm_tasks"):
                        MM_HEADER.set(t.mm.map, name, MM_HEADER.get(t.mm.map, name) + 1)

    def _worker_spec(self, t: TaskRecord, index: dict[str, int]) -> WorkerSpec:
        return WorkerSpec(
            speed=self.speed, jiffy_s=JIFFY_S, locks=tuple(self.scenario.lock_names),
            initial_pages=t.initial_pages, grow_vma=t.grow_vma,
            pgtables_pages=0 if t.owner else round(t.spec.pgtables_mb * PAGES_PER_MB),
            others={s.task: self.tasks[index[s.task]].mm_index for s in t.spec.steps if s.task},
            mm_index=t.mm_index, mm_shared=len(t.users) > 1,
            exit_unmap_ms_per_mb=t.spec.exit_unmap_ms_per_mb,
            exit_free_pgtables_ms=t.spec.exit_free_pgtables_ms,
            exit_mmap=self.policy.EXIT_MMAP, steps=t.spec.steps)

    def _start_forkserver(self) -> None:
        """The run's event FIFO, then the fork server's template (its interpreter starts
        while the run's objects are made)."""
        self._events_fd, wfd = self.resources.open_events()
        self._forkserver = ForkServer(self.run_id, wfd)

    def _spawn(self) -> None:
        """One worker per task, cloned by the fork server; each a child of ours."""
        index = {t.name: t.index for t in self.tasks}
        requests = [(t.index, self._worker_spec(t, index).to_line()) for t in self.tasks]

        def made(i: int, w: Worker) -> None:
            t = self.tasks[i]
            t.proc = w
            t.own.pid = w.pid
            self._by_pid[w.pid] = t
        try:
            self._forkserver.spawn(requests, made, self._check_signals)
        except ForkServerDied as e:
            raise RunFault(str(e)) from None
        self._forkserver.close()
        self._forkserver_done = True
        self.resources.close_events_write_end()

    def _check_signals(self, starting: bool = True) -> None:
        """A safe point: end the run if a terminating signal came. While starting, a
        held run's Ctrl-C interrupts too: there is no verdict to stop at yet."""
        if starting and self.signals.stop_requested and self.signals.pending is None:
            self.signals.pending = signal.SIGINT
        if self.signals.pending is not None:
            raise _Interrupted(self.signals.pending)

    def trace(self, ev: str, t: TaskRecord | None = None, at: float | None = None, **fields) -> None:
        if self.tracer is not None:
            self.tracer.emit(ev, t.pid if t else 0, t.name if t else "", at, **fields)

    def _wait_ready(self, sel) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        starting = {Event.READY: self._on_ready, Event.FAULT: self._on_fault}
        while self._unready:
            self._check_signals()
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunFault("workers did not start within %gs" % READY_TIMEOUT_S)
            for key, _ in sel.select(left):
                if key.data == "signal":
                    self.signals.drain()
                elif key.data == "events":
                    self._dispatch(starting)
                else:
                    sel.unregister(key.fileobj)
                    self._dispatch(starting)              # its last words come first
                    self._on_death(key.data, starting=True)
                    if self.verdict == Verdict.ERROR:
                        return

    # -- events ---------------------------------------------------------------
    def _read_events(self) -> list[Message]:
        while True:
            try:
                chunk = os.read(self._events_fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        try:
            return [decode(line) for line in lines if line]
        except ProtocolError as e:
            raise RunFault(f"the run's event FIFO: {e}") from None

    def _dispatch(self, handlers: dict | None = None) -> None:
        """Read what the FIFO holds and hand each message to its kind's handler (those
        of ``handlers`` only, if given: while starting, only READY and FAULT matter)."""
        handlers = self._handlers if handlers is None else handlers
        for msg in self._read_events():
            handler = handlers.get(msg.kind)
            if handler is None:
                continue
            if msg.kind in (Event.INJECT, Event.DAEMON):
                t = self.tasks[msg.index] if 0 <= msg.index < len(self.tasks) else None
            elif 0 <= msg.index < len(self.tasks):
                t = self.tasks[msg.index]
            else:
                raise RunFault(f"the run's event FIFO: {msg.kind} for task {msg.index}, which there is not")
            if self.pressure is not None and t is not None and msg.kind not in _NOT_THE_TASKS:
                self.pressure.on_event(t.index, msg.kind, msg.at, msg.fields)   # first: a handler may plan a stall
            handler(t, msg, msg.at)
            if msg.kind not in _NOT_THE_TASKS:
                self._latest_at = max(self._latest_at, msg.at)

    def _traced(self, t: TaskRecord, msg: Message, at: float) -> None:
        self.trace(msg.kind.value, t, at, **msg.fields)

    def _on_mmput_wait(self, t: TaskRecord, msg: Message, at: float) -> None:
        """The task is done with do_exit but for its mm, which other tasks still hold.

        Held by readers and pins only (a /proc/PID/mem reader, an mm_pin: other processes
        with a reference), the kernel's task leaves the task list now (release_task; a
        memcg's scan no longer finds it) and exit_mmap runs in whoever lets go of the mm
        last: the OOM killer no longer sees it, not even as a victim to wait for (the reaper
        still may reap its mm: it holds it by mmgrab). Linux 6.18 does this (host mode,
        tests/scenarios/read_hold.toml). Held or awaited for write, it stays: only a
        thread of the task's own can take its mmap_sem for write (mmap, mbind), and a
        process does not finish exiting before its threads."""
        self._traced(t, msg, at)
        st = t.mmap_sem.state(check_alive=False)
        t.detached = not st.writer and not any(m == WRITE for _, m in st.queued)

    def _on_ready(self, t: TaskRecord, msg: Message, at: float) -> None:
        if not t.ready:
            t.ready = True
            self._unready -= 1

    def _track(self, t: TaskRecord) -> None:
        """Keep the sets the verdict reads up to date with ``t``'s flags (so that no check of
        the verdict scans every task): the tasks that keep the run from being resolved
        (steps not done, or an allocation stalled), and those exiting, not yet exited."""
        if (t.spec.steps and not (t.steps_done or t.exited)) or (t.stalled and not t.exited):
            self._unresolved.add(t.index)
        else:
            self._unresolved.discard(t.index)
        if t.exiting and not t.exited:
            self._in_exit.add(t.index)
        else:
            self._in_exit.discard(t.index)

    def _on_fault(self, t: TaskRecord, msg: Message, at: float) -> None:
        t.fault = (msg["what"], msg["environment"])

    def _on_state(self, t: TaskRecord, msg: Message, at: float) -> None:
        self.trace("task_state", t, at, state=msg["state"])

    def _on_alloc_stall(self, t: TaskRecord, msg: Message, at: float) -> None:
        self._traced(t, msg, at)
        t.stalled = True
        self._track(t)

    def _on_oom_request(self, t: TaskRecord, msg: Message, at: float) -> None:
        # one at a time: the task waits
        self._oom_requests[t.index] = (msg["pages"], msg["where"], msg["memcg"], at, msg.get("stall_monotonic"))

    def _on_alloc_ok(self, t: TaskRecord, msg: Message, at: float) -> None:
        self._traced(t, msg, at)
        t.stalled = False
        self._track(t)
        self._log_reclaim(t, at, "")

    def _on_steps_done(self, t: TaskRecord, msg: Message, at: float) -> None:
        t.steps_done = True
        self._track(t)

    def _on_exiting(self, t: TaskRecord, msg: Message, at: float) -> None:
        t.exiting = True
        self._track(t)

    def _on_late(self, t: TaskRecord, msg: Message, at: float) -> None:
        self.note_late(msg["late_ms"], msg["where"], t, at)

    def note_late(self, late: float, where: str, t: TaskRecord | None = None, at: float | None = None) -> None:
        """Something due at emulated time ``at`` happened ``late`` real ms after it (the
        run lags past tolerance_ms(speed)): keep the worst, trace what lagged."""
        with self._lag_lock:                           # the reaper's thread notes too
            self.lag_ms = max(self.lag_ms, late)
        if late > tolerance_ms(self.speed):
            self.trace("lag", t, at, late_ms=round(late, 3), where=where)

    def _on_exit_mmap_oom_skip(self, t: TaskRecord, msg: Message, at: float) -> None:
        self._on_oom_skip(t, msg["by"], at, where=msg.get("where"))

    def _mm_victim(self, t: TaskRecord) -> TaskRecord | None:
        """The OOM victim whose mm ``t`` uses (exit_mmap runs in whichever user is last): the
        first killed, if more than one of its users was."""
        return self._victim_of_mm.get(id(t.mm))

    def _on_exit_mmap_done(self, t: TaskRecord, msg: Message, at: float) -> None:
        self._traced(t, msg, at)
        v = self._mm_victim(t)
        if v is not None:
            v.victim.exit_freed_kb = msg["freed_kb"]
            self.log.printk("oomemu: pid %d (%s) exit_mmap freed %dkB" % (t.pid, t.name, msg["freed_kb"]), at)

    def _on_mm_pin(self, t: TaskRecord, msg: Message, at: float) -> None:
        """An mm_pin step: ``mm_pin`` (mmget_not_zero, ``success``) and ``mm_unpin`` (mmput)."""
        what, index = msg.get("what"), msg.get("mm", -1)
        if what not in ("mmget_not_zero", "mmput") or not 0 <= index < len(self.tasks):
            raise RunFault(f"the run's event FIFO: mm_pin {what!r} on task {index}")
        fields = {"success": msg.get("success")} if what == "mmget_not_zero" else {}
        self.trace("mm_pin" if what == "mmget_not_zero" else "mm_unpin", t, at, mm=self.tasks[index].name,
                   **fields)

    def _on_mmap_lock(self, t: TaskRecord, msg: Message, at: float) -> None:
        """The mmap_lock tracepoints: ``pid``/``task`` the locker, ``mm`` whose mmap_sem."""
        fields = dict(msg.fields)
        what, index = fields.pop("what", ""), fields.pop("mm", -1)
        if what not in ("start_locking", "acquire_returned", "released") or not 0 <= index < len(self.tasks):
            raise RunFault(f"the run's event FIFO: mmap_lock {what!r} on task {index}")
        self.trace(f"mmap_lock_{what}", t, at, mm=self.tasks[index].name, **fields)

    def _on_inject(self, t: TaskRecord | None, msg: Message, at: float) -> None:
        """A note from ``oomemu inject``: log it, trace it."""
        if t is not None and msg.get("action") == "crash":
            t.crash_expected = True
        self.log.printk("oomemu: inject: %s" % msg["what"], at)
        self.trace("inject", t, at, what=msg["what"], by=msg.get("by", 0), action=msg.get("action", ""))

    # -- user space: a daemon's (or ``oomemu kill``'s) kills, process_mrelease, log -------
    def _on_user_kill(self, t: TaskRecord, msg: Message, at: float) -> None:
        """A user-space killer is about to signal ``t`` (runtime/door.send_kill): the kill
        counts if it is the task's first; it is no OOM victim for that (no MMF_OOM_VICTIM),
        but it is dying now (a fatal signal pending)."""
        sig, who = _printable(msg.get("sig")), "%s[%s]" % (_printable(msg.get("comm")), msg.get("by"))
        first = not (t.sigkilled or t.victim is not None or t.killed is not None or t.exiting or t.exited
                     or t.crashed)
        answer = t.spec.sigterm if sig == "SIGTERM" else "default"
        if answer == "default":                       # fatal: SIGKILL for the whole group
            t.sigkilled = True
        note = ("" if first else " (dying already)") if answer != "ignore" else " (it ignores SIGTERM)"
        if isinstance(answer, float):
            note += " (its handler exits after %g ms)" % answer
        self.trace("user_kill", t, at, sig=sig, by=msg.get("by"), comm=_printable(msg.get("comm")),
                   answer=str(answer))
        if (who, sig) not in t.signalled:             # a signal sent again (oomd's rounds): traced only
            t.signalled.add((who, sig))
            self.log.printk("oomemu: %s sent %s to pid %d (%s)%s" % (who, sig, t.pid, t.name, note), at)
        if first and answer != "ignore":
            self.kills += 1
            t.killed = VictimRecord(t.name, t.pid, round(at, 6), memcg=self.zone.memcg_tree.path(t.mm.memcg),
                                    killed_by=who, signal=sig, oom_victim=False)
            self.user_killed.append(t)
            self._records.append(t.killed)

    def _on_mrelease(self, t: TaskRecord, msg: Message, at: float) -> None:
        """A process_mrelease() of ``t``'s mm, done in its caller's context."""
        who = "%s[%s]" % (_printable(msg.get("comm")), msg.get("by"))
        result, kb = _printable(msg.get("result")), msg.get("freed_kb", 0)
        if not isinstance(kb, int) or kb < 0:
            raise RunFault(f"the run's event FIFO: mrelease freed_kb {kb!r}")
        self.trace("process_mrelease", t, at, by=msg.get("by"), comm=_printable(msg.get("comm")),
                   result=result or "0", freed_kb=kb)
        self.log.printk("oomemu: %s process_mrelease(pid %d (%s)): %s" % (
            who, t.pid, t.name, "-%s" % result if result else "reaped %dkB" % kb), at)
        record = t.killed or t.victim
        if record is not None:
            record.mreleased_kb += kb

    def _on_daemon_log(self, t: TaskRecord | None, msg: Message, at: float) -> None:
        """A line of the user-space daemon's log, as its journal would show it."""
        who = "%s[%s]" % (_printable(msg.get("comm")), msg.get("by"))
        line = _printable(msg.get("line"), keep_spaces=True)
        self.log.printk("%s: %s" % (who, line), at)
        self.trace("daemon_log", t, at, comm=_printable(msg.get("comm")), line=line)

    def _mark_dying_victim(self, t: TaskRecord, at: float) -> None:
        """oom_kill_process() chose a task that is dying already (task_will_free_mem: a
        user-space killer's signal is pending): mark_oom_victim and queue_oom_reaper,
        quietly; no new kill, no report (the kernel prints nothing either)."""
        t.mm.set_bit(MMF_OOM_VICTIM)
        t.victim = t.killed or VictimRecord(t.name, t.pid, round(at, 6),
                                            memcg=self.zone.memcg_tree.path(t.mm.memcg))
        t.victim.oom_victim = True
        self.victims.append(t)
        self._victim_of_mm.setdefault(id(t.mm), t)
        self._holding.append(t)
        if self._scan is not None:
            self._scan.retire(t.index)
        self.trace("mark_victim", t, at, dying=True)
        self.trace("wake_reaper", t, at)
        self.reaper.wake_oom_reaper(t, at)

    def _on_oom_skip(self, t: TaskRecord, by: str, at: float | None = None, where: str | None = None) -> None:
        self.trace("oom_skip_set", t, at, by=by, **({"where": where} if where else {}))
        t = self._mm_victim(t) or t            # exit_mmap's may come from a sharer of the victim's mm
        if t.victim is not None and t.victim.oom_skip_at_s is None:
            t.victim.oom_skip_at_s = round(self.clock.now() if at is None else at, 6)
            t.victim.oom_skip_by = by
        if by == "exit_mmap" and t.victim is not None and self.reaper is not None:
            self.reaper.victim_exited(t)

    def _on_exit(self, t: TaskRecord, at: float) -> None:
        if t.exited:
            return
        t.exited = True
        t.stalled = False
        self._track(t)
        if self.pressure is not None:
            self.pressure.exit(t.index, at)
        self.trace("exited", t, at, crashed=t.crashed)
        if self.objects is not None:
            self._release_objects(t, at)
        if (record := t.victim or t.killed) is not None:
            record.exited_at_s = round(at, 6)

    def _on_death(self, t: TaskRecord, starting: bool = False) -> None:
        """The pidfd says the process is gone; reap the zombie, and say why it died
        if that was not its emulated exit."""
        code = t.proc.wait()
        if code is None:                           # the pidfd said so: it cannot be running
            raise RunFault(f"task {t.name} (pid {t.pid}): its pidfd says it exited, waitid says not")
        if t.exited:
            return
        how = f"signal {signals.name(-code)}" if code < 0 else f"exit code {code}"
        if t.crash_expected and code == -signal.SIGKILL:
            # ``inject crash``: like a POSIX semaphore, whatever it held stays held; its
            # mm stays too, with the memory in it, until the reaper frees it or the run ends.
            t.crashed = True
            self.log.printk("oomemu: task %d (%s) died without exiting (signal %d); its mm and what it "
                            "held stay" % (t.pid, t.name, -code))
            release_slot(self.zone, t.index)      # the clock neither stays frozen nor waits for it
            self._dead_mmap_sem_holder(t)
            self._repair(t)
            self._on_exit(t, self.clock.now())
            return
        # Died some other way: a fault (its last words say which), or the machine.
        t.crashed = True
        when = "while starting" if starting else "during the run"
        if t.fault is not None:
            what, env = t.fault
        elif code == -signal.SIGBUS:
            what, env = f"SIGBUS: {names.SHM_DIR} ran out of room ({machine.shm_free_mb():.0f} MB free)", True
        elif code == -signal.SIGKILL:
            what, env = ("a real SIGKILL oomemu did not send (the machine's own OOM killer? "
                         "see dmesg; or someone else)"), True
        else:
            what, env = how, False
        self.log.printk("oomemu: task %d (%s) died %s: %s" % (t.pid, t.name, when, what))
        release_slot(self.zone, t.index)
        self._dead_mmap_sem_holder(t)
        self._repair(t)
        self._on_exit(t, self.clock.now())
        self._fail(f"task {t.name} (pid {t.pid}) died {when}: {what}", env)

    def _dead_mmap_sem_holder(self, t: TaskRecord) -> None:
        """One line for each mmap_sem the dead task holds or is queued on: it stays so
        (a holder keeps what it held; a waiter keeps its place, and gets it in its turn)."""
        for other in self.tasks:
            if other.mmap_sem is None or other.owner is not None:
                continue                      # a sharer's mmap_sem is its owner's
            st = other.mmap_sem.state(check_alive=False)
            held, waits = st.holds(t.pid), st.waits(t.pid)
            whose = "its own mmap_sem" if other is t else "the mmap_sem of %d (%s)" % (other.pid, other.name)
            if held:
                self.log.printk("oomemu: task %d (%s) died holding %s for %s: it stays held"
                                % (t.pid, t.name, whose, held))
            elif waits:
                self.log.printk("oomemu: task %d (%s) died queued for %s on %s: it keeps its place"
                                % (t.pid, t.name, waits, whose))

    def _fail(self, why: str, environment: bool) -> None:
        """End the run with verdict ERROR (the first cause wins)."""
        if self.verdict != Verdict.ERROR:
            self.verdict, self.error, self.error_is_environment = Verdict.ERROR, why, environment

    def _repair(self, t: TaskRecord) -> None:
        """A worker died: finish or undo what its journal says it was doing, so that
        its charge, its mm's counts and its segment agree again."""
        shared, op = len(t.users) > 1, t.mm.journal()[0]
        with self.oom_lock, self._frozen():      # the reaper works on mms under oom_lock
            try:
                if shared and op == J_CHARGE:
                    # The mm's other users fault under its guard (Mm.shared_fault): under
                    # it, the mm's charge is stable and only a dead faulter's is not counted.
                    with t.mm.guard():
                        charged, complaint = t.mm.repair(self.zone.charged_by(t.mm_index))
                        self.zone.set_charged(t.mm_index, charged)
                elif shared and op != J_ZAP:
                    complaint = None          # nothing to finish (J_ZAP: only the last user writes it)
                else:
                    charged, complaint = t.mm.repair(self.zone.charged_by(t.mm_index))
                    self.zone.set_charged(t.mm_index, charged)
            except OSError as e:
                complaint = f"repair failed: {e}"
        if self.zone.swap()[0] and op == J_ZAP:  # a zap it finished freed swap entries: count them again
            self.zone.set_swap_used(sum(u.mm.swapents() for u in self.tasks if u.owner is None and u.mm))
        if complaint:
            self._fail(f"accounting: task {t.name}: {complaint} (a fault of oomemu's: please report it)",
                       False)

    # -- the OOM killer: the kernel decides, the supervisor does ------------------
    def _view(self, t: TaskRecord) -> TaskView:
        """The task as the OOM killer sees it; a process sharing an mm (CLONE_VM) has the
        mm's badness. A victim's mm stays while any of its users holds it (oom_mm)."""
        mm = t.mm
        # An exiting task has let go of its mm (exit_mm, early in do_exit): find_lock_task_mm
        # finds none, so the scan passes it by; a victim's oom_mm still aborts the scan.
        exiting = t.victim is None and t.exiting
        c = mm.counters()
        return TaskView(pid=t.pid, name=t.name, oom_score_adj=mm.oom_score_adj, memcg=mm.memcg,
                        rss_pages=c[MM_FILEPAGES] + c[MM_ANONPAGES] + c[MM_SHMEMPAGES],
                        pgtables_pages=mm.pgtables_pages, swapents=c[MM_SWAPENTS],
                        has_mm=(t.oom_mm_live if t.victim is not None else (t.has_mm and not exiting))
                        and not t.detached,
                        oom_victim=t.victim is not None, mmf_oom_skip=mm.test_bit(MMF_OOM_SKIP),
                        mm_id=t.users[0].pid if len(t.users) > 1 else 0,
                        exiting=t.exiting or t.sigkilled or t.exited)

    def _frozen(self):
        """The run clock stands still while the body works (after time 0; see RunClock)."""
        return self.clock.frozen() if isinstance(self.clock, RunClock) else contextlib.nullcontext()

    # -- reclaim: page cache goes before anyone is killed ---------------------------
    def try_to_free_pages(self, t: TaskRecord, pages: int, where: str, at: float,
                          over_limit: int = 0) -> float | None:
        """Direct reclaim (try_to_free_pages, or try_to_free_mem_cgroup_pages on the memcg
        ``over_limit`` at its limit: its subtree's page cache) for ``t``'s allocation of
        ``pages`` that did not fit, at emulated time ``at`` (``t`` holds the run clock there).
        Returns when ``t`` should try again: at once (reclaim made room, or some progress),
        later (reclaim's own time, reclaim_ms_per_mb; the writes of what it swapped out;
        or it waits on writeback, throttled), or None: reclaim can make no room, call
        the OOM killer. Clean page cache goes first, then anon to swap, then dirty page
        cache once written back."""
        memcg = over_limit if where == MEMCG else None
        if memcg is None:
            need = pages - self.zone.free_pages()
        else:
            limit, usage, _ = self.zone.memcg(memcg)
            need = usage + pages - limit
        if need <= 0:
            return at                                 # room meanwhile: try again now
        self._advance_writeback(at)
        below = None if memcg is None else frozenset(self.zone.memcg_tree.subtree(memcg))
        in_domain = (lambda m: True) if below is None else (lambda m: m in below)
        views = self.objects.views(self.tasks, in_domain)
        kind = "direct" if memcg is None else "memcg"
        self.trace(f"mm_vmscan_{kind}_reclaim_begin", t, at, order=0, nr_to_reclaim=need)
        got = sum(self.objects.shrink(k, n, self.tasks) for k, n in shrink_page_cache(views, need))
        self.trace(f"mm_vmscan_{kind}_reclaim_end", t, at, nr_reclaimed=got)
        t.reclaimed += got
        if got > 0:                                   # progress: the allocation tries again, once
            until = at + self.scenario.reclaim_ms_per_mb * got / PAGES_PER_MB / 1000   # reclaim is done
            if until > at:
                self._stall(t, at, [Segment(until, "reclaim")])
            return until
        swapped = self._swap_out(t, need, at, in_domain)
        if swapped:                                   # progress, once the writes to swap are done
            t.swapped_out += swapped
            until = at + swapped / (self.scenario.swap_mb_per_s * PAGES_PER_MB)
            self._stall(t, at, [Segment(until, "reclaim", asleep=True)])
            return until
        _, dirty = reclaimable(self.objects.views(self.tasks, in_domain))
        if dirty <= 0:
            self._log_reclaim(t, at, "; not enough: out_of_memory")
            return None
        if self.writeback.wake(at):
            total = sum(d for _, d in self.objects.dirty())
            self.trace("writeback_start", t, at, nr_pages=total, reason="vmscan")
            self.log.printk("oomemu: reclaim wakes the flusher threads: %dkB of dirty page cache to write "
                            "back at %g MB/s" % (total * PAGE_SIZE // 1024, self.scenario.writeback_mb_per_s), at)
        until = throttle_until(at, self.writeback.eta(min(need, dirty), at), JIFFY_S)
        self.trace("mm_vmscan_throttled", t, at, usec_timeout=round(THROTTLE_WRITEBACK_S * 1e6),
                   usec_delayed=round((until - at) * 1e6), reason="VMSCAN_THROTTLE_WRITEBACK")
        t.throttled_s += until - at
        self._stall(t, at, [Segment(until, "writeback", asleep=True)])   # D state, in a memstall
        return until

    def _swap_out(self, t: TaskRecord, need: int, at: float, in_domain, requester: bool = True) -> int:
        """Reclaim, for ``t``, swaps out up to ``need`` anon pages of the tasks it may
        (:meth:`_swappable`; ``t``'s own only if ``requester``), as ``vmscan.shrink_anon``
        chooses, while the swap device has room: the pages leave their mm's segment and
        the zone, and count as its swap entries. Returns the pages swapped out."""
        total, used = self.zone.swap()
        if need <= 0 or used >= total:
            return 0
        views = [AnonView(c.index, v.index, v.nr_pages, c is t)
                 for c in self.tasks if (c is not t or requester) and self._swappable(c, t, at, in_domain)
                 for v in c.mm.vmas() if v.kind == "anon" and v.object < 0 and not v.mlocked and v.nr_pages]
        got = 0
        for i, vi, pages in shrink_anon(views, need, total - used):
            c = self.tasks[i]
            n = self.zone.charge_swap(pages)
            k = c.mm.swap_out(vi, n, lambda p: self.zone.uncharge(c.mm_index, p))
            self.zone.uncharge_swap(n - k)
            if k:
                got += k
                self._swap_bound[i] += k
                self.trace("swap_out", c, at, nr_pages=k, vma=vi, requester=t.name)
        return got

    def _swappable(self, c: TaskRecord, requester: TaskRecord, at: float, in_domain) -> bool:
        """May reclaim, for ``requester`` at ``at``, swap out ``c``'s anon pages now? Only an mm
        that one process uses (no other may be faulting in it), of a task not dying, in the
        OOM domain, and not running: the requester itself (it waits for us), or a task
        that stays asleep past ``at`` (the requester holds the run clock there) or idles.
        A fault in it that races with us starts again (Mm.fault_in)."""
        if c.owner is not None or len(c.users) > 1 or c.victim is not None or c.exiting or c.exited \
                or c.crashed or c.sigkilled or c.detached or not in_domain(c.mm.memcg):
            return False
        return c is requester or self.pressure is None or self.pressure.quiet_until_after(c.index, at)

    def _swap_in(self, t: TaskRecord, vi: int, want: int, at: float) -> tuple[int, int, int]:
        """A touch of ``t``'s anon VMA ``vi`` found pages of its first ``want`` on swap: bring
        back what fits (after reclaim: page cache, then others' anon to swap). Returns
        (page cache reclaimed, pages swapped out for it, pages swapped in)."""
        vma = t.mm.vma(vi)
        n = min(vma.swapped, max(0, min(want, vma.nr_pages + vma.swapped) - vma.nr_pages))
        if n <= 0:
            return 0, 0, 0
        memcg = t.mm.memcg
        got = swapped = 0
        if (short := self.zone.room(n, memcg)) is not None:
            got, swapped = self._reclaim_for(t, at, short, n, exclude=-1)
        fit = self._fits(n, memcg)
        if not fit or self.zone.try_charge(t.mm_index, fit) is not None:
            return got, swapped, 0
        back = t.mm.swap_in(vi, fit)
        self.zone.uncharge(t.mm_index, fit - back)
        self.zone.uncharge_swap(back)
        self._swap_bound[t.index] = max(0, self._swap_bound[t.index] - back)
        return got, swapped, back

    def _advance_writeback(self, now: float) -> None:
        """The flusher threads' progress up to ``now``: written pages become clean."""
        written = self.writeback.advance(self.objects.dirty(), now)
        for k, n in written:
            self.objects.cleaned(k, n)
        if written:
            self.trace("writeback_written", at=now, nr_pages=sum(n for _, n in written))
        if written and not self.writeback.active:
            self.log.printk("oomemu: writeback done: no dirty page cache left", now)

    def _log_reclaim(self, t: TaskRecord, at: float, then: str) -> None:
        """One line for what direct reclaim did for ``t``'s allocation (if anything)."""
        if t.reclaimed or t.throttled_s or t.swapped_out:
            waited = " (%.0f ms of it waiting on writeback)" % (t.throttled_s * 1000) if t.throttled_s else ""
            swapped = " and swapped out %dkB of anon" % (t.swapped_out * PAGE_SIZE // 1024) if t.swapped_out else ""
            self.log.printk("oomemu: pid %d (%s) direct reclaim freed %dkB of page cache%s%s%s"
                            % (t.pid, t.name, t.reclaimed * PAGE_SIZE // 1024, swapped, waited, then), at)
        t.reclaimed, t.throttled_s, t.swapped_out = 0, 0.0, 0

    def _on_shm(self, t: TaskRecord, msg: Message, at: float) -> None:
        """A task's shm_unlink or shm_truncate on a named shmem object (it waits for us)."""
        op, name = msg.get("op"), msg.get("name")
        try:
            k = self.scenario.object_index(name)
        except ValueError:
            raise RunFault(f"the run's event FIFO: {op} of {name!r}, which no VMA maps") from None
        if op == "shm_truncate":
            freed = self.objects.free(k, self.tasks)
        elif op == "shm_unlink":
            self.objects.unlink(k)
            freed = self.objects.release_if_unused(k, self.tasks)
        else:
            raise RunFault(f"the run's event FIFO: shm op {op!r}")
        self.trace(op, t, at, object=name, freed_kb=freed * PAGE_SIZE // 1024)
        self.log.printk("oomemu: pid %d (%s) %s %s: freed %dkB%s"
                        % (t.pid, t.name, op, name, freed * PAGE_SIZE // 1024,
                           "" if freed or op == "shm_truncate" else " (still mapped: it goes with its last mapper)"),
                        at)
        t.oom_reply.release()

    def _on_touch(self, t: TaskRecord, msg: Message, at: float) -> None:
        """A touch step found pages of an anon VMA on swap: they are swapped in, at
        ``swap_mb_per_s`` (a memstall, reason swapin), as much as fits after reclaim
        (:meth:`_swap_in`). Or it found pages of a file VMA gone (reclaim took them): they refault.
        Pages of the object still resident (another mapper's) are mapped at no cost; the
        rest are read back from the file, at ``refault_ms_per_mb`` (a memstall, reason
        refault, asleep in iowait), and charged to the page cache again, which may need
        reclaim first (thrashing: it takes other page cache, not this file's, whose pages
        were just used). What does not fit after reclaim stays out: a touch calls no OOM
        killer here (the kernel's fault would: pagefault_out_of_memory). The task waits
        on oom_reply, then until its oom_retry_at (the refault's end)."""
        vi, want = msg.get("vma", -1), msg.get("pages", 0)
        objects = (t.owner or t).spec.vma_objects
        nr_vmas = len(t.mm.vmas())
        if not (isinstance(vi, int) and 0 <= vi < nr_vmas and isinstance(want, int)):
            raise RunFault(f"the run's event FIFO: touch of VMA {vi!r} of task {t.name}, which it has not")
        k = objects[vi] if vi < len(objects) else -1
        vma = t.mm.vma(vi)
        want = max(0, min(want, vma.capacity))
        if vma.kind == "anon":
            got, swapped, back = self._swap_in(t, vi, want, at)
            until, segments = self._reclaim_stall(at, got, swapped)
            if back:
                until += back / (self.scenario.swap_mb_per_s * PAGES_PER_MB)
                segments.append(Segment(until, "swapin", asleep=True, iowait=True))
            self.trace("swap_in", t, at, nr_pages=back, vma=vi, reclaimed=got, swapped_out=swapped,
                       usec_delayed=round((until - at) * 1e6))
        elif k >= 0 and self.scenario.objects[k].kind == "file":
            resident = self.zone.object_charged(k)
            refault = max(0, want - resident)
            got = swapped = brought = 0
            if refault:
                short = self.zone.room(refault, self.zone.object_field(k, "memcg"))
                if short is not None:
                    got, swapped = self._reclaim_for(t, at, short, refault, exclude=k)
                brought = self.objects.refault(k, self._fits(refault, self.zone.object_field(k, "memcg")))
            mapped = t.mm.map_more(vi, min(want, self.zone.object_charged(k)))
            until, segments = self._reclaim_stall(at, got, swapped)
            if brought:
                until += self.scenario.refault_ms_per_mb * brought / PAGES_PER_MB / 1000
                segments.append(Segment(until, "refault", asleep=True, iowait=True))
            self.trace("refault", t, at, object=k, nr_pages=brought, mapped=mapped, reclaimed=got,
                       swapped_out=swapped, left_out=refault - brought, usec_delayed=round((until - at) * 1e6))
        else:
            raise RunFault(f"the run's event FIFO: touch of VMA {vi} of task {t.name}, neither a file's nor anon")
        self._stall(t, at, segments)
        t.own.oom_retry_at = until
        t.oom_reply.release()

    def _reclaim_stall(self, at: float, got: int, swapped: int) -> tuple[float, list[Segment]]:
        """Reclaim's time for a touch: ``got`` pages of page cache at reclaim_ms_per_mb (the
        task runs), then ``swapped`` pages written to swap (it waits). (its end, segments)."""
        until, segments = at, []
        if got and self.scenario.reclaim_ms_per_mb:
            until += self.scenario.reclaim_ms_per_mb * got / PAGES_PER_MB / 1000
            segments.append(Segment(until, "reclaim"))
        if swapped:
            until += swapped / (self.scenario.swap_mb_per_s * PAGES_PER_MB)
            segments.append(Segment(until, "reclaim", asleep=True))
        return until, segments

    def _fits(self, pages: int, memcg: int) -> int:
        """The most of ``pages`` that the zone and ``memcg``'s limits hold now."""
        while pages > 0 and (short := self.zone.room(pages, memcg)) is not None:
            if short.where == MEMCG:
                limit, usage, _ = self.zone.memcg(short.memcg)
                pages = min(pages - 1, limit - usage)
            else:
                pages = min(pages - 1, self.zone.free_pages())
        return max(0, pages)

    def _reclaim_for(self, t: TaskRecord, at: float, short, pages: int, exclude: int) -> tuple[int, int]:
        """Reclaim clean page cache (not object ``exclude``'s), then others' anon to swap, for
        ``pages`` that are ``short`` (zone.Short) in the zone or a memcg, for ``t``'s touch.
        Returns (page cache pages taken, pages swapped out)."""
        memcg = short.memcg if short.where == MEMCG else None
        if memcg is None:
            need = pages - self.zone.free_pages()
            in_domain = lambda m: True                       # noqa: E731
        else:
            limit, usage, _ = self.zone.memcg(memcg)
            need = usage + pages - limit
            below = frozenset(self.zone.memcg_tree.subtree(memcg))
            in_domain = below.__contains__
        views = [v for v in self.objects.views(self.tasks, in_domain) if v.index != exclude]
        kind = "direct" if memcg is None else "memcg"
        self.trace(f"mm_vmscan_{kind}_reclaim_begin", t, at, order=0, nr_to_reclaim=need, refault=True)
        got = sum(self.objects.shrink(k, n, self.tasks) for k, n in shrink_page_cache(views, need))
        swapped = self._swap_out(t, need - got, at, in_domain, requester=False) if got < need else 0
        self.trace(f"mm_vmscan_{kind}_reclaim_end", t, at, nr_reclaimed=got + swapped, refault=True)
        return got, swapped

    def _release_objects(self, t: TaskRecord, at: float) -> None:
        """``t`` is gone: shmem objects it was the last to map go with it."""
        mm_owner = t.owner or t                   # the objects are its mm's, which its owner maps
        for k in sorted({k for k in mm_owner.spec.vma_objects if k >= 0}):
            freed = self.objects.release_if_unused(k, self.tasks)
            if freed:
                name = self.scenario.objects[k].name
                what = "shmem object %s" % name if name else "anonymous shmem of pid %d (%s)" % (t.pid, t.name)
                self.log.printk("oomemu: %s freed %dkB with its last mapper" % (what, freed * PAGE_SIZE // 1024), at)
                self.trace("shmem_freed", t, at, object=name, freed_kb=freed * PAGE_SIZE // 1024)

    def out_of_memory(self, requester: TaskRecord, pages: int, where: str, at: float,
                      over_limit: int = 0, stall_monotonic: float | None = None) -> None:
        """A failed allocation of ``requester``'s at emulated time ``at`` (for MEMCG: the charge
        failed at memcg ``over_limit``'s limit, mem_over_limit): takes oom_lock like
        __alloc_pages_may_oom, asks ``kernel.oom_kill.out_of_memory`` and carries out what
        it decides, now. The requester holds the run clock at ``at`` until the answer, so
        now is ``at`` (out_of_memory runs in its context, at once); if its hold was taken
        from it (``inject stop``, the watchdog), the difference is lag. ``stall_monotonic``: the
        time.monotonic() at which the requester's charge failed (the OOM round trip's start)."""
        with self.oom_lock:
            now = self.clock.now()
            if self.first_oom_at is None:
                self.first_oom_at = at
            self.note_late(late_ms(now, at, self.speed), "out_of_memory", requester, at)
            tree, memcg = self.zone.memcg_tree, None
            if where == MEMCG:
                limit, usage, _ = self.zone.memcg(over_limit)
                memcg = MemcgState(over_limit, tree.path(over_limit), limit, usage,
                                   frozenset(tree.subtree(over_limit)))
            exiting = requester.exited or requester.victim is not None or requester.sigkilled
            if exiting and len(requester.users) > 1:   # a user of its mm that is not dying keeps it
                exiting = task_will_free_mem(self._view(requester), [self._view(u) for u in requester.users])
            if self._scan is None:                          # the tasks' pids are known by now
                self._scan = OomScan(self.zone, self.tasks, self._view, self._swap_bound)
            decision = out_of_memory(
                self._view(requester), exiting, where,
                would_succeed=self.zone.room(pages, requester.mm.memcg) is None,
                victims=self._victim_views(None if memcg is None else memcg.members), tasks=self._scan,
                total_pages=self.zone.total_pages, memcg=memcg, tree=tree)
            self._carry_out(requester, decision, now, stall_monotonic)

    def _victim_views(self, members: frozenset[int] | None = None):
        """Views of the OOM victims that may still hold their memory, in the order they were
        killed; for a memcg OOM, of those in ``members`` (its subtree) only. One that no longer
        holds it (its mm gone, or MMF_OOM_SKIP: both for good) is dropped as it is read, so
        that an OOM does not read every victim of the run."""
        for v in list(self._holding):
            if members is not None and v.mm.memcg not in members:
                continue
            view = self._view(v)
            if not view.has_mm or view.mmf_oom_skip:
                self._holding.remove(v)
            yield view

    def _carry_out(self, requester: TaskRecord, decision: OomDecision, at: float,
                   stall_monotonic: float | None = None) -> None:
        if decision.action is OomAction.ABORT:
            v = decision.aborted_by
            if self._last_abort.get(requester.index) != v.pid:
                self._last_abort[requester.index] = v.pid
                self.trace("oom_abort", requester, at, victim=v.pid, victim_task=v.name)
            return
        if decision.action is OomAction.NOTHING:
            return
        self._last_abort.pop(requester.index, None)
        dying = decision.action is OomAction.KILL and self._dying(self._by_pid[decision.victim.pid])
        for line in () if dying else decision.lines:     # oom_kill_process: no dump_header for the dying
            self.log.printk(line, at)
        if decision.action is OomAction.PANIC:
            self.trace("panic", requester, at, reason=NO_KILLABLE)
            self.verdict = Verdict.PANIC
        elif decision.action is OomAction.KILL and self._dying(self._by_pid[decision.victim.pid]):
            self._mark_dying_victim(self._by_pid[decision.victim.pid], at)
        elif decision.action is OomAction.KILL:
            self.oom_kill_process(self._by_pid[decision.victim.pid], decision, requester, at, stall_monotonic)
            for line in decision.group_lines:            # mem_cgroup_print_oom_group
                self.log.printk(line, at)
            for member in decision.group:                # mem_cgroup_scan_tasks(oom_kill_memcg_member)
                self.oom_kill_process(self._by_pid[member.pid], decision, requester, at, stall_monotonic,
                                      group_member=True)

    def _dying(self, t: TaskRecord) -> bool:
        """task_will_free_mem(victim): a user-space killer's signal is pending for it (and for
        every other user of its mm), so it will free its memory without a kill of ours."""
        if not t.sigkilled or t.victim is not None:
            return False
        return task_will_free_mem(self._view(t), [self._view(u) for u in t.users])

    def oom_kill_process(self, t: TaskRecord, decision: OomDecision, requester: TaskRecord, at: float,
                         stall_monotonic: float | None = None, group_member: bool = False) -> None:
        """Mark the chosen task (or a member of the victim's oom_group) a victim, send it the
        emulated SIGKILL, wake the reaper. The ``oom_kill`` trace event says when, in real
        time, the requester's charge failed (``stall_monotonic``) and the signal went."""
        kb = t.mm.rss_kb()
        # mark_oom_victim. The kernel sends SIGKILL first (so the victim cannot
        # use memory reserves from user space); here the mark must come first,
        # or a victim quicker than us could run exit_mmap as a non-victim.
        t.own.killed_at = at
        t.mm.set_bit(MMF_OOM_VICTIM)
        signal_monotonic = None                      # a crashed task gets no signal
        if not t.crashed:
            hold_for_kill(self.zone, t.index, at)
            signal_monotonic = time.monotonic()      # the signal goes now (waking the victim
            os.kill(t.pid, SIGKILL_EMULATED)         # may give it this CPU before kill returns)
        tree = self.zone.memcg_tree
        t.victim = VictimRecord(t.name, t.pid, round(at, 6), memcg=tree.path(t.mm.memcg),
                                oom_memcg=None if decision.memcg is None else tree.path(decision.memcg),
                                oom_group=None if decision.oom_group is None else tree.path(decision.oom_group))
        if t.killed is not None:       # a user-space killer's SIGTERM, which its handler answers, came
            t.killed.oom_victim = True # first: one task, one kill (its record says both)
            t.victim = t.killed
        else:
            self._records.append(t.victim)
            self.kills += 1
        self.victims.append(t)
        self._victim_of_mm.setdefault(id(t.mm), t)
        self._holding.append(t)
        if self._scan is not None:
            self._scan.retire(t.index)
        self.trace("oom_kill", t, at, points=0 if group_member else decision.points, requester=requester.name,
                   memcg=decision.memcg, **({} if decision.oom_group is None else {"oom_group": decision.oom_group}),
                   **kb, stall_monotonic=stall_monotonic, signal_monotonic=signal_monotonic)
        self.trace("mark_victim", t, at)
        self.log.printk(killed_process_line(t.pid, t.name, kb), at)
        for view in decision.sharers:
            self._kill_mm_sharer(self._by_pid[view.pid], t, at)
        self.trace("wake_reaper", t, at)
        self.reaper.wake_oom_reaper(t, at)

    def _kill_mm_sharer(self, s: TaskRecord, victim: TaskRecord, at: float) -> None:
        """__oom_kill_process: a process sharing the victim's mm gets SIGKILL too (no line
        of its own, no mark_oom_victim, not a kill of the count)."""
        s.own.killed_at = at
        s.sigkilled = True
        if not s.crashed:
            hold_for_kill(self.zone, s.index, at)
            os.kill(s.pid, SIGKILL_EMULATED)
        self.trace("mm_sharer_killed", s, at, victim=victim.name, victim_pid=victim.pid)

    @property
    def lagged(self) -> bool:
        """Did the run fall behind its clock by more than the tolerance (its timings, and so
        perhaps its outcome, are not those of the speed asked for)?"""
        return self.lag_ms > tolerance_ms(self.speed)

    # -- verdict --------------------------------------------------------------
    def _resolved(self) -> bool:
        """Every task's steps done (or it exited) and no allocation stalled."""
        return not self._unresolved

    def _quiet(self) -> bool:
        """Every victim exited, and no task is half-way through its exit."""
        return (not self._in_exit and all(t.exited for t in self.victims)
                and all(t.exited for t in self.user_killed))

    def _loop(self, sel) -> None:
        deadline = self.scenario.run_deadline_s
        linger_until = None
        while True:
            self._check_signals(starting=False)
            if self.signals.tstp:
                self._stopped_by_tstp()
            now = self.clock.now()
            if self.reaper.error is not None:
                raise RunFault(f"oom_reaper failed: {self.reaper.error!r}") from self.reaper.error
            if self.verdict in (Verdict.PANIC, Verdict.ERROR):
                return
            if self.hold:
                # Held: the run goes on until Ctrl-C or ``oomemu stop``; the verdict
                # is what holds when it is stopped.
                resolved = self._resolved()
                if resolved and self.resolved_at is None:
                    self.resolved_at = self._when_resolved(now)
                elif not resolved:
                    self.resolved_at = None
                if self.signals.stop_requested:
                    self.verdict = Verdict.RESOLVED if resolved else Verdict.HUNG
                    return
                timeout = min(0.2, self._pressure_wait(now))
            else:
                if self.verdict is None and self._resolved():
                    self.verdict, self.resolved_at = Verdict.RESOLVED, self._when_resolved(now)
                    linger_until = now + LINGER_S
                if self.verdict == Verdict.RESOLVED and (self._quiet() or now >= linger_until):
                    return
                if self.verdict is None and now >= deadline:
                    self.verdict = Verdict.HUNG
                    self.log.printk("oomemu: run deadline %gs passed: hung" % deadline)
                    return
                until = linger_until if self.verdict else deadline
                timeout = min(self.clock.real_wait(until - now), WATCH_S, self._pressure_wait(now))
            self._watch_holds()
            events = sel.select(timeout)
            self._oom_requests = {}
            for key, _ in events:
                if key.data == "signal":
                    self.signals.drain()
                elif key.data == "events":
                    self._dispatch()
                elif key.data == "userspace":
                    sel.unregister(key.fileobj)
                    self._dispatch()                  # its last words come first
                    self._fail(self.userspace.last_words(), False)
                else:
                    sel.unregister(key.fileobj)
                    self._dispatch()                  # its last words come first
                    self._on_death(key.data)
            for index, (pages, where, memcg, at, stall_monotonic) in self._oom_requests.items():
                t = self.tasks[index]
                retry_at = -1.0                            # a jiffy after the OOM killer's answer
                if self.verdict is None:
                    reclaim = self.try_to_free_pages(t, pages, where, at, memcg)
                    if reclaim is None:
                        self.out_of_memory(t, pages, where, at, memcg, stall_monotonic)
                        # the retry wait (schedule_timeout_killable(1)): asleep, no memstall
                        self._stall(t, at, [Segment(at + JIFFY_S, asleep=True)])
                    else:
                        retry_at = reclaim
                t.own.oom_retry_at = retry_at
                if self.verdict != Verdict.PANIC:          # a panic stops the machine
                    t.oom_reply.release()
            if self.writeback.active:
                self._advance_writeback(self.clock.now())
            self.pressure.flush(self.clock.now())

    def _pressure_wait(self, now: float) -> float:
        """Real seconds until PSI's next planned change or averaging period (publish then)."""
        due = self.pressure.next_due()
        return WATCH_S if due is None else self.clock.real_wait(due - now)

    def _watch_holds(self) -> None:
        """The run clock holds for a sleeper that is late (RunClock.sleep_until); one that has not
        woken for HOLD_LIMIT_S (stopped from outside the run?) is waited for no more: the
        clock goes on, and when it wakes at last its lateness is lag."""
        held = self.clock.held_since()
        if held is None or held < HOLD_LIMIT_S:
            return
        due = self.zone.min_due
        for slot in holding_for(self.zone):
            if not stop_holding(self.zone, slot, due):
                continue                              # it woke meanwhile
            t = self.tasks[slot] if slot < len(self.tasks) else None
            who = (f"task {t.pid} ({t.name})" if t else "the oom_reaper" if slot == self.zone.supervisor_slot
                   else "the user-space daemon")
            self.log.printk("oomemu: %s has held the clock at its time for %.1f s (late to wake, or stopped "
                            "from outside); the clock goes on without it" % (who, held))
            self.note_late(held * 1000, "hold_limit", t, due)

    def _when_resolved(self, now: float) -> float:
        """The run has just become resolved, by what a task last reported (its allocation
        done, its steps, its exit): at that task's time, not when the news arrived here."""
        return min(now, self._latest_at) if self._latest_at > 0 else now

    def _stopped_by_tstp(self) -> None:
        """Ctrl-Z: stop the run clock, the workers and ourselves; on SIGCONT, go on and
        say so. Emulated time stands still while stopped: the stop is in no timing."""
        self.signals.tstp = False
        alive = [t for t in self.tasks if t.proc is not None and t.proc.poll() is None]
        began = time.monotonic()
        with self._frozen():
            for t in alive:
                t.proc.send_signal(signal.SIGSTOP)
            self.log.printk("oomemu: run stopped (SIGTSTP): its clock stands still until it goes on")
            os.kill(os.getpid(), signal.SIGSTOP)
            for t in alive:
                t.proc.send_signal(signal.SIGCONT)
        took = time.monotonic() - began
        self.stops += 1
        self.stopped_s += took
        self.log.printk("oomemu: run continued after %.1f s stopped" % took)
        self.trace("run_stopped", real_s=round(took, 3))

    # -- the whole run --------------------------------------------------------
    def execute(self) -> RunResult:
        """Run the scenario; returns its result (verdict ERROR: see ``.error``).

        A terminating signal ends the run at a safe point; after the teardown it
        is raised again, as KeyboardInterrupt (SIGINT) or SystemExit(128 + signum).
        ``EnvironmentProblem`` if the machine cannot hold the run."""
        self.check_room()
        self._began = time.monotonic()
        sel = selectors.DefaultSelector()
        result = None
        # The oom_reaper thread must act when its delay or deadline is due, not when the
        # main thread (busy with a stalled allocator's retries) next lets go of the GIL:
        # Python's default switch interval (5 ms) alone would make runs lag.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, GIL_SWITCH_S))
        with self.signals, _restoring_switch_interval(switch):
            try:
                try:
                    result = self._execute(sel)
                except _Interrupted:
                    pass
                except posix_ipc.PermissionsError as e:
                    raise EnvironmentProblem(f"the run could not create its objects in {names.SHM_DIR}: {e}") from None
                except posix_ipc.ExistentialError as e:
                    raise EnvironmentProblem(f"the run's objects in {names.SHM_DIR} were in the way or went "
                                             f"missing (someone else's files?): {e}") from None
                except OSError as e:
                    if e.errno in ENVIRONMENT_ERRNOS:
                        raise EnvironmentProblem(
                            f"the run could not be set up: {e.strerror} "
                            f"({errno.errorcode.get(e.errno, e.errno)}{machine.hint(e.errno)})") from None
                    raise
            finally:
                sel.close()
                self._teardown()
        self.signals.raise_pending()
        return result

    def _execute(self, sel) -> RunResult:
        self._start_forkserver()
        self._create()
        if self.policy.daemon is not None or self.door:
            self.userspace = UserSpaceProcess(self.run_id, self.policy, self._overrides, self.door)
        self._spawn()
        if self.signals.active:
            sel.register(self.signals.rfd, selectors.EVENT_READ, "signal")
        sel.register(self._events_fd, selectors.EVENT_READ, "events")
        for t in self.tasks:
            sel.register(t.proc.pidfd, selectors.EVENT_READ, t)
        self._wait_ready(sel)
        if self.userspace is not None and self.verdict != Verdict.ERROR:
            try:
                self.userspace.wait_ready(READY_TIMEOUT_S)
            except UserSpaceFailed as e:
                raise RunFault(str(e)) from None
        self.ready_real_s = time.monotonic() - self._began
        self.zone.set_t0(time.monotonic(), [t.index for t in self.tasks if not (t.crashed or t.exited)])
        self.clock = RunClock(self.zone, self.zone.supervisor_slot)
        self._start_pressure()
        self.tracer = Tracer(self._trace_path, self.clock.now,
                             lambda: self.zone.free_pages() * PAGE_SIZE // 1024)
        self.trace("run_start", at=0.0, scenario=self.scenario.name, policy=self.policy.name,
                   speed=self.speed, run_id=self.run_id, memory_kb=self.zone.total_pages * PAGE_SIZE // 1024,
                   tasks=[{"name": t.name, "pid": t.pid} for t in self.tasks])
        self.reaper = OomReaper(self.policy, self.clock, self.zone, self.oom_lock,
                                self.log.printk, self._on_oom_skip, self.trace, self.note_late)
        if self.verdict != Verdict.ERROR:
            for t in self.tasks:
                if t.spec.oom_score_adj:
                    self.trace("oom_score_adj_update", t, 0.0, oom_score_adj=t.spec.oom_score_adj)
            self.reaper.start()
            for _ in self.tasks:
                self.resources.start_sem.release()
            if self.userspace is not None:
                self.userspace.go()
                sel.register(self.userspace.pidfd, selectors.EVENT_READ, "userspace")
            if self._on_start is not None:
                self._on_start(self)
            self._loop(sel)
        self.verdict_real_s = time.monotonic() - self._began
        self.reaper.stop()
        self._stop_userspace()
        self._held = self.zone.held()
        self.trace("run_end", verdict=self.verdict, kills=self.kills, lag_ms=round(self.lag_ms, 3),
                   lagged=self.lagged, held_ms=round(self._held[0] * 1000, 3))
        accounting = self._stop_workers_and_check()
        return self._result(accounting)

    def _start_pressure(self) -> None:
        """The run's PSI from time 0: every task with steps is runnable then (the rest idle
        until they act); the zone shows /proc/pressure/memory from now on."""
        self.pressure = StallAccounting(self.scenario.nr_cpus, self.zone.publish_psi)
        for t in self.tasks:
            if t.spec.steps and not (t.crashed or t.exited):
                self.pressure.start(t.index, 0.0)
        self.pressure.flush(0.0)

    def _stall(self, t: TaskRecord, at: float, segments: list[Segment]) -> None:
        """``t``, from ``at``, goes through ``segments`` (a memory stall, or a sleep) for PSI."""
        if self.pressure is not None:
            self.pressure.plan(t.index, at, segments)

    def _stop_workers_and_check(self) -> dict:
        """Kill every worker for real, repair the mms of those that died half-way
        through a change, and check that for every task the zone's charge, the pages
        its mm counts and the pages its segment holds agree (else verdict ERROR:
        a fault of ours). Returns the totals."""
        self._kill_workers()
        for t in self.tasks:
            if t.proc is not None and not t.exited:
                self._repair(t)
        charged = rss = segment = pgtables = 0
        for t in self.tasks:       # a sharer's own segment holds no pages, and its counter none
            c, r, g = self.zone.charged_by(t.index), t.own.resident_pages(), t.own.real_pages()
            charged, rss, segment = charged + c, rss + r, segment + g
            pgtables += t.own.pgtables_pages
            if not c == r == g:
                self._fail(f"accounting: task {t.name}: charged {c} pages, its mm counts {r}, its segment "
                           f"holds {g} (a fault of oomemu's: please report it)", False)
        kinds = {"file": 0, "shmem": 0}
        for k in range(len(self.objects or ())):
            c, g = self.zone.object_charged(k), self.objects.real_pages(k)
            kinds[self.zone.object_kind(k)] += c
            charged, rss, segment = charged + c, rss + c, segment + g
            if c != g:
                self._fail(f"accounting: object {k}: charged {c} pages, its segment holds {g} (a fault of "
                           f"oomemu's: please report it)", False)
            for ti, vi in self.objects.mappers[k]:
                if (n := self.tasks[ti].mm.vmas()[vi].nr_pages) > c:
                    self._fail(f"accounting: task {self.tasks[ti].name} maps {n} pages of object {k}, which "
                               f"holds {c} (a fault of oomemu's: please report it)", False)
        if self.zone.charged() != charged:
            self._fail(f"accounting: the zone says {self.zone.charged()} pages charged, the tasks and objects "
                       f"{charged}", False)
        self._check_memcgs()
        swap = sum(t.mm.swapents() for t in self.tasks if t.owner is None)
        if swap != self.zone.swap()[1]:
            self._fail(f"accounting: the zone says {self.zone.swap()[1]} pages on swap, the mms count {swap} "
                       f"(a fault of oomemu's: please report it)", False)
        return {"swap_pages": swap, "charged_pages": charged, "rss_pages": rss, "segment_pages": segment,
                "anon_pages": rss - pgtables - kinds["file"] - kinds["shmem"], "pgtables_pages": pgtables,
                "page_cache_pages": kinds["file"], "shmem_pages": kinds["shmem"]}

    def _check_memcgs(self) -> None:
        """Each memcg's usage (hierarchical) is what the mms of its subtree's tasks count, with
        the page-cache and shmem objects charged there, and within its limit (else verdict ERROR: a fault of ours)."""
        tree = self.zone.memcg_tree
        own = [0] * len(tree)
        for t in self.tasks:
            own[t.mm.memcg] += t.mm.resident_pages()
        for k in range(len(self.objects or ())):          # page cache and shmem, charged apart
            own[self.zone.object_field(k, "memcg")] += self.objects.real_pages(k)
        for m, (counted, usage) in enumerate(zip(tree.usage(own), self.zone.memcg_usages())):
            limit = self.zone.memcg(m)[0]
            if counted != usage or (limit != NO_LIMIT and usage > limit):
                self._fail(f"accounting: memcg {tree.path(m)}: usage {usage} pages (limit {limit}), the mms "
                           f"of its tasks count {counted} (a fault of oomemu's: please report it)", False)

    def _result(self, accounting) -> RunResult:
        ttr = None
        if self.verdict == Verdict.RESOLVED and self.first_oom_at is not None:
            ttr = round(self.resolved_at - self.first_oom_at, 6)
        return RunResult(
            self.scenario.name, self.policy.name, self.speed, self.verdict, self.kills,
            self.scenario.min_kills, ttr, list(self._records), list(self.log.lines),
            self.run_id, None if self.first_oom_at is None else round(self.first_oom_at, 6),
            None if self.resolved_at is None else round(self.resolved_at, 6), accounting,
            error=self.error, error_kind=None if self.error is None else
            ("environment" if self.error_is_environment else "fault"),
            stops=self.stops, stopped_s=round(self.stopped_s, 3), lag_ms=round(self.lag_ms, 3),
            held_ms=round(self._held[0] * 1000, 3), held_max_ms=round(self._held[1] * 1000, 3),
            lagged=self.lagged, lag_tolerance_ms=round(tolerance_ms(self.speed), 3),
            ready_real_s=_round(self.ready_real_s), verdict_real_s=_round(self.verdict_real_s),
            oomemu_version=_oomemu_version(),
            scenario_sha256=_scenario_hash(self.scenario))

    def _kill_workers(self) -> None:
        """The real SIGKILL to every worker still there, then reap each (10 s at most in all)."""
        for t in self.tasks:
            if t.proc is not None and t.proc.poll() is None:
                t.proc.send_signal(signal.SIGKILL)     # SIGKILL works on a stopped process too
        deadline = time.monotonic() + KILL_WAIT_S
        for t in self.tasks:
            if t.proc is not None:
                t.proc.wait(max(0.0, deadline - time.monotonic()))

    def _stop_userspace(self) -> None:
        """End the user-space process (the daemon stops acting, the door is removed)."""
        if self.userspace is not None:
            self.userspace.stop(self.zone)
            self.userspace = None

    def _teardown(self) -> None:
        """Kill and reap every worker, remove every object of the run. Runs with
        terminating signals deferred (see ``execute``), so it always runs to its end."""
        if self.reaper is not None:
            self.reaper.stop()
        self._stop_userspace()
        if self.tracer is not None:
            self.tracer.close()
        if self._forkserver is not None:          # first: it makes no more workers
            self._forkserver.close(kill=not self._forkserver_done)
            if not self._forkserver_done:         # it may have made workers it did not report
                kill_unreported(self._forkserver.proc.pid, {t.pid for t in self.tasks if t.proc is not None})
        self._kill_workers()
        for t in self.tasks:
            if t.proc is not None:
                t.proc.close()
        self._events_fd = -1
        if self.objects is not None:
            self.objects.close()
        self.resources.remove()


def _printable(value, keep_spaces: bool = False) -> str:
    """A string from the event FIFO (written by a process outside the run, perhaps), fit
    for the log: no control characters, at most 1000 of them."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    if keep_spaces:
        text = text.replace("\t", " ")
    return "".join(c if c.isprintable() and (keep_spaces or not c.isspace()) else "?" for c in text[:1000])


def _round(real_s: float | None) -> float | None:
    return None if real_s is None else round(real_s, 4)


def _oomemu_version() -> str:
    from .. import __version__ as v
    return v


def _scenario_hash(scenario: Scenario) -> str | None:
    """sha256 of the scenario file the run came from (None for one built in memory)."""
    import hashlib
    try:
        with open(scenario.source, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def run_scenario(scenario: Scenario | str, policy="v4.17", speed: float = 1.0,
                 overrides: dict | None = None, echo=None, trace: str | None = None) -> RunResult:
    """Run a scenario with real processes and return what happened.

    ``trace``: a file to write the run's trace events to (JSON lines)."""
    if not isinstance(scenario, Scenario):
        from ..scenario import load_scenario
        scenario = load_scenario(scenario)
    return Run(scenario, policy, speed, overrides, echo, trace=trace).execute()
