"""Live runs, from any shell: ``oomemu runs``, ``ps``, ``stop`` and ``inject``.

Everything here reads the run's shared memory directly (the zone and each
task's mm header), and acts with the same real objects the run uses: each
mm's mmap_sem (its state in the mm's header, its two wait queues: see
emulator.runtime.rwsem), the named semaphores of locks, real signals, the
mm's mailbox, and the run's event FIFO, through which an injection gets into
the run's log.

Nothing read is trusted further than it is checked (emulator.runtime.shm_trust,
emulator.runtime.proc_trust): a run is its zone file's owner's only if the zone says
the same uid, is laid out as oomemu lays it out and names a supervisor that
is alive, is that owner's and started when the zone says; its other objects
count only if that owner's and laid out as oomemu lays them; a process is
signalled only through a pidfd, once proven the run's supervisor or worker.
Anything else is skipped (``runs``, ``ps``) or refused in one line (exit 2).
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import closing
from dataclasses import dataclass, field

import posix_ipc
import psutil

from ..errors import UsageError
from ..kernel.mm_types import (MAX_MEMCGS, MMF_OOM_SKIP, MMF_OOM_VICTIM, MMF_UNSTABLE, PAGE_SIZE, PAGES_PER_MB,
                               TaskState)
from ..kernel.oom_kill import OomControl, TaskView, oom_evaluate_task
from ..runtime import names
from ..runtime.cleanup import dead_groups
from ..runtime.clock import emulated_now, release_slot_locked
from ..runtime.mm import CMD_ALLOC, HEADER_SIZE, Mm
from ..runtime.proc_trust import (NotProven, Proven, child_status, is_oomemu_run, prove, supervisor_check,
                                  worker_check)
from ..runtime.protocol import SIGWAKE, Event, encode
from ..runtime.rwsem import Interrupted, MmapSem, TooManyWaiters
from ..runtime.shm_trust import Refused, check_semaphore, open_checked, open_fifo_for_write, owner_of, user
from ..scenario import MMAP_THRESHOLD_MB, MMAP_THRESHOLD_PAGES
from ..runtime.zone import ZONE_HEADER, RunFacts, Zone
from .columns import columns
from .fold import name_tasks


class NoSuchRun(UsageError):
    """Nothing under that run id (or not a run id)."""


class NotOomemus(UsageError):
    """Something under the run id that oomemu did not lay out, or not for its owner."""


class OthersRun(UsageError):
    """A run of another user's, whose zone we may not read."""

    def __init__(self, message: str, owner: int | None):
        super().__init__(message)
        self.owner = owner


class RunEnded(UsageError):
    """The run's supervisor is gone: what is left is for ``oomemu cleanup``."""


def _path(posix_name: str) -> str:
    return names.shm_path(posix_name, False)


def shown(text: str) -> str:
    """A name read from shared memory, fit for a terminal and a column: whoever wrote it
    may have put escape sequences or blanks in it."""
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in text) or "?"


