"""The supervisor: starts a run's processes, plays the OOM killer, reaches a verdict.

One process, two threads:

* the main thread owns the run: it creates the zone, the mms and the
  semaphores, spawns one worker per task, then waits on one pipe (events
  from every worker) and one pidfd per worker (deaths). Work per event does
  not depend on the number of idle tasks, except a real OOM kill, which
  scans every task as the kernel's ``select_bad_process`` does.
* the ``oom_reaper`` thread (``emulator.runtime.reaper``).

``out_of_memory`` and the reaper's attempts are serialised by ``oom_lock``,
as in the kernel. Whatever happens, :meth:`Run.run` ends by killing every
worker with a real SIGKILL, repairing the mms of workers that died half-way
through a change (their journals say what to finish or undo), checking the
accounting, and unlinking every segment and semaphore. Terminating signals
are deferred to safe points (``emulator.runtime.signals``), so none of that is cut
short.

A worker that dies other than by the emulated SIGKILL or ``oomemu inject
crash`` ends the run at once with verdict ``error`` and the cause.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import posix_ipc
import psutil

from . import names, signals
from ..kernel.clock import JIFFY_S
from ..errors import EnvironmentProblem
from .klog import KernelLog
from ..kernel.mm_types import (MMF_OOM_SKIP, MMF_OOM_VICTIM, MMU_NOTIFIERS, PAGE_SIZE, PAGES_PER_MB, MmLayout,
                               TaskState, vm_flags_for)
from .clock import ScaledClock
from .mm import HEADER_SIZE, Mm
from ..kernel.oom_kill import OomControl, Selection, TaskView, select_bad_process
from ..policies import get_policy
from .reaper import OomReaper
from ..result import ERROR, HUNG, PANIC, RESOLVED, RunResult, VictimRecord
from ..scenario import Scenario, TaskSpec
from .trace import Tracer
from .zone import MEMCG, Zone, zone_size

SIGKILL_EMULATED = signal.SIGUSR1
READY_TIMEOUT_S = 60.0          # real seconds for every worker to fault in its VMAs
START_LEAD_S = 0.05             # real seconds between "go" and time 0
LINGER_S = 30.0                 # emulated seconds a resolved run waits for dying victims
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GFP = "gfp_mask=0x14280ca(GFP_HIGHUSER_MOVABLE|__GFP_ZERO), order=0"
# Slower than 0.1 would stretch a day-long run_deadline_s past what a wait can take.
MIN_SPEED, MAX_SPEED = 0.1, 1e6
WORKER_MEMORY_MB = 16           # a worker's own memory (an interpreter), beside the emulated pages
FDS_PER_TASK = 2                # the supervisor keeps a pidfd and the mm's fd per task
FDS_BASE = 64


class RunFault(RuntimeError):
    """Something of ours broke (exit code 1)."""


class _Interrupted(Exception):
    """A deferred terminating signal reached a safe point: end the run."""


@dataclass(eq=False)
class Task:
    """The supervisor's record of one task (also the reaper's victim handle)."""
    index: int
    spec: TaskSpec
    proc: subprocess.Popen | None = None
    mm: Mm | None = None
    mmap_sem: posix_ipc.Semaphore | None = None
    oom_reply: posix_ipc.Semaphore | None = None
    pidfd: int = -1
    ready: bool = False
    steps_done: bool = False
    exiting: bool = False
    exited: bool = False
    crashed: bool = False             # SIGKILLed for real: its mm (and what it held) stays
    crash_expected: bool = False      # ``oomemu inject crash`` said it is coming
    fault: tuple | None = None        # (what, is the environment's) from the worker's last words
    stalled: bool = False
    victim: VictimRecord | None = None
    layout: tuple = ()                # (initial pages per VMA, index of the VMA that grows)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def has_mm(self) -> bool:
        """find_lock_task_mm() finds an mm: the task has not exited, or it crashed
        (SIGKILLed for real) and its mm still holds pages until reaped or the run ends."""
        if self.crashed:
            return self.mm.resident_pages() > 0
        return not self.exited and self.mm.state != TaskState.TASK_DEAD

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0


def _layout(spec: TaskSpec, zone_pages: int) -> tuple[MmLayout, list[int], int]:
    """VMAs with room to grow: the first anon VMA may take the whole zone (sparse)."""
    vmas, initial, grow = [], [], None
    for v in spec.vmas:
        pages = round(v.mb * PAGES_PER_MB)
        cap = pages
        if grow is None and v.kind == "anon":
            grow, cap = len(vmas), pages + zone_pages
        vmas.append((v.kind, vm_flags_for(v.kind, v.mlocked), cap))
        initial.append(pages)
    if grow is None:
        grow = len(vmas)
        vmas.append(("anon", 0, zone_pages))
        initial.append(0)
    return MmLayout(tuple(vmas), round(spec.pgtables_mb * PAGES_PER_MB)), initial, grow


class Run:
    def __init__(self, scenario: Scenario, policy="v4.17", speed: float = 1.0,
                 overrides: dict | None = None, echo=None, trace: str | None = None,
                 hold: bool = False, on_start=None):
        if isinstance(speed, bool) or not (isinstance(speed, (int, float)) and MIN_SPEED <= speed <= MAX_SPEED):
            from ..errors import UsageError
            raise UsageError(f"--speed {speed}: must be a number from {MIN_SPEED:g} to {MAX_SPEED:g}")
        self.scenario = scenario
        self.policy = get_policy(policy, overrides)
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
        self._fifo: str | None = None
        self.tasks = [Task(i, t) for i, t in enumerate(scenario.tasks)]
        self.zone: Zone | None = None
        self.start_sem = None
        self.lock_sems: list = []
        self.oom_lock = threading.Lock()
        self.reaper: OomReaper | None = None
        self.kills = 0
        self.victims: list[Task] = []
        self.verdict: str | None = None
        self.first_oom_at: float | None = None
        self.resolved_at: float | None = None
        self._created: list[tuple[str, bool]] = []    # (posix name, is semaphore)
        self._rfd = self._wfd = -1
        self._buf = b""
        self._by_pidfd: dict[int, Task] = {}
        self._by_pid: dict[int, Task] = {}

    # -- set-up -------------------------------------------------------------
    def needs(self) -> dict[str, int]:
        """What the run will take from the machine, in bytes and file descriptors."""
        n = len(self.tasks)
        shm = round(self.scenario.memory_mb * PAGES_PER_MB) * PAGE_SIZE + n * HEADER_SIZE + zone_size(n)
        return {"shm": shm, "memory": shm + ((n + 1) * WORKER_MEMORY_MB << 20),
                "fds": FDS_BASE + FDS_PER_TASK * n}

    def check_room(self) -> None:
        """Refuse to start, in one line, if /dev/shm, the machine's available memory,
        the caller's memory cgroup or the open-file limit cannot hold the run."""
        need = self.needs()
        mb = lambda b: f"{b / (1 << 20):.0f} MB"
        what = (f"{self.scenario.memory_mb:g} MB of emulated memory + {len(self.tasks)} mm headers")
        try:
            st = os.statvfs(names.SHM_DIR)
        except OSError as e:
            raise EnvironmentProblem(f"{names.SHM_DIR}: {e.strerror}: oomemu keeps a run's memory there") from None
        free = st.f_bavail * st.f_frsize
        if free < need["shm"]:
            raise EnvironmentProblem(
                f"{names.SHM_DIR} has {mb(free)} free, this run needs {mb(need['shm'])} ({what}): "
                f"make room there (or mount it larger) or use a smaller memory_mb")
        avail = _mem_available()
        if avail is not None and avail < need["memory"]:
            raise EnvironmentProblem(
                f"the machine has {mb(avail)} of memory available, this run needs about {mb(need['memory'])} "
                f"({what}, and about {WORKER_MEMORY_MB} MB per process)")
        room = _memcg_room()
        if room is not None and room[0] < need["memory"]:
            raise EnvironmentProblem(
                f"memory cgroup {room[1]} has {mb(room[0])} left under its limit, this run needs about "
                f"{mb(need['memory'])} ({what}, and about {WORKER_MEMORY_MB} MB per process)")
        self._check_nproc()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < need["fds"]:
            if hard == resource.RLIM_INFINITY or hard >= need["fds"]:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))     # as far as we may
            else:
                raise EnvironmentProblem(
                    f"this run needs about {need['fds']} open files ({len(self.tasks)} tasks), the limit is "
                    f"{hard} (ulimit -n): raise it or run fewer tasks")

    def _check_nproc(self) -> None:
        """RLIMIT_NPROC counts every process of the user (root is exempt)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        if os.geteuid() == 0 or soft == resource.RLIM_INFINITY:
            return
        uid = os.getuid()
        mine = sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid)
        need = mine + len(self.tasks) + 1
        if soft < need:
            if hard == resource.RLIM_INFINITY or hard >= need:
                resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))
            else:
                raise EnvironmentProblem(
                    f"this run needs {len(self.tasks)} more processes, you have {mine} and the limit is "
                    f"{hard} (ulimit -u): raise it or run fewer tasks")

    def _create(self) -> None:
        me = psutil.Process()
        total = round(self.scenario.memory_mb * PAGES_PER_MB)
        self._created.append((names.zone(self.run_id), False))
        self.zone = Zone(self.run_id, create={
            "supervisor_pid": os.getpid(), "supervisor_ctime": me.create_time(), "speed": self.speed,
            "total_pages": total, "scenario": self.scenario.name, "policy": self.policy.name,
            "memcgs": [(m.name, round(m.limit_mb * PAGES_PER_MB)) for m in self.scenario.memcgs],
            "tasks": [self.scenario.memcg_index(t.spec.memcg) for t in self.tasks]})
        self._created.append((names.start(self.run_id), True))
        self.start_sem = posix_ipc.Semaphore(names.start(self.run_id), posix_ipc.O_CREX, mode=0o600,
                                             initial_value=0)
        for lname in self.scenario.lock_names:
            self._created.append((names.lock(self.run_id, lname), True))
            self.lock_sems.append(posix_ipc.Semaphore(names.lock(self.run_id, lname), posix_ipc.O_CREX,
                                                      mode=0o600, initial_value=1))
        for t in self.tasks:
            self._check_signals()
            layout, initial, grow = _layout(t.spec, total)
            t.layout = (initial, grow)
            self._created.append((names.mm(self.run_id, t.index), False))
            t.mm = Mm(names.mm(self.run_id, t.index), create=layout)
            t.mm.oom_score_adj = t.spec.oom_score_adj
            t.mm.mmu_notifier = MMU_NOTIFIERS[t.spec.mmu_notifier]
            t.mm.memcg = self.scenario.memcg_index(t.spec.memcg)
            t.mm.comm = t.name
            self._created.append((names.mmap_sem(self.run_id, t.index), True))
            t.mmap_sem = posix_ipc.Semaphore(names.mmap_sem(self.run_id, t.index), posix_ipc.O_CREX,
                                             mode=0o600, initial_value=1)
            self._created.append((names.oom_reply(self.run_id, t.index), True))
            t.oom_reply = posix_ipc.Semaphore(names.oom_reply(self.run_id, t.index), posix_ipc.O_CREX,
                                              mode=0o600, initial_value=0)

    def _spawn(self) -> None:
        # A FIFO, not a pipe, so that ``oomemu inject`` can write to it too.
        # O_RDWR keeps it open for writing here: the read end never sees EOF.
        self._fifo = names.events(self.run_id)
        os.mkfifo(self._fifo, 0o600)
        self._rfd = os.open(self._fifo, os.O_RDWR | os.O_NONBLOCK)
        self._wfd = os.open(self._fifo, os.O_WRONLY)
        index = {t.name: t.index for t in self.tasks}
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        for t in self.tasks:
            self._check_signals()
            initial, grow = t.layout
            spec = {"speed": self.speed, "jiffy_s": JIFFY_S, "locks": self.scenario.lock_names,
                    "initial_pages": initial, "grow_vma": grow,
                    "pgtables_pages": round(t.spec.pgtables_mb * PAGES_PER_MB),
                    "others": {s.task: index[s.task] for s in t.spec.steps if s.task},
                    "exit_unmap_ms_per_mb": t.spec.exit_unmap_ms_per_mb,
                    "exit_free_pgtables_ms": t.spec.exit_free_pgtables_ms,
                    "exit_mmap": self.policy.exit_mmap_spec(),
                    "steps": [{"op": s.op, "mb": s.mb, "ms": s.ms, "name": s.name, "task": s.task}
                              for s in t.spec.steps]}
            # A process group of its own: a terminal's Ctrl-C, Ctrl-\, Ctrl-Z and hangup
            # go to the supervisor alone, which decides what the workers see.
            t.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.task", "--run", self.run_id, "--index", str(t.index),
                 "--parent", str(os.getpid()), "--fd", str(self._wfd), "--spec", json.dumps(spec)],
                pass_fds=(self._wfd,), stdin=subprocess.DEVNULL, env=env, process_group=0)
            t.mm.pid = t.proc.pid
            self._by_pid[t.pid] = t
            t.pidfd = os.pidfd_open(t.proc.pid)
            self._by_pidfd[t.pidfd] = t
        os.close(self._wfd)
        self._wfd = -1

    def _check_signals(self, starting: bool = True) -> None:
        """A safe point: end the run if a terminating signal came. While starting, a
        held run's Ctrl-C interrupts too: there is no verdict to stop at yet."""
        if starting and self.signals.stop_requested and self.signals.pending is None:
            self.signals.pending = signal.SIGINT
        if self.signals.pending is not None:
            raise _Interrupted(self.signals.pending)

    def trace(self, ev: str, t: Task | None = None, at: float | None = None, **fields) -> None:
        if self.tracer is not None:
            self.tracer.emit(ev, t.pid if t else 0, t.name if t else "", at, **fields)

    def _wait_ready(self, sel) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(t.ready for t in self.tasks):
            self._check_signals()
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunFault("workers did not start within %gs" % READY_TIMEOUT_S)
            for key, _ in sel.select(left):
                if key.data == "signal":
                    self.signals.drain()
                elif key.data == "pipe":
                    for ev in self._read_events():
                        if ev["ev"] == "ready":
                            self.tasks[ev["i"]].ready = True
                        elif ev["ev"] == "fault":
                            self.tasks[ev["i"]].fault = (ev["what"], ev["environment"])
                else:
                    sel.unregister(key.fileobj)
                    for ev in self._read_events():    # its last words come first
                        if ev["ev"] == "fault":
                            self.tasks[ev["i"]].fault = (ev["what"], ev["environment"])
                    self._on_death(key.data, starting=True)
                    if self.verdict == ERROR:
                        return

    # -- events ---------------------------------------------------------------
    def _read_events(self):
        while True:
            try:
                chunk = os.read(self._rfd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        return [json.loads(line) for line in lines if line]

    def _handle(self, ev: dict, oom_requests: dict) -> None:
        kind = ev["ev"]
        at = self.clock.at(ev["t"])
        if kind == "inject":
            self._on_inject(ev, at)
            return
        if kind == "fault":
            self.tasks[ev["i"]].fault = (ev["what"], ev["environment"])
            return
        t = self.tasks[ev["i"]]
        if kind in ("alloc_stall", "alloc_ok", "exit_mmap_start", "exit_mmap_done", "handover"):
            self.trace(kind, t, at, **{k: v for k, v in ev.items() if k not in ("ev", "i", "t")})
        elif kind == "state":
            self.trace("task_state", t, at, state=ev["state"])
        if kind == "oom":
            oom_requests[t.index] = (ev["pages"], ev["where"])   # one at a time: the task waits
        elif kind == "alloc_stall":
            t.stalled = True
            if self.first_oom_at is None:
                self.first_oom_at = at
        elif kind == "alloc_ok":
            t.stalled = False
        elif kind == "steps_done":
            t.steps_done = True
        elif kind == "exiting":
            t.exiting = True
        elif kind == "oom_skip":
            self._on_oom_skip(t, "exit_mmap", at, where=ev.get("where"))
        elif kind == "exit_mmap_done":
            if t.victim is not None:
                t.victim.exit_freed_kb = ev["freed_kb"]
                self.log.printk("oomemu: pid %d (%s) exit_mmap freed %dkB" % (t.pid, t.name, ev["freed_kb"]), at)
        elif kind == "exited":
            self._on_exit(t, at)

    def _on_inject(self, ev: dict, at: float) -> None:
        """A note from ``oomemu inject``: log it, trace it."""
        t = self.tasks[ev["i"]] if 0 <= ev.get("i", -1) < len(self.tasks) else None
        if t is not None and ev.get("action") == "crash":
            t.crash_expected = True
        self.log.printk("oomemu: inject: %s" % ev["what"], at)
        self.trace("inject", t, at, what=ev["what"], by=ev.get("by", 0), action=ev.get("action", ""))

    def _on_oom_skip(self, t: Task, by: str, at: float | None = None, where: str | None = None) -> None:
        self.trace("oom_skip_set", t, at, by=by, **({"where": where} if where else {}))
        if t.victim is not None and t.victim.oom_skip_at_s is None:
            t.victim.oom_skip_at_s = round(self.clock.now() if at is None else at, 6)
            t.victim.oom_skip_by = by
        if by == "exit_mmap" and t.victim is not None and self.reaper is not None:
            self.reaper.victim_exited(t)

    def _on_exit(self, t: Task, at: float) -> None:
        if t.exited:
            return
        t.exited = True
        t.stalled = False
        self.trace("exited", t, at, crashed=t.crashed)
        if t.victim is not None:
            t.victim.exited_at_s = round(at, 6)

    def _on_death(self, t: Task, starting: bool = False) -> None:
        """The pidfd says the process is gone; reap the zombie, and say why it died
        if that was not its emulated exit."""
        code = t.proc.wait()
        if t.exited:
            return
        how = f"signal {signals.name(-code)}" if code < 0 else f"exit code {code}"
        if t.crash_expected and code == -signal.SIGKILL:
            # ``inject crash``: like a POSIX semaphore, whatever it held stays held; its
            # mm stays too, with the memory in it, until the reaper frees it or the run ends.
            t.crashed = True
            self.log.printk("oomemu: task %d (%s) died without exiting (signal %d); its mm and what it "
                            "held stay" % (t.pid, t.name, -code))
            self._repair(t)
            self._on_exit(t, self.clock.now())
            return
        # Died some other way: a fault (its last words say which), or the machine.
        t.crashed = True
        when = "while starting" if starting else "during the run"
        if t.fault is not None:
            what, env = t.fault
        elif code == -signal.SIGBUS:
            what, env = f"SIGBUS: {names.SHM_DIR} ran out of room ({_shm_free_mb():.0f} MB free)", True
        elif code == -signal.SIGKILL:
            what, env = ("a real SIGKILL oomemu did not send (the machine's own OOM killer? "
                         "see dmesg; or someone else)"), True
        else:
            what, env = how, False
        self.log.printk("oomemu: task %d (%s) died %s: %s" % (t.pid, t.name, when, what))
        self._repair(t)
        self._on_exit(t, self.clock.now())
        self._fail(f"task {t.name} (pid {t.pid}) died {when}: {what}", env)

    def _fail(self, why: str, environment: bool) -> None:
        """End the run with verdict ERROR (the first cause wins)."""
        if self.verdict != ERROR:
            self.verdict, self.error, self.error_is_environment = ERROR, why, environment

    def _repair(self, t: Task) -> None:
        """A worker died: finish or undo what its journal says it was doing, so that
        its charge, its mm's counts and its segment agree again."""
        with self.oom_lock:                # the reaper works on mms under oom_lock
            try:
                charged, complaint = t.mm.repair(self.zone.charged_by(t.index))
                self.zone.set_charged(t.index, charged)
            except OSError as e:
                complaint = f"repair failed: {e}"
        if complaint:
            self._fail(f"accounting: task {t.name}: {complaint} (a fault of oomemu's: please report it)",
                       False)

    # -- the OOM killer -------------------------------------------------------
    def _view(self, t: Task) -> TaskView:
        mm = t.mm
        return TaskView(pid=t.pid, name=t.name, oom_score_adj=mm.oom_score_adj, memcg=mm.memcg,
                        rss_pages=mm.get_mm_rss(), pgtables_pages=mm.pgtables_pages,
                        has_mm=t.has_mm,
                        oom_victim=t.victim is not None, mmf_oom_skip=mm.test_bit(MMF_OOM_SKIP))

    def out_of_memory(self, requester: Task, pages: int, where: str) -> None:
        """Called for a failed allocation; takes oom_lock like __alloc_pages_may_oom.

        ``where`` is GLOBAL (the zone is short) or MEMCG (the requester's memcg
        is at its limit: the OOM is constrained to that memcg's tasks)."""
        memcg = requester.mm.memcg if where == MEMCG else None
        with self.oom_lock:
            if requester.exited or requester.victim is not None:
                return                 # task_will_free_mem(current): it is on its way out
            if self.zone.room(pages, requester.mm.memcg) is None:
                return                 # the last-second allocation attempt would succeed
            in_domain = (lambda t: True) if memcg is None else (lambda t: t.mm.memcg == memcg)
            # Fast path, same answer as the full scan: a victim in the OOM domain
            # still holding its memory (no MMF_OOM_SKIP) aborts select_bad_process.
            for v in self.victims:
                if in_domain(v) and v.has_mm and not v.mm.test_bit(MMF_OOM_SKIP):
                    if self._last_abort.get(requester.index) != v.pid:
                        self._last_abort[requester.index] = v.pid
                        self.trace("oom_abort", requester, victim=v.pid, victim_task=v.name)
                    return
            if memcg is None:
                totalpages = self.zone.total_pages
            else:
                totalpages = self.zone.memcg(memcg)[0]
            oc = OomControl(totalpages=totalpages, requester=requester.name, memcg=memcg)
            sel = select_bad_process((self._view(t) for t in self.tasks if in_domain(t)), oc)
            if sel is Selection.ABORT:
                return
            self._last_abort.pop(requester.index, None)
            if sel is Selection.NONE:
                if memcg is not None:
                    return             # a memcg OOM does not panic: the charge keeps failing
                self.log.printk("%s invoked oom-killer: %s, oom_score_adj=%d"
                                % (requester.name, GFP, requester.spec.oom_score_adj))
                self.log.printk("Out of memory and no killable processes...")
                self.log.printk("Kernel panic - not syncing: Out of memory and no killable processes...")
                self.trace("panic", requester, reason="Out of memory and no killable processes...")
                self.verdict = PANIC
                return
            self.log.printk("%s invoked oom-killer: %s, oom_score_adj=%d"
                            % (requester.name, GFP, requester.spec.oom_score_adj))
            if memcg is not None:
                limit, usage, mname = self.zone.memcg(memcg)
                self.log.printk("Task in /%s killed as a result of limit of /%s" % (mname, mname))
                self.log.printk("memory: usage %dkB, limit %dkB"
                                % (usage * PAGE_SIZE // 1024, limit * PAGE_SIZE // 1024))
            self.oom_kill_process(oc)

    def oom_kill_process(self, oc: OomControl) -> None:
        t = self._by_pid[oc.chosen.pid]
        score = oc.chosen_points * 1000 // oc.totalpages
        reason = "Out of memory" if oc.memcg is None else "Memory cgroup out of memory"
        self.log.printk("%s: Kill process %d (%s) score %d or sacrifice child"
                        % (reason, t.pid, t.name, score))
        kb = t.mm.rss_kb()
        # mark_oom_victim. The kernel sends SIGKILL first (so the victim cannot
        # use memory reserves from user space); here the mark must come first,
        # or a victim quicker than us could run exit_mmap as a non-victim.
        t.mm.set_bit(MMF_OOM_VICTIM)
        if not t.crashed:
            os.kill(t.pid, SIGKILL_EMULATED)
        now = self.clock.now()
        t.victim = VictimRecord(t.name, t.pid, round(now, 6))
        self.victims.append(t)
        self.kills += 1
        self.trace("oom_kill", t, now, points=oc.chosen_points, requester=oc.requester,
                   memcg=oc.memcg, **kb)
        self.trace("mark_victim", t, now)
        self.log.printk("Killed process %d (%s) total-vm:%dkB, anon-rss:%dkB, file-rss:%dkB, shmem-rss:%dkB"
                        % (t.pid, t.name, kb["total_vm"], kb["anon_rss"], kb["file_rss"], kb["shmem_rss"]))
        self.trace("wake_reaper", t)
        self.reaper.wake_oom_reaper(t)

    # -- verdict --------------------------------------------------------------
    def _resolved(self) -> bool:
        for t in self.tasks:
            if t.spec.steps and not (t.steps_done or t.exited):
                return False
            if t.stalled and not t.exited:
                return False
        return True

    def _quiet(self) -> bool:
        return all(t.exited for t in self.victims) and all(not t.exiting or t.exited for t in self.tasks)

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
            if self.verdict in (PANIC, ERROR):
                return
            if self.hold:
                # Held: the run goes on until Ctrl-C or ``oomemu stop``; the verdict
                # is what holds when it is stopped.
                resolved = self._resolved()
                if resolved and self.resolved_at is None:
                    self.resolved_at = now
                elif not resolved:
                    self.resolved_at = None
                if self.signals.stop_requested:
                    self.verdict = RESOLVED if resolved else HUNG
                    return
                timeout = 0.2
            else:
                if self.verdict is None and self._resolved():
                    self.verdict, self.resolved_at = RESOLVED, now
                    linger_until = now + LINGER_S
                if self.verdict == RESOLVED and (self._quiet() or now >= linger_until):
                    return
                if self.verdict is None and now >= deadline:
                    self.verdict = HUNG
                    self.log.printk("oomemu: run deadline %gs passed: hung" % deadline)
                    return
                until = linger_until if self.verdict else deadline
                timeout = max(0.0, self.clock.to_real(until - now))
            events = sel.select(timeout)
            oom_requests: dict[int, int] = {}
            for key, _ in events:
                if key.data == "signal":
                    self.signals.drain()
                elif key.data == "pipe":
                    for ev in self._read_events():
                        self._handle(ev, oom_requests)
                else:
                    sel.unregister(key.fileobj)
                    for ev in self._read_events():    # its last words come first
                        self._handle(ev, oom_requests)
                    self._on_death(key.data)
            for index, (pages, where) in oom_requests.items():
                t = self.tasks[index]
                if self.verdict is None:
                    self.out_of_memory(t, pages, where)
                if self.verdict != PANIC:          # a panic stops the machine
                    t.oom_reply.release()

    def _stopped_by_tstp(self) -> None:
        """Ctrl-Z: stop the workers and ourselves; on SIGCONT, go on and say so.
        Emulated time runs on while stopped, so timings after it include the stop."""
        self.signals.tstp = False
        alive = [t for t in self.tasks if t.proc is not None and t.proc.poll() is None]
        for t in alive:
            _signal_quietly(t.proc, signal.SIGSTOP)
        began = time.monotonic()
        self.log.printk("oomemu: run stopped (SIGTSTP): its timings from here on include the stop")
        os.kill(os.getpid(), signal.SIGSTOP)
        for t in alive:
            _signal_quietly(t.proc, signal.SIGCONT)
        took = time.monotonic() - began
        self.stops += 1
        self.stopped_s += took
        self.log.printk("oomemu: run continued after %.1f s stopped" % took)
        self.trace("run_stopped", real_s=round(took, 3))

    # -- the whole run --------------------------------------------------------
    def run(self) -> RunResult:
        """Run the scenario; returns its result (verdict ERROR: see ``.error``).

        A terminating signal ends the run at a safe point; after the teardown it
        is raised again, as KeyboardInterrupt (SIGINT) or SystemExit(128 + signum).
        ``EnvironmentProblem`` if the machine cannot hold the run."""
        self.check_room()
        sel = selectors.DefaultSelector()
        result = None
        with self.signals:
            try:
                try:
                    result = self._run(sel)
                except _Interrupted:
                    pass
                except posix_ipc.PermissionsError as e:
                    raise EnvironmentProblem(f"the run could not create its objects in {names.SHM_DIR}: {e}") from None
                except posix_ipc.ExistentialError as e:
                    raise EnvironmentProblem(f"the run's objects in {names.SHM_DIR} were in the way or went "
                                             f"missing (someone else's files?): {e}") from None
                except OSError as e:
                    if e.errno in _ENVIRONMENT_ERRNOS:
                        raise EnvironmentProblem(f"the run could not be set up: {e.strerror} "
                                                 f"({errno.errorcode.get(e.errno, e.errno)}{_hint(e.errno)})") from None
                    raise
            finally:
                sel.close()
                self._teardown()
        self.signals.raise_pending()
        return result

    def _run(self, sel) -> RunResult:
        self._create()
        self._spawn()
        if self.signals.active:
            sel.register(self.signals.rfd, selectors.EVENT_READ, "signal")
        sel.register(self._rfd, selectors.EVENT_READ, "pipe")
        for t in self.tasks:
            sel.register(t.pidfd, selectors.EVENT_READ, t)
        self._wait_ready(sel)
        t0 = time.monotonic() + START_LEAD_S
        self.clock = ScaledClock(self.speed, t0)
        self.zone.set_t0(t0)
        self.tracer = Tracer(self._trace_path, self.clock.now,
                             lambda: self.zone.free_pages() * PAGE_SIZE // 1024)
        self.trace("run_start", at=0.0, scenario=self.scenario.name, policy=self.policy.name,
                   speed=self.speed, run_id=self.run_id, memory_kb=self.zone.total_pages * PAGE_SIZE // 1024,
                   tasks=[{"name": t.name, "pid": t.pid} for t in self.tasks])
        self.reaper = OomReaper(self.policy, self.clock, self.zone, self.oom_lock,
                                self.log.printk, self._on_oom_skip, self.trace)
        if self.verdict != ERROR:
            for t in self.tasks:
                if t.spec.oom_score_adj:
                    self.trace("oom_score_adj_update", t, 0.0, oom_score_adj=t.spec.oom_score_adj)
            self.reaper.start()
            for _ in self.tasks:
                self.start_sem.release()
            if self._on_start is not None:
                self._on_start(self)
            self._loop(sel)
        self.reaper.stop()
        self.trace("run_end", verdict=self.verdict, kills=self.kills)
        accounting = self._stop_workers_and_check()
        return self._result(accounting)

    def _stop_workers_and_check(self) -> dict:
        """Kill every worker for real, repair the mms of those that died half-way
        through a change, and check that for every task the zone's charge, the pages
        its mm counts and the pages its segment holds agree (else verdict ERROR:
        a fault of ours). Returns the totals."""
        self._kill_workers()
        for t in self.tasks:
            if t.proc is not None and not t.exited:
                self._repair(t)
        charged = rss = segment = 0
        for t in self.tasks:
            c, r, g = self.zone.charged_by(t.index), t.mm.resident_pages(), t.mm.real_pages()
            charged, rss, segment = charged + c, rss + r, segment + g
            if not c == r == g:
                self._fail(f"accounting: task {t.name}: charged {c} pages, its mm counts {r}, its segment "
                           f"holds {g} (a fault of oomemu's: please report it)", False)
        if self.zone.charged() != charged:
            self._fail(f"accounting: the zone says {self.zone.charged()} pages charged, the tasks {charged}",
                       False)
        return {"charged_pages": charged, "rss_pages": rss, "segment_pages": segment}

    def _result(self, accounting) -> RunResult:
        ttr = None
        if self.verdict == RESOLVED and self.first_oom_at is not None:
            ttr = round(self.resolved_at - self.first_oom_at, 6)
        return RunResult(
            self.scenario.name, self.policy.name, self.speed, self.verdict, self.kills,
            self.scenario.min_kills, ttr, [t.victim for t in self.victims], list(self.log.lines),
            self.run_id, None if self.first_oom_at is None else round(self.first_oom_at, 6),
            None if self.resolved_at is None else round(self.resolved_at, 6), accounting,
            error=self.error, error_kind=None if self.error is None else
            ("environment" if self.error_is_environment else "fault"),
            stops=self.stops, stopped_s=round(self.stopped_s, 3), oomemu_version=__version__(),
            scenario_sha256=_scenario_hash(self.scenario))

    def _kill_workers(self) -> None:
        """The real SIGKILL to every worker still there, and wait for each (bounded)."""
        for t in self.tasks:
            if t.proc is not None and t.proc.poll() is None:
                _signal_quietly(t.proc, signal.SIGKILL)     # SIGKILL works on a stopped process too
        for t in self.tasks:
            if t.proc is not None:
                try:
                    t.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass

    def _teardown(self) -> None:
        """Kill and reap every worker, unlink everything. Runs with terminating
        signals deferred (see ``run``), so it always runs to its end."""
        if self.reaper is not None:
            self.reaper.stop()
        if self.tracer is not None:
            self.tracer.close()
        self._kill_workers()
        for t in self.tasks:
            if t.pidfd >= 0:
                os.close(t.pidfd)
                t.pidfd = -1
            if t.mm is not None:
                t.mm.close()
            for sem in (t.mmap_sem, t.oom_reply):
                if sem is not None:
                    sem.close()
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                os.close(fd)
        self._rfd = self._wfd = -1
        if self._fifo is not None:
            try:
                os.unlink(self._fifo)
            except FileNotFoundError:
                pass
            self._fifo = None
        if self.zone is not None:
            self.zone.close()
        for sem in [self.start_sem, *self.lock_sems]:
            if sem is not None:
                sem.close()
        for name, is_sem in self._created:
            try:
                (posix_ipc.unlink_semaphore if is_sem else posix_ipc.unlink_shared_memory)(name)
            except posix_ipc.ExistentialError:
                pass
        self._created.clear()


_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EAGAIN,
                                 errno.EDQUOT, errno.EPERM, errno.EACCES})


def _hint(err: int) -> str:
    return {errno.EMFILE: ": too many open files; raise 'ulimit -n'",
            errno.ENFILE: ": the system's file table is full",
            errno.EAGAIN: ": no more processes; see 'ulimit -u'",
            errno.ENOSPC: f": {names.SHM_DIR} is full",
            errno.ENOMEM: ": out of memory"}.get(err, "")


def _signal_quietly(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _shm_free_mb() -> float:
    try:
        st = os.statvfs(names.SHM_DIR)
        return st.f_bavail * st.f_frsize / (1 << 20)
    except OSError:
        return 0.0


def _mem_available() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _memcg_room() -> tuple[int, str] | None:
    """Bytes left under the tightest memory limit of this process's memory cgroup
    and its ancestors (cgroup v1 or v2), and that cgroup's path; None if unlimited."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if "memory" in controllers.split(","):
            base, limit_f, usage_f = "/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        elif hid == "0" and controllers == "":
            base, limit_f, usage_f = "/sys/fs/cgroup", "memory.max", "memory.current"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            cg = "/" + "/".join(parts[:depth])
            d = os.path.join(base, *parts[:depth])
            try:
                with open(os.path.join(d, limit_f)) as f:
                    raw = f.read().strip()
                with open(os.path.join(d, usage_f)) as f:
                    usage = int(f.read().strip())
            except (OSError, ValueError):
                continue
            if raw == "max" or int(raw) >= 1 << 60:
                continue
            room = max(0, int(raw) - usage)
            if best is None or room < best[0]:
                best = (room, cg)
    return best


def __version__() -> str:
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
    return Run(scenario, policy, speed, overrides, echo, trace=trace).run()
