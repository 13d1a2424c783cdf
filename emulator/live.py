"""Live runs, from any shell: ``oomemu runs``, ``ps``, ``stop`` and ``inject``.

Everything here reads the run's shared memory directly (the zone and each
task's mm header), and acts with the same real objects the run uses: the
named semaphores (mmap_sem, locks), real signals, the mm's mailbox, and the
run's event FIFO, through which an injection gets into the run's log.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import time
from dataclasses import dataclass

import posix_ipc
import psutil

from . import names
from .cleanup import supervisor_alive
from .columns import columns
from .errors import UsageError
from .mm import (CMD_ALLOC, MMF_OOM_SKIP, MMF_OOM_VICTIM, MMF_UNSTABLE, PAGE_SIZE, STATE_NAMES,
                 TASK_DEAD, TASK_EXITING, TASK_UNINTERRUPTIBLE, Mm)
from .oom_kill import TaskView, oom_badness
from .zone import RunFacts, Zone


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@dataclass
class LiveRun:
    facts: RunFacts
    zone: Zone

    @property
    def run_id(self) -> str:
        return self.facts.run_id

    def now(self) -> float:
        """Emulated seconds since the run's time 0."""
        return (time.monotonic() - self.facts.t0) * self.facts.speed if self.facts.t0 else 0.0

    def mms(self) -> list[Mm]:
        out, i = [], 0
        while True:
            try:
                out.append(Mm(names.mm(self.run_id, i)))
            except posix_ipc.ExistentialError:
                return out
            i += 1

    def close(self) -> None:
        self.zone.close()


def _zone_owner(run_id: str) -> int | None:
    try:
        return os.stat(names.shm_path(names.zone(run_id), False)).st_uid
    except OSError:
        return None


def live_runs() -> tuple[list[LiveRun], list[tuple[str, int]]]:
    """Runs we can read, and (run id, owner uid) of live runs of other users we cannot."""
    runs, others = [], []
    for run_id, entries in names.leftovers().items():
        if not any(e.endswith(".zone") and not e.startswith("sem.") for e in entries):
            continue
        if names.run_pid(run_id) is None or not psutil.pid_exists(names.run_pid(run_id)):
            continue
        try:
            zone = Zone(run_id)
        except posix_ipc.PermissionsError:
            others.append((run_id, _zone_owner(run_id)))
            continue
        except (posix_ipc.ExistentialError, ValueError):
            continue
        if not supervisor_alive(run_id):
            zone.close()
            continue
        runs.append(LiveRun(zone.facts(), zone))
    return runs, others


def open_run(run_id: str, mine: bool = False) -> LiveRun:
    """The live run ``run_id``; a usage error if there is none (or, with ``mine``, not ours)."""
    if names.run_pid(run_id) is None:
        raise UsageError(f"{run_id!r} is not a run id (see 'oomemu runs')")
    try:
        zone = Zone(run_id)
    except posix_ipc.PermissionsError:
        owner = _zone_owner(run_id)
        raise UsageError(f"run {run_id} belongs to {_owner(owner) if owner is not None else 'another user'}: "
                         f"only its owner may look into it or inject into it") from None
    except (posix_ipc.ExistentialError, ValueError):
        raise UsageError(f"no run {run_id} on this machine (see 'oomemu runs')") from None
    if not supervisor_alive(run_id):
        zone.close()
        raise UsageError(f"run {run_id} has ended (its supervisor is gone; 'oomemu cleanup' removes what is left)")
    run = LiveRun(zone.facts(), zone)
    if mine and run.facts.uid != os.getuid():
        run.close()
        raise UsageError(f"run {run_id} belongs to {_owner(run.facts.uid)}: only its owner may inject into it")
    return run