@dataclass
class LiveRun:
    """A run whose zone is checked and whose supervisor is held by a pidfd. Close it."""
    facts: RunFacts
    zone: Zone
    owner: int                      # the zone file's owner
    supervisor: Proven
    ignored: list[str] = field(default_factory=list)    # objects under its name, not its own

    @property
    def run_id(self) -> str:
        return self.facts.run_id

    def now(self) -> float:
        """Emulated seconds since the run's time 0: the run clock, read from the zone file
        now (the zone we hold is a copy of it as it was when opened)."""
        live = self.live_now()
        if live is not None:
            return live
        if not self.facts.t0:
            return 0.0
        return emulated_now(self.zone.clock_word, self.facts.speed, self.zone.min_due)

    def live_now(self) -> float | None:
        """The run clock read from the zone file now; None if it cannot be (the run ended)."""
        try:
            fd = open_checked(_path(names.zone(self.run_id)), self.owner)
        except (OSError, Refused):
            return None
        try:
            while True:                 # the word moves before a hold's cap rises: read until still
                head = os.pread(fd, ZONE_HEADER.size, 0)
                if len(head) != ZONE_HEADER.size:
                    return None
                again = os.pread(fd, 8, ZONE_HEADER.offset("clock"))
                if again == head[ZONE_HEADER.offset("clock"):ZONE_HEADER.offset("clock") + 8]:
                    break
        finally:
            os.close(fd)
        if not ZONE_HEADER.get(head, "t0"):
            return 0.0
        return emulated_now(ZONE_HEADER.get(head, "clock"), self.facts.speed, ZONE_HEADER.get(head, "min_due"))

    def mm_indices(self) -> list[int]:
        """Indices of the files named as this run's mms (anyone's: open_mm checks)."""
        out = []
        for entry in names.leftovers().get(self.run_id, []):
            _, what, sem = names.split_entry(entry)
            kind, _, index = what.partition(".")
            if not sem and kind == "mm" and index.isascii() and index.isdigit() and index == str(int(index)):
                out.append(int(index))
        return sorted(out)

    def open_mm(self, index: int, write: bool = False) -> Mm:
        """Task ``index``'s mm, checked: Refused if it is not the run's; FileNotFoundError."""
        path = _path(names.mm(self.run_id, index))
        try:
            fd = open_checked(path, self.owner, write=write)
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE or size % PAGE_SIZE:              # mmap would refuse 0 bytes
                os.close(fd)
                raise Refused(path, f"{size} bytes: not an oomemu mm")
            mm = Mm(names.mm(self.run_id, index), fd=fd)            # takes fd over
        except PermissionError as e:
            raise Refused(path, e.strerror) from None
        except ValueError as e:
            raise Refused(path, str(e).partition(": ")[2]) from None
        except OSError as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise Refused(path, e.strerror or str(e)) from None
        if not 0 <= mm.memcg < MAX_MEMCGS:
            mm.close()
            raise Refused(path, f"memcg {mm.memcg} out of range")
        return mm

    def each_mm(self, indices: list[int] | None = None):
        """(index, mm) for each of the run's mms (of ``indices``, default all), in task
        order; each is closed once the loop moves on. What is under an mm's name but not
        the run's is noted in ``ignored``."""
        for i in self.mm_indices() if indices is None else indices:
            try:
                mm = self.open_mm(i)
            except FileNotFoundError:
                continue
            except Refused as e:
                self.ignored.append(f"{os.path.basename(e.path)} ({e.why})")
                continue
            try:
                yield i, mm
            finally:
                mm.close()

    def prove_worker(self, index: int, pid: int) -> Proven:
        """The process ``pid`` held by a pidfd, if it is this run's worker ``index``."""
        return prove(pid, worker_check(self.owner, self.run_id, index, self.supervisor.pid))

    def check_semaphore(self, posix_name: str) -> None:
        check_semaphore(posix_name, self.owner)

    def close(self) -> None:
        self.zone.close()
        self.supervisor.close()


def _open(run_id: str) -> LiveRun:
    """The live run ``run_id``, every check passed; else one of the UsageErrors above."""
    pid = names.run_pid(run_id)
    if pid is None:
        raise NoSuchRun(f"{run_id!r} is not a run id (see 'oomemu runs')")
    path = _path(names.zone(run_id))
    try:
        fd = open_checked(path, None)          # its size is checked by Zone, for its task table
    except FileNotFoundError:
        raise NoSuchRun(f"no run {run_id} on this machine (see 'oomemu runs')") from None
    except PermissionError:
        owner = owner_of(path)
        raise OthersRun(f"run {run_id} belongs to {user(owner)}: only its owner may look into it "
                        f"or inject into it", owner) from None
    except Refused as e:
        raise NotOomemus(f"run {run_id} is not oomemu's: {e}") from None
    owner = os.fstat(fd).st_uid
    try:
        zone = Zone(run_id, fd=fd)                           # takes fd over, also on errors
    except ValueError as e:
        raise NotOomemus(f"run {run_id} is not oomemu's: {e}") from None
    except (posix_ipc.Error, OSError) as e:
        raise RunEnded(f"run {run_id} has ended ({e})") from None
    facts = zone.facts()
    if facts.uid != owner:
        zone.close()
        raise NotOomemus(f"run {run_id} is not oomemu's: its zone says it is {user(facts.uid)}'s, "
                         f"but {path} belongs to {user(owner)}")
    try:
        supervisor = prove(pid, supervisor_check(owner, facts.supervisor_ctime))
    except NotProven as e:
        zone.close()
        raise RunEnded(f"run {run_id} has ended ({e}; 'oomemu cleanup' removes what is left)") from None
    return LiveRun(facts, zone, owner, supervisor)


def open_run(run_id: str, mine: str | None = None) -> LiveRun:
    """The live run ``run_id``; a usage error if there is none. ``mine``: what only the
    run's owner may do to it ("inject into", "stop"), refused to anyone else, root too."""
    run = _open(run_id)
    if mine and run.owner != os.getuid():
        run.close()
        raise OthersRun(f"run {run_id} belongs to {user(run.owner)}: only its owner may {mine} it",
                        run.owner)
    return run


# -- oomemu runs ---------------------------------------------------------------------

@dataclass
class Survey:
    live: list[LiveRun]
    unreadable: list[tuple[str, int | None]]          # (run id, owner): live runs we may not read
    dead: dict[int, dict[str, int]]                   # owner -> run id -> objects left


def _others_run_alive(run_id: str, owner: int | None) -> bool:
    """A run we may not read: is a process of its owner's at the run id's pid?"""
    try:
        return psutil.Process(names.run_pid(run_id)).uids().real == owner
    except (psutil.Error, ValueError, TypeError):
        return False


def survey() -> Survey:
    """Every run name in /dev/shm: the live runs (open: close them), the live runs of
    others we may not read, and the objects of dead runs that cleanup would remove."""
    s = Survey([], [], {})
    try:
        for run_id in names.leftovers():
            try:
                s.live.append(_open(run_id))
            except OthersRun as e:
                if _others_run_alive(run_id, e.owner):
                    s.unreadable.append((run_id, e.owner))
            except UsageError:
                pass
        for run_id, owner, entries in dead_groups():
            s.dead.setdefault(owner, {})[run_id] = len(entries)
    except BaseException:
        for run in s.live:
            run.close()
        raise
    return s


def _owner_column(uid: int | None) -> str:
    """A user name, or the bare uid (as ls -l shows it), so that columns split on blanks."""
    return "?" if uid is None else user(uid).removeprefix("uid ")


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def runs_table() -> str:
    rows = [("RUN", "SCENARIO", "POLICY", "SPEED", "OWNER", "AGE", "TASKS")]
    s = survey()
    try:
        for r in s.live:
            age = time.time() - r.supervisor.info.create_time
            tasks = sum(1 for _ in r.each_mm())
            rows.append((r.run_id, shown(r.facts.scenario), shown(r.facts.policy), f"{r.facts.speed:g}",
                         _owner_column(r.owner), f"{age:.0f}s", str(tasks)))
    finally:
        for r in s.live:
            r.close()
    for run_id, uid in s.unreadable:
        rows.append((run_id, "?", "?", "?", _owner_column(uid), "?", "?"))
    lines = [columns(rows) if len(rows) > 1 else "oomemu: no live runs"]
    me = os.getuid()
    mine = s.dead.get(me, {})
    if mine:
        lines.append(f"oomemu: {_plural(len(mine), 'dead run')} left {_plural(sum(mine.values()), 'object')} "
                     f"in {names.SHM_DIR}: 'oomemu cleanup' removes them")
    others = {uid: runs for uid, runs in s.dead.items() if uid != me}
    if others:
        n = sum(sum(runs.values()) for runs in others.values())
        lines.append(f"oomemu: {_plural(n, 'object')} in {names.SHM_DIR} of "
                     f"{', '.join(user(u) for u in sorted(others))} under run names belong to no live "
                     f"run of theirs: only their owner's 'oomemu cleanup' removes them")
    return "\n".join(lines)


# -- oomemu ps -------------------------------------------------------------------------

def task_state(run: LiveRun, index: int, mm: Mm, shared: Mm | None = None) -> str:
    """What ps shows in STATE. ``crashed``: the mm is not done, but the run's worker for
    it is gone (a pid that is no longer a child of the run's supervisor, the owner's,
    counts as gone: proc_trust.child_status, which reads and never signals). ``shared``:
    the mm the task uses if it shares another task's (its flags are that mm's)."""
    s = mm.state
    flags = shared or mm
    if s == TaskState.TASK_DEAD:
        return "exited"
    if mm.pid == 0:
        return _label(s)                         # not started yet
    status = child_status(mm.pid, run.owner, run.supervisor.pid)
    if status is None:
        return "crashed"
    if status in ("T", "t"):                     # stopped (SIGSTOP), or stopped by a tracer
        return "stopped"
    if s == TaskState.EXITING:
        return "exiting"
    if flags.test_bit(MMF_OOM_VICTIM):
        return "victim,D" if s == TaskState.TASK_UNINTERRUPTIBLE else "victim"
    return _label(s)