def runs_table() -> str:
    rows = [("RUN", "SCENARIO", "POLICY", "SPEED", "OWNER", "AGE", "TASKS")]
    runs, others = live_runs()
    for r in runs:
        try:
            age = time.time() - psutil.Process(r.facts.supervisor_pid).create_time()
        except psutil.Error:
            age = 0.0
        n = len(r.mms())
        rows.append((r.run_id, r.facts.scenario, r.facts.policy, f"{r.facts.speed:g}",
                     _owner(r.facts.uid), f"{age:.0f}s", str(n)))
        r.close()
    for run_id, uid in others:
        rows.append((run_id, "?", "?", "?", _owner(uid) if uid is not None else "?", "?", "?"))
    if len(rows) == 1:
        return "oomemu: no live runs"
    return columns(rows)


def _pid_alive(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def task_state(mm: Mm) -> str:
    s = mm.state
    if s == TASK_DEAD:
        return "exited"
    if mm.pid and not _pid_alive(mm.pid):
        return "crashed"
    if s == TASK_EXITING:
        return "exiting"
    if mm.test_bit(MMF_OOM_VICTIM):
        return "victim,D" if s == TASK_UNINTERRUPTIBLE else "victim"
    return STATE_NAMES.get(s, "?")


def mmap_sem_holder(run: LiveRun, index: int, mm: Mm) -> str:
    try:
        sem = posix_ipc.Semaphore(names.mmap_sem(run.run_id, index))
    except posix_ipc.ExistentialError:
        return "-"
    try:
        if sem.value > 0:
            return "-"
        holder = mm.mmap_sem_holder
        return str(holder) if holder else "held"
    finally:
        sem.close()


def ps_table(run: LiveRun) -> str:
    now = time.monotonic()
    rows = [("PID", "NAME", "STATE", "ANON", "FILE", "SHMEM", "PGTBL", "ADJ", "BADNESS", "FLAGS",
             "DEADLINE", "MMAP_SEM")]
    k = PAGE_SIZE // 1024
    for i, mm in enumerate(run.mms()):
        try:
            kb = mm.rss_kb()
            memcg = mm.memcg
            total = run.zone.memcg(memcg)[0] if memcg else run.facts.total_pages
            view = TaskView(mm.pid, mm.comm, mm.oom_score_adj, mm.get_mm_rss(), mm.pgtables_pages,
                            has_mm=mm.state != TASK_DEAD, mmf_oom_skip=mm.test_bit(MMF_OOM_SKIP))
            flags = [f for bit, f in ((MMF_OOM_VICTIM, "VICTIM"), (MMF_OOM_SKIP, "MMF_OOM_SKIP"),
                                      (MMF_UNSTABLE, "MMF_UNSTABLE")) if mm.test_bit(bit)]
            dl = mm.reap_deadline
            deadline = "-" if not dl or mm.test_bit(MMF_OOM_SKIP) else f"{(dl - now) * run.facts.speed:.1f}s"
            rows.append((str(mm.pid), mm.comm, task_state(mm), f"{kb['anon_rss']}k", f"{kb['file_rss']}k",
                         f"{kb['shmem_rss']}k", f"{mm.pgtables_pages * k}k", str(mm.oom_score_adj),
                         str(oom_badness(view, total)), ",".join(flags) or "-", deadline,
                         mmap_sem_holder(run, i, mm)))
        finally:
            mm.close()
    free_kb = run.zone.free_pages() * k
    head = (f"run {run.run_id}: {run.facts.scenario} under {run.facts.policy}, t={run.now():.3f}s, "
            f"free {free_kb}kB of {run.facts.total_pages * k}kB")
    return head + "\n" + columns(rows)


# -- injection ---------------------------------------------------------------------

def find_task(run: LiveRun, name: str) -> tuple[int, Mm]:
    """A task of the run by name (or pid); a usage error naming the known ones otherwise."""
    found, known = None, []
    for i, mm in enumerate(run.mms()):
        known.append(mm.comm)
        if found is None and (mm.comm == name or str(mm.pid) == name):
            found = (i, mm)
        else:
            mm.close()
    if found is None:
        raise UsageError(f"run {run.run_id} has no task {name!r} (tasks: {', '.join(known)})")
    return found


def note(run: LiveRun, index: int, action: str, what: str) -> None:
    """Tell the run (its log and trace) what was injected. Best effort: the run may be ending."""
    rec = {"ev": "inject", "i": index, "t": time.monotonic(), "action": action, "what": what,
           "by": os.getpid()}
    try:
        fd = os.open(names.events(run.run_id), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def hold(run: LiveRun, sem_name: str, index: int, label: str, seconds: float | None, action: str,
         mm: Mm | None = None, echo=print) -> None:
    """Take a named semaphore (uninterruptibly), hold it for ``seconds`` or until Ctrl-C, let go."""
    try:
        sem = posix_ipc.Semaphore(sem_name)
    except posix_ipc.ExistentialError:
        raise UsageError(f"run {run.run_id} has no {label}") from None
    held = False
    try:
        try:
            try:
                held = sem.acquire(0) is None
            except posix_ipc.BusyError:
                echo(f"oomemu inject: waiting for {label} (someone holds it) ...")
                sem.acquire()
                held = True
            if mm is not None:
                mm.mmap_sem_holder = os.getpid()
            how = f"for {seconds:g}s" if seconds is not None else "until Ctrl-C"
            note(run, index, action, f"pid {os.getpid()} took {label} {how}")
            echo(f"oomemu inject: holding {label} {how} (pid {os.getpid()})")
            if seconds is None:
                signal.pause()
            else:
                time.sleep(seconds)
        except (KeyboardInterrupt, posix_ipc.SignalError):
            pass
        finally:
            if held:
                if mm is not None:
                    mm.mmap_sem_holder = 0
                sem.release()
                note(run, index, action, f"pid {os.getpid()} released {label}")
                echo(f"oomemu inject: released {label}")
    finally:
        sem.close()


def inject(run_id: str, action: str, target: str, arg: float | None = None, echo=print) -> None:
    run = open_run(run_id, mine=True)
    try:
        if action == "hold-lock":
            sem = names.lock(run.run_id, target)
            hold(run, sem, -1, f"lock {target}", arg, action, echo=echo)
            return
        index, mm = find_task(run, target)
        try:
            label = f"{mm.comm} (pid {mm.pid})"
            if action == "hold-mmap-sem":
                hold(run, names.mmap_sem(run.run_id, index), index, f"the mmap_sem of {label}", arg,
                     action, mm=mm, echo=echo)
                return
            if mm.state == TASK_DEAD or not _pid_alive(mm.pid):
                raise UsageError(f"task {label} of run {run.run_id} is gone")
            if action == "alloc":
                mm.post_command(CMD_ALLOC, float(arg))
                os.kill(mm.pid, signal.SIGUSR2)
                what = f"{label} asked to allocate {arg:g} MB"
            elif action in ("stop", "cont"):
                os.kill(mm.pid, signal.SIGSTOP if action == "stop" else signal.SIGCONT)
                what = f"{'SIGSTOP' if action == 'stop' else 'SIGCONT'} to {label}"
            elif action == "crash":
                note(run, index, action, f"real SIGKILL to {label}: what it holds stays held")
                os.kill(mm.pid, signal.SIGKILL)
                echo(f"oomemu inject: SIGKILL sent to {label}")
                return
            else:
                raise UsageError(f"unknown injection {action!r}")
            note(run, index, action, what)
            echo(f"oomemu inject: {what}")
        finally:
            mm.close()
    finally:
        run.close()


def stop(run_id: str) -> int:
    """Ask a run to end as Ctrl-C would (SIGINT to its supervisor)."""
    run = open_run(run_id, mine=True)
    pid = run.facts.supervisor_pid
    run.close()
    os.kill(pid, signal.SIGINT)
    return pid