def _label(state: int) -> str:
    try:
        return TaskState(state).label
    except ValueError:
        return "?"


def badness(mm: Mm, state: str, totalpages: int, task: Mm | None = None) -> str:
    """What select_bad_process makes of this task, as the supervisor's _view() sees it:
    its oom_badness if it is a candidate; ``-`` if it is not (exited, no mm left,
    MMF_OOM_SKIP, oom_score_adj -1000); ``abort`` for a victim that still has its mm
    and no MMF_OOM_SKIP: a scan that meets it stops there and kills nobody. ``task``:
    the task's own segment if it shares ``mm`` (CLONE_VM): it has the mm's badness."""
    crashed = state == "crashed"
    task = task or mm
    # Task.has_mm: a crashed task's mm stays, and is a candidate, while it holds pages
    has_mm = mm.resident_pages() > 0 if crashed else task.state != TaskState.TASK_DEAD
    view = TaskView(task.pid, task.comm, mm.oom_score_adj, mm.get_mm_rss(), mm.pgtables_pages,
                    has_mm=has_mm, oom_victim=mm.test_bit(MMF_OOM_VICTIM),
                    mmf_oom_skip=mm.test_bit(MMF_OOM_SKIP), memcg=mm.memcg)
    oc = OomControl(totalpages=totalpages)
    if not oom_evaluate_task(view, oc):
        return "abort"
    return str(oc.chosen_points) if oc.chosen is not None else "-"


def mmap_sem_column(mm: Mm) -> str:
    """ps's MMAP_SEM: who holds the task's mmap_sem and who waits (``w:1234``,
    ``r:1234,1240``, ``+1w queued``), dead ones marked ``(dead)``; ``-`` if free."""
    return MmapSem(mm, None, None).snapshot().describe()


def _shared_mm(run: LiveRun, index: int, own: Mm, indices: list[int]) -> Mm | None:
    """The mm task ``index`` uses if it shares another task's (its header's ``shares_mm``),
    opened and checked as its own was; None if it has its own (or that one is not there)."""
    owner = own.shares_mm - 1
    if owner < 0 or owner == index or owner not in indices:
        return None
    try:
        return run.open_mm(owner)
    except (FileNotFoundError, Refused):
        return None


PS_FOLD_AT = 40       # tasks: past this many, ps shows those that matter and one line for the rest
PS_NEXT = 5           # ... and, of the rest, the ones select_bad_process would choose next
_QUIET_STATES = ("running", "new")


@dataclass
class PsRow:
    cells: list[str]
    oom_score_adj: int
    points: int | None                 # its oom_badness, if it is a candidate

    @property
    def matters(self) -> bool:
        """Anything to show: a state other than running (or starting), a flag, its
        mmap_sem held or waited for, an mm shared. The rest look alike, but for BADNESS."""
        state, whose, flags, mmap_sem = self.cells[3], self.cells[9], self.cells[11], self.cells[13]
        return state not in _QUIET_STATES or (flags, mmap_sem, whose) != ("-", "-", "-")


PS_HEADER = ("PID", "NAME", "MEMCG", "STATE", "ANON", "FILE", "SHMEM", "PGTBL", "ADJ", "MM", "BADNESS", "FLAGS",
             "DEADLINE", "MMAP_SEM")


def ps_rows(run: LiveRun) -> list[PsRow]:
    """A row per task, in task order, each mm opened once (a thousand tasks: ~0.3 s)."""
    now = run.now()
    k = PAGE_SIZE // 1024
    indices = run.mm_indices()
    rows: dict[int, PsRow] = {}
    sharers = set()                    # owners of an mm that others share
    for i, own in run.each_mm(indices):
        if own.shares_mm:
            sharers.add(own.shares_mm - 1)
        shared = _shared_mm(run, i, own, indices)
        try:
            rows[i] = _ps_row(run, i, own, shared, now, k)
        finally:
            if shared is not None:
                shared.close()
    for i in sharers & rows.keys():    # an owner's MM column names itself, as its sharers' do
        rows[i].cells[9] = rows[i].cells[1]
    return list(rows.values())


def ps_table(run: LiveRun, show_all: bool = False) -> str:
    """The run's head line and its tasks' table. Past PS_FOLD_AT tasks (and without
    ``show_all``), only the tasks that matter (PsRow.matters) and the PS_NEXT next in
    line by badness get a row, in task order; one last line names the others."""
    rows = ps_rows(run)
    visible, folded = rows, []
    if not show_all and len(rows) > PS_FOLD_AT:
        quiet = [n for n, r in enumerate(rows) if not r.matters]
        nxt = set(sorted((n for n in quiet if rows[n].points is not None),
                         key=lambda n: (-rows[n].points, -n))[:PS_NEXT])     # ties: the later, as the scan
        keep = set(range(len(rows))) - set(quiet) | nxt
        visible = [r for n, r in enumerate(rows) if n in keep]
        folded = [r for n, r in enumerate(rows) if n not in keep]
    k = PAGE_SIZE // 1024
    free_kb = run.zone.free_pages() * k
    head = (f"run {run.run_id}: {shown(run.facts.scenario)} under {shown(run.facts.policy)}, "
            f"t={run.now():.3f}s, free {free_kb}kB of {run.facts.total_pages * k}kB")
    from .door import door_of                   # its door, if it writes one (docs/door.md)
    door = door_of(run)
    head += page_cache_line(run.zone) + (f"; door {door}" if door else "")
    out = head + "\n" + columns([PS_HEADER] + [tuple(r.cells) for r in visible])
    if folded:
        out += "\n" + folded_ps_line(folded, run.run_id)
    return out


def folded_ps_line(folded: list[PsRow], run_id: str) -> str:
    """``287 more tasks running, nothing held or flagged: cached-0..276 (oom_score_adj ...)``."""
    new = sum(1 for r in folded if r.cells[3] == "new")
    what = "more task" + ("" if len(folded) == 1 else "s")
    how = "running" if not new else ("starting (new)" if new == len(folded) else f"running or starting ({new} new)")
    names = name_tasks([(r.cells[1], r.oom_score_adj) for r in folded])
    return (f"{len(folded)} {what} {how}, nothing held or flagged, lower BADNESS: {names}; "
            f"'oomemu ps {run_id} --all' shows every task")


def page_cache_line(zone) -> str:
    """What the page-cache and shmem objects hold, apart from any task (empty if none)."""
    k = PAGE_SIZE // 1024
    cache = [zone.object_charged(o) for o in range(zone.nr_objects) if zone.object_kind(o) == "file"]
    shmem = [zone.object_charged(o) for o in range(zone.nr_objects) if zone.object_kind(o) == "shmem"]
    if not cache and not shmem:
        return ""
    dirty = sum(zone.object_field(o, "dirty") for o in range(zone.nr_objects))
    return f"; page cache {sum(cache) * k}kB ({dirty * k}kB dirty), shmem {sum(shmem) * k}kB"


def _ps_row(run: LiveRun, i: int, own: Mm, shared: Mm | None, now: float, k: int) -> PsRow:
    """One task's row: its pid, name and state are its own; the rest its mm's. MM: the name
    of the task whose mm it is, for a task sharing another's (CLONE_VM); ``-``: its own
    (ps_rows names the owner there too if others share it)."""
    mm = shared or own
    kb = mm.rss_kb()
    total = run.facts.total_pages
    if mm.memcg and run.zone.memcg(mm.memcg)[0] > 0:
        total = run.zone.memcg(mm.memcg)[0]        # as a memcg OOM scores it
    state = task_state(run, i, own, shared)
    flags = [f for bit, f in ((MMF_OOM_VICTIM, "VICTIM"), (MMF_OOM_SKIP, "MMF_OOM_SKIP"),
                              (MMF_UNSTABLE, "MMF_UNSTABLE")) if mm.test_bit(bit)]
    dl = mm.reap_deadline
    deadline = "-" if not dl or mm.test_bit(MMF_OOM_SKIP) else f"{dl - now:.1f}s"
    whose = shown(mm.comm) if shared is not None else "-"
    points = badness(mm, state, total, own)
    cells = [str(own.pid), shown(own.comm), shown(run.zone.memcg_tree.path(mm.memcg)), state, f"{kb['anon_rss']}k",
             f"{kb['file_rss']}k", f"{kb['shmem_rss']}k", f"{mm.pgtables_pages * k}k", str(mm.oom_score_adj), whose,
             points, ",".join(flags) or "-", deadline, mmap_sem_column(mm)]
    return PsRow(cells, mm.oom_score_adj, int(points) if points.lstrip("-").isdigit() else None)


def ignored_line(run: LiveRun) -> str | None:
    """One line on what was under the run's name but not its own (None: nothing)."""
    if not run.ignored:
        return None
    shown = "; ".join(run.ignored[:3]) + ("; ..." if len(run.ignored) > 3 else "")
    return f"ignored {_plural(len(run.ignored), 'object')} under run {run.run_id}'s name: {shown}"


# -- injection ---------------------------------------------------------------------

def find_task(run: LiveRun, name: str) -> tuple[int, str, int]:
    """(index, comm, pid) of a task of the run by name (or pid); a usage error naming
    the known ones otherwise."""
    known = []
    with closing(run.each_mm()) as mms:
        for i, mm in mms:
            comm, pid = shown(mm.comm), mm.pid
            known.append(comm)
            if comm == name or str(pid) == name:
                return i, comm, pid
    raise UsageError(f"run {run.run_id} has no task {name!r} (tasks: {', '.join(known)})")


def note(run: LiveRun, index: int, action: str, what: str) -> None:
    """Tell the run (its log and trace) what was injected. Best effort: the run may be ending."""
    line = encode(Event.INJECT, index, run.now(), action=action, what=what, by=os.getpid())
    fd = open_fifo_for_write(names.events(run.run_id), run.owner)
    if fd is None:
        return
    try:
        os.write(fd, line)
    except OSError:
        pass
    finally:
        os.close(fd)


def _wait_out(run: LiveRun, seconds: float | None) -> None:
    """Hold on for ``seconds`` of the run's time, or until Ctrl-C (KeyboardInterrupt).
    The run clock stands while tasks work and waits for late sleepers, so its seconds
    take a little longer than real ones: a hold of 6 s is 6 s to the run."""
    if seconds is None:
        signal.pause()
        return
    end = run.now() + seconds
    while (now := run.live_now()) is not None and (left := end - now) > 0:
        time.sleep(min(left / run.facts.speed, 0.5) + 0.0005)      # the run's end: let go


def hold(run: LiveRun, sem_name: str, index: int, label: str, seconds: float | None, action: str,
         echo=print) -> None:
    """Take a named semaphore (a lock), hold it for ``seconds`` or until Ctrl-C, let go."""
    try:
        run.check_semaphore(sem_name)
        sem = posix_ipc.Semaphore(sem_name)
    except (FileNotFoundError, posix_ipc.ExistentialError):
        raise UsageError(f"run {run.run_id} has no {label}") from None
    except Refused as e:
        raise UsageError(f"run {run.run_id}: {label} is not the run's: {e}") from None
    held = False
    try:
        try:
            try:
                held = sem.acquire(0) is None
            except posix_ipc.BusyError:
                echo(f"oomemu inject: waiting for {label} (someone holds it) ...")
                sem.acquire()
                held = True
            how = f"for {seconds:g}s" if seconds is not None else "until Ctrl-C"
            note(run, index, action, f"pid {os.getpid()} took {label} {how}")
            echo(f"oomemu inject: holding {label} {how} (pid {os.getpid()})")
            _wait_out(run, seconds)
        except (KeyboardInterrupt, posix_ipc.SignalError):
            pass
        finally:
            if held:
                sem.release()
                note(run, index, action, f"pid {os.getpid()} released {label}")
                echo(f"oomemu inject: released {label}")
    finally:
        sem.close()


def open_mmap_sem(run: LiveRun, index: int, mm: Mm, label: str) -> MmapSem:
    """Task ``index``'s mmap_sem over ``mm`` (opened to write), its two semaphores checked."""
    sems = (names.mmap_sem_readers(run.run_id, index), names.mmap_sem_writers(run.run_id, index))
    try:
        for name in sems:
            run.check_semaphore(name)
        return MmapSem.open(run.run_id, index, mm, label)
    except (FileNotFoundError, posix_ipc.ExistentialError):
        raise UsageError(f"run {run.run_id} has no {label}") from None
    except Refused as e:
        raise UsageError(f"run {run.run_id}: {label} is not the run's: {e}") from None


def hold_mmap_sem(run: LiveRun, index: int, mm: Mm, label: str, mode: str, seconds: float | None,
                  echo=print) -> None:
    """down_read/down_write on a task's mmap_sem as another process would (holding a
    reference to its mm), hold it for ``seconds`` or until Ctrl-C, let go. A wait for it
    takes its place in the FIFO; Ctrl-C while waiting leaves the queue."""
    sem = open_mmap_sem(run, index, mm, label)
    me = os.getpid()
    try:
        def on_wait(on: bool) -> None:
            if on:
                echo(f"oomemu inject: waiting for {label} for {mode} ({sem.state().describe()}) ...")
        # A handler that does not raise, so that a Ctrl-C interrupts the wait (EINTR) and
        # the wait leaves the queue itself, instead of a KeyboardInterrupt mid-way.
        previous = signal.signal(signal.SIGINT, lambda *_: None)
        try:
            got = sem.down(me, mode, foreign=True, on_wait=on_wait, killable=True)
        except Interrupted:
            echo(f"oomemu inject: gave up waiting for {label}")
            return
        except TooManyWaiters as e:
            raise UsageError(str(e)) from None
        finally:
            signal.signal(signal.SIGINT, previous)
        if not got:
            raise UsageError(f"{label}: the mm is gone (its task has exited)")
        try:
            how = f"for {seconds:g}s" if seconds is not None else "until Ctrl-C"
            note(run, index, "hold-mmap-sem", f"pid {me} took {label} for {mode} {how}")
            echo(f"oomemu inject: holding {label} for {mode} {how} (pid {me})")
            _wait_out(run, seconds)
        except (KeyboardInterrupt, posix_ipc.SignalError):
            pass
        finally:
            sem.up(me, mode, foreign=True)
            note(run, index, "hold-mmap-sem", f"pid {me} released {label}")
            echo(f"oomemu inject: released {label}")
    finally:
        sem.close()


def run_locks(run: LiveRun) -> list[str]:
    """The names of the run's locks, from its semaphores in /dev/shm (its owner's only)."""
    out = []
    for entry in names.leftovers().get(run.run_id, []):
        _, what, sem = names.split_entry(entry)
        kind, _, lname = what.partition(".")
        if sem and kind == "lock" and names.valid_name(lname):
            try:
                run.check_semaphore(names.lock(run.run_id, lname))
            except (Refused, OSError):
                continue
            out.append(lname)
    return sorted(out)


def alloc_room(mm: Mm) -> int:
    """Pages the task can still grow by: the room left in its grow VMA, the first anon one
    (see supervisor._layout: it has room for the whole zone more; if a task had no anon
    VMA, one was added last)."""
    for vma in mm.vmas():
        if vma.kind == "anon":
            return vma.capacity - vma.nr_pages
    return 0


def _inject_lock(run: LiveRun, target: str, seconds, echo) -> None:
    if not names.valid_name(target):
        raise UsageError(f"{target!r} is not a lock name (1 to {names.NAME_MAX} letters, digits, '-' or '_')")
    locks = run_locks(run)
    if target not in locks:
        raise UsageError(f"run {run.run_id} has no lock {target} "
                         f"({'locks: ' + ', '.join(locks) if locks else 'it has no locks'})")
    hold(run, names.lock(run.run_id, target), -1, f"lock {target}", seconds, "hold-lock", echo=echo)


def inject(run_id: str, action: str, target: str, arg: float | None = None, echo=print,
           mode: str = "write") -> None:
    """``mode``: how ``hold-mmap-sem`` takes it, "read" or "write"."""
    if action not in ("hold-lock", "hold-mmap-sem", "alloc", "stop", "cont", "crash"):
        raise UsageError(f"unknown injection {action!r}")
    if mode not in ("read", "write"):
        raise UsageError(f"mmap_sem mode {mode!r}: read or write")
    run = open_run(run_id, mine="inject into")
    try:
        if action == "hold-lock":
            _inject_lock(run, target, arg, echo)
            return
        index, comm, pid = find_task(run, target)
        label = f"{comm} (pid {pid})"
        try:
            mm = run.open_mm(index, write=True)
        except (Refused, FileNotFoundError) as e:
            raise UsageError(f"task {label} of run {run.run_id}: {e}") from None
        try:
            if action == "hold-mmap-sem" and (owner := _shared_mm(run, index, mm, run.mm_indices())):
                whose = f"{shown(owner.comm)} (pid {owner.pid})"
                owner.close()
                raise UsageError(f"task {label} of run {run.run_id} shares the mm of {whose}: its "
                                 f"mmap_sem is that task's, hold it there")
            if action == "hold-mmap-sem":
                hold_mmap_sem(run, index, mm, f"the mmap_sem of {label}", mode, arg, echo=echo)
                return
            if mm.state == TaskState.TASK_DEAD:
                raise UsageError(f"task {label} of run {run.run_id} is gone")
            try:
                worker = run.prove_worker(index, mm.pid)
            except NotProven as e:
                raise UsageError(f"task {label} of run {run.run_id} is gone ({e})") from None
            with worker:
                _signal_task(run, index, mm, worker, label, action, arg, echo)
        finally:
            mm.close()
    finally:
        run.close()


def _check_alloc(task: Mm, mm: Mm, label: str, arg: float) -> None:
    """An injected alloc that the task (its own segment ``task``, using ``mm``) can make."""
    pages, room = round(arg * PAGES_PER_MB), alloc_room(mm)
    if pages < 1:
        raise UsageError(f"alloc {arg:g} MB: less than a page")
    if pages > room:
        raise UsageError(f"alloc {arg:g} MB: task {label} can grow by at most "
                         f"{room / PAGES_PER_MB:g} MB more")
    held = MmapSem(mm, None, None).state(check_alive=False)
    if pages >= MMAP_THRESHOLD_PAGES and held.holds(task.pid) == "read":
        raise UsageError(f"alloc {arg:g} MB: task {label} holds its own mmap_sem for read, and an "
                         f"alloc of {MMAP_THRESHOLD_MB:g} MB or more maps memory first: "
                         f"down_write under its own read lock would deadlock")


def _signal_task(run: LiveRun, index: int, mm: Mm, worker: Proven, label: str, action: str,
                 arg, echo) -> None:
    """alloc, stop, cont, crash: the signal goes through the proven worker's pidfd."""
    try:
        if action == "alloc":
            shared = _shared_mm(run, index, mm, run.mm_indices())    # its allocs grow that mm
            try:
                _check_alloc(mm, shared or mm, label, arg)
            finally:
                if shared is not None:
                    shared.close()
            mm.post_command(CMD_ALLOC, float(arg))
            worker.send_signal(SIGWAKE)
            what = f"{label} asked to allocate {arg:g} MB"
        elif action == "stop":

            _stop_at_a_safe_point(run, index, mm, worker)
            what = f"SIGSTOP to {label}"
        elif action == "cont":
            worker.send_signal(signal.SIGCONT)
            what = f"{'SIGSTOP' if action == 'stop' else 'SIGCONT'} to {label}"
        else:                                                   # crash
            note(run, index, action, f"real SIGKILL to {label}: what it holds stays held")
            worker.send_signal(signal.SIGKILL)
            echo(f"oomemu inject: SIGKILL sent to {label}")
            return
    except ProcessLookupError:
        raise UsageError(f"task {label} of run {run.run_id} is gone") from None
    note(run, index, action, what)
    echo(f"oomemu inject: {what}")


def _stop_at_a_safe_point(run: LiveRun, index: int, mm: Mm, worker: Proven) -> None:
    """SIGSTOP a task, never inside its mm's guard or the zone lock (a task stopped there
    would stop the whole run with it): both are taken first, so the task is outside them
    (or waiting for them) when it stops. A stopped task holding the run clock (at its
    time, or frozen) would stop the run's time too: it gives that back as it stops, so
    the run's time goes on without it (see emulator.runtime.clock)."""
    try:
        fd = open_checked(_path(names.zone(run.run_id)), run.owner, write=True)
        zone = Zone(run.run_id, fd=fd)
    except (OSError, Refused, ValueError, posix_ipc.Error):
        raise UsageError(f"run {run.run_id} has ended") from None
    try:
        with mm.guard(), zone.lock():
            worker.send_signal(signal.SIGSTOP)
            release_slot_locked(zone, index)
    finally:
        zone.close()


def stop(run_id: str) -> int:
    """Ask a run to end as Ctrl-C would: SIGINT to its supervisor, proven and held by a
    pidfd, and started by 'oomemu run' (a run inside another program is not ours to stop)."""
    run = open_run(run_id, mine="stop")
    try:
        sup = run.supervisor
        if not is_oomemu_run(sup.info.cmdline):
            raise UsageError(f"run {run_id} was not started by 'oomemu run' (its supervisor, pid "
                             f"{sup.pid}, is {' '.join(sup.info.cmdline)[:60]!r}): stop it there")
        try:
            sup.send_signal(signal.SIGINT)
        except ProcessLookupError:
            raise RunEnded(f"run {run_id} has ended") from None
        return sup.pid
    finally:
        run.close()
