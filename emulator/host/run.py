"""A host run: a scenario on the machine's own kernel, under its own OOM killer and reaper.

The zone becomes a memory cgroup of the run (limit ``memory_mb``, plus what
the task processes' own interpreters hold before they touch anything), the
scenario's memcgs its children. Each task is a real process
(``emulator.host.task``) that joins its memcg before it allocates, then maps
and touches its memory as the scenario says, in file order, so that page
cache and shmem are charged to the first mapper as the loader assumes. At
time 0 every task starts its steps. What the kernel did comes from its own
log (/dev/kmsg, on the run's time base: ``emulator.host.kmsg``) and from the
processes' deaths (pidfds): kills, victims, reaps. The verdict is decided as
for an emulated run: ``resolved`` when every task has done its steps or
died and no allocation is under way, ``hung`` when ``run_deadline_s``
passes first. There is no panic in a memcg: see ``features``.

``oom_score_adj`` below 0 needs CAP_SYS_RESOURCE. Without it the run raises
every other task's instead (by the same amount, capped at 1000), says so,
and marks the run ``diverged`` if a task meant to be spared is killed.

Nothing survives the run: processes, the FUSE mount, the memcgs, the files;
also when it is interrupted (deferred signals, as emulated runs do); after a
SIGKILL of the run itself, ``oomemu cleanup`` removes the rest
(:func:`cleanup_leftovers`).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time

from ..errors import EnvironmentProblem, UsageError
from ..kernel.mm_types import PAGES_PER_MB, PAGE_SIZE
from ..kernel.verdict import Verdict
from ..result import RunResult, VictimRecord
from ..runtime import names, signals
from ..runtime.trace import Tracer
from ..scenario import Scenario
from . import features

POLICY = "host"
LINGER_S = 5.0                  # after the verdict, how long the run waits for dying victims
SPAWN_TIMEOUT_S = 60.0
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DISK_DIR = "/var/tmp"           # page cache needs a disk file system (not tmpfs: that is shmem)
SHM_DIR = "/dev/shm"
DIR_PREFIX = f"{names.PREFIX}-host."


class _Policy:
    name = POLICY


class HostTaskRecord:
    def __init__(self, index: int, spec):
        self.index, self.spec = index, spec
        self.proc: subprocess.Popen | None = None
        self.ctl: socket.socket | None = None
        self.rbuf = b""
        self.pidfd = -1
        self.allocating = False
        self.steps_done = False
        self.exited = False
        self.exited_at: float | None = None
        self.fault: str | None = None
        self.victim: VictimRecord | None = None
        self.hold_address = 0                      # its FUSE hold page (features.held_tasks), 0: none
        self.eof = False                           # its socket has said all it will
        self.writer_wfd = -1                       # features.written_tasks: the pipe to its writer thread

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0


def check_host() -> str:
    """The machine can run host mode: root, a writable memory controller. Returns the
    cgroup version ("v1" or "v2"); EnvironmentProblem in one line if not."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("--policy host needs root: it makes memory cgroups, mounts a FUSE file "
                                 "system and reads /dev/kmsg (run it as root, or use an emulated policy)")
    from .cgroup import find_memory_hierarchy
    return "v2" if find_memory_hierarchy().version == 2 else "v1"


CAP_IPC_LOCK = 14
CAP_SYS_RESOURCE = 24           # a negative oom_score_adj needs it


def kvm_usable() -> bool:
    """/dev/kvm can be opened (root here: it is crw------- root)."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        return True
    except OSError:
        return False


def _has_capability(bit: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            eff = next(line for line in f if line.startswith("CapEff:"))
        return bool(int(eff.split()[1], 16) >> bit & 1)
    except (OSError, StopIteration, ValueError):
        return False


def refuse(scenario: Scenario, version: str) -> None:
    """UsageError, one line, if the scenario has something a host run cannot make real."""
    lines = features.refusals(scenario, version == "v2", kvm=kvm_usable())
    if lines:
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise UsageError(f"{scenario.name}: --policy host cannot make real {lines[0]}{more}")


class HostRun:
    def __init__(self, scenario: Scenario, echo=None, trace: str | None = None, on_start=None):
        self.scenario = scenario
        self.policy = _Policy()
        self.speed = 1.0
        self.echo = echo
        self.run_id = names.new_run_id()
        self._trace_path = trace
        self._on_start = on_start
        self.version = check_host()
        refuse(scenario, self.version)
        if features.needs_fuse(scenario):
            from .fuse import check_environment
            check_environment()
        if any(v.mlocked for t in scenario.tasks for v in t.vmas) and not _has_capability(CAP_IPC_LOCK):
            raise EnvironmentProblem(f"{scenario.name}: mlocked memory on the host needs CAP_IPC_LOCK "
                                     f"(RLIMIT_MEMLOCK is {_memlock_limit()})")
        self.tasks = [HostTaskRecord(i, t) for i, t in enumerate(scenario.tasks)]
        self.by_pid: dict[int, HostTaskRecord] = {}
        self.by_name = {t.name: t for t in self.tasks}
        self.memcgs = None
        self.fs = None
        self.fs_files: set[str] = set()
        self.klog = None
        self._kcarry: list = []                    # kernel log records waiting for the next read
        self.tracer: Tracer | None = None
        self.dirs: list[str] = []
        self.objects: dict[str, str] = {}          # named shmem object -> its file
        self.object_paths: list[str] = []          # per object index
        self.lines: list[str] = []
        self.notes: list[str] = []
        self.t0 = 0.0
        self.kills = 0
        self.victims: list[HostTaskRecord] = []
        self.first_oom_at: float | None = None
        self.verdict: Verdict | None = None
        self.resolved_at: float | None = None
        self.error: str | None = None
        self.signals = signals.DeferredSignals()

    # -- time and output ---------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0 if self.t0 else 0.0

    def printk(self, line: str, at: float | None = None) -> None:
        text = "[%12.6f] %s" % (self.now() if at is None else at, line)
        self.lines.append(text)
        if self.echo is not None:
            self.echo(text)

    def trace(self, ev: str, t: HostTaskRecord | None = None, at: float | None = None, **fields) -> None:
        if self.tracer is not None:
            self.tracer.emit(ev, t.pid if t else 0, t.name if t else "", at, **fields)

    # -- set-up --------------------------------------------------------------------------
    def _prepare_files(self) -> None:
        """A file per page-cache object on a disk file system, written, synced and dropped
        from the page cache (so that the first mapper's reads charge it to its memcg); a
        file per shmem object on tmpfs (the first mapper's writes allocate and charge it)."""
        disk = os.path.join(DISK_DIR, DIR_PREFIX + self.run_id)
        shm = os.path.join(SHM_DIR, DIR_PREFIX + self.run_id)
        for d in (disk, shm):
            os.mkdir(d, 0o700)
            self.dirs.append(d)
        zeros = b"\0" * (1 << 20)
        for k, o in enumerate(self.scenario.objects):
            size = o.pages * PAGE_SIZE
            if o.kind == "shmem":
                path = os.path.join(shm, f"obj{k}")
                with open(path, "wb") as f:
                    f.truncate(size)
            else:
                path = os.path.join(disk, f"obj{k}")
                with open(path, "wb") as f:
                    left = size
                    while left > 0:
                        left -= f.write(zeros[:min(left, len(zeros))])
                    f.flush()
                    os.fsync(f.fileno())
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            self.object_paths.append(path)
            if o.name:
                self.objects[o.name] = path

    def _task_spec(self, t: HostTaskRecord) -> dict:
        vmas = []
        for v, k in zip(t.spec.vmas, t.spec.vma_objects or (-1,) * len(t.spec.vmas)):
            vmas.append({"kind": v.kind, "pages": round(v.mb * PAGES_PER_MB), "mlocked": v.mlocked,
                         "dirty_pages": round(v.dirty_mb * PAGES_PER_MB),
                         "path": self.object_paths[k] if k >= 0 else None})
        spec = {"name": t.name, "vmas": vmas, "pgtables_pages": round(t.spec.pgtables_mb * PAGES_PER_MB),
                "kvm": t.spec.mmu_notifier == "nonblocking",
                "steps": [{"op": s.op, "mb": s.mb, "ms": s.ms, "name": s.name, "task": s.task, "mode": s.mode}
                          for s in t.spec.steps],
                "objects": self.objects}
        if self.fs is not None and any(s.op == "busy" for s in t.spec.steps):
            busy = sum(s.op == "busy" for s in t.spec.steps)
            spec["fuse_path"] = self.fs.add_file(f"busy{t.index}", (busy + 1) << 20)
            self.fs_files.add(f"busy{t.index}")
        if self.fs is not None and t.name in features.held_tasks(self.scenario):
            spec["hold_path"] = self.fs.add_file(f"hold{t.index}", 1 << 20)
            self.fs.gate(f"hold{t.index}", None)   # closed: a read of it holds until mmap_sem_up
        return spec

    def _oom_score_adjs(self) -> dict[int, int]:
        """What each task's oom_score_adj is set to: its own, or, without CAP_SYS_RESOURCE
        (a negative value is refused), everyone's raised so the lowest becomes 0."""
        want = {t.index: t.spec.oom_score_adj for t in self.tasks}
        low = min(want.values())
        if low >= 0 or _has_capability(CAP_SYS_RESOURCE):
            return want
        self.notes.append(f"oom_score_adj below 0 needs CAP_SYS_RESOURCE: every task's was raised by {-low} "
                          f"(capped at 1000), so that {low} became 0")
        return {i: min(1000, a - low) for i, a in want.items()}

    def _spawn(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        adjs = self._oom_score_adjs()
        for t in self.tasks:
            self._check_signals()
            ours, theirs = socket.socketpair()
            t.ctl = ours
            spec = self._task_spec(t)
            passed = [theirs.fileno()]
            if t.name in features.written_tasks(self.scenario):
                rfd, t.writer_wfd = os.pipe()            # a byte: "queue your writer thread now"
                spec["writer_fd"] = rfd
                passed.append(rfd)
            t.proc = subprocess.Popen(
                [sys.executable, "-m", "emulator.host.task", "--ctl", str(theirs.fileno()),
                 "--parent", str(os.getpid()), "--spec", json.dumps(spec)],
                pass_fds=passed, stdin=subprocess.DEVNULL, env=env, process_group=0)
            theirs.close()
            if "writer_fd" in spec:
                os.close(spec["writer_fd"])
            t.pidfd = os.pidfd_open(t.proc.pid)
            self.by_pid[t.pid] = t
            self._expect(t, "spawned")
            self.memcgs.join(t.pid, t.spec.memcg or None)
            with open(f"/proc/{t.pid}/oom_score_adj", "w") as f:
                f.write(str(adjs[t.index]))
        # Each task's own interpreter is charged to its memcg before it maps a byte: the
        # limits make room for that, so that memory_mb is the scenario's to use.
        self._make_room_for_interpreters()
        for t in self.tasks:                  # in file order: the first mapper is charged
            self._check_signals()
            self._send(t, "go")
            t.hold_address = self._expect(t, "ready").get("address", 0)

    def _make_room_for_interpreters(self) -> None:
        """Raise each memcg's limit by what its tasks' own processes hold now (their
        interpreters), before any of them maps a byte of the scenario's."""
        own = {None: self.memcgs.usage_bytes(None)}
        for m in self.scenario.memcgs:
            own[m.name] = self.memcgs.usage_bytes(m.name)
        for name, extra in own.items():
            if extra > 0:
                self.memcgs.raise_limit(name, extra)
        if own[None] > 0:
            self.notes.append("the task processes' own memory (%d kB, their interpreters) was added to the "
                              "limits" % (own[None] // 1024))

    def _send(self, t: HostTaskRecord, what: str, **fields) -> None:
        try:
            t.ctl.sendall((json.dumps({"ev": what, **fields}) + "\n").encode())
        except OSError:
            pass                                 # it died: its pidfd says so

    def _expect(self, t: HostTaskRecord, what: str) -> dict:
        deadline = time.monotonic() + SPAWN_TIMEOUT_S
        while True:
            for msg in self._read(t, max(0.0, deadline - time.monotonic())):
                if msg.get("ev") == what:
                    return msg
                if msg.get("ev") == "fault":
                    raise EnvironmentProblem(f"host task {t.name} failed while starting: {msg.get('what')}")
            if t.proc.poll() is not None:
                raise EnvironmentProblem(f"host task {t.name} died while starting (exit {t.proc.returncode}): "
                                         f"the machine could not hold it?")
            if time.monotonic() > deadline:
                raise EnvironmentProblem(f"host task {t.name} did not start within {SPAWN_TIMEOUT_S:g} s")

    def _read(self, t: HostTaskRecord, timeout: float = 0.0) -> list[dict]:
        """The messages waiting on ``t``'s socket (waiting up to ``timeout`` for one)."""
        t.ctl.settimeout(timeout if timeout > 0 else 0.0)
        try:
            chunk = t.ctl.recv(1 << 16)
        except (BlockingIOError, socket.timeout, InterruptedError):
            chunk = None
        except OSError:
            chunk = b""
        if chunk:
            t.rbuf += chunk
        elif chunk == b"":
            t.eof = True                         # the task is gone: nothing more will come
        *lines, t.rbuf = t.rbuf.split(b"\n")
        return [json.loads(x) for x in lines if x]

    def _free_kb(self) -> int:
        """What the run's memcg has left below its limit (the zone's free memory)."""
        try:
            return max(0, self.memcgs.limit_bytes(None) - self.memcgs.usage_bytes(None)) // 1024
        except (OSError, ValueError):
            return 0

    def _check_signals(self) -> None:
        if self.signals.pending is not None:
            raise _Interrupted

    # -- the run -------------------------------------------------------------------------
    def execute(self) -> RunResult:
        with self.signals:
            try:
                self._execute()
            except _Interrupted:
                pass
            except OSError as e:                   # the machine could not give what the run needed
                raise EnvironmentProblem(f"the host run could not be set up: {e.strerror or e}"
                                         f"{' (' + e.filename + ')' if getattr(e, 'filename', None) else ''}") from None
            finally:
                self._teardown()
        self.signals.raise_pending()
        return self._result()

    def _execute(self) -> None:
        from .cgroup import HostMemcgs, memcgs_of
        from .kmsg import KernelLog
        self.memcgs = HostMemcgs(self.run_id, round(self.scenario.memory_mb) << 20, memcgs_of(self.scenario))
        self.notes += self.memcgs.notes
        if features.needs_fuse(self.scenario):
            from .fuse import SlowFs
            self.fs = SlowFs(DISK_DIR, self.run_id)    # not /dev/shm: its names are segments
        self._prepare_files()
        self.klog = KernelLog(time.monotonic())    # from before the tasks: a kill while they start counts
        self._spawn()
        self.t0 = time.monotonic()
        self.klog.t0 = self.t0
        self.tracer = Tracer(self._trace_path, self.now, self._free_kb)
        self.trace("run_start", at=0.0, scenario=self.scenario.name, policy=POLICY, speed=1.0,
                   run_id=self.run_id, memory_kb=round(self.scenario.memory_mb * 1024),
                   tasks=[{"name": t.name, "pid": t.pid} for t in self.tasks])
        if self._on_start is not None:
            self._on_start(self)
        for note in self.notes:
            self.printk("oomemu: host: " + note, 0.0)
        for t in self.tasks:
            self._send(t, "start")
        self._loop()

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        for t in self.tasks:
            sel.register(t.ctl, selectors.EVENT_READ, ("ctl", t))
            sel.register(t.pidfd, selectors.EVENT_READ, ("pidfd", t))
        if self.signals.active:
            sel.register(self.signals.rfd, selectors.EVENT_READ, ("signal", None))
        linger_until = None
        try:
            while True:
                self._check_signals()
                self._kernel_log()
                now = self.now()
                if self.verdict is None and self._resolved():
                    self.verdict, self.resolved_at = Verdict.RESOLVED, now
                    linger_until = now + LINGER_S
                if self.verdict == Verdict.RESOLVED and (self._quiet() or now >= linger_until):
                    return
                if self.verdict == Verdict.ERROR:
                    return
                if self.verdict is None and now >= self.scenario.run_deadline_s:
                    self.verdict = Verdict.HUNG
                    self.printk("oomemu: run deadline %gs passed: hung" % self.scenario.run_deadline_s)
                    return
                for key, _ in sel.select(0.05):
                    what, t = key.data
                    if what == "signal":
                        self.signals.drain()
                    elif what == "ctl":
                        for msg in self._read(t):
                            self._on_message(t, msg)
                        if t.eof:
                            sel.unregister(key.fileobj)
                    else:
                        sel.unregister(key.fileobj)
                        self._on_death(t)
        finally:
            sel.close()

    def _on_message(self, t: HostTaskRecord, msg: dict) -> None:
        ev = msg.get("ev")
        if ev == "alloc":
            t.allocating = True
        elif ev == "alloc_done":
            t.allocating = False
        elif ev == "busy":
            self.fs.gate(f"busy{t.index}", time.monotonic() + msg["ms"] / 1000)
            self.trace("task_state", t, state="D")
            self._send(t, "ack")
        elif ev == "hold":
            other = self.by_name[msg["task"]]
            self.trace("mmap_lock_start_locking", t, mm=other.name, write=False)
            self._send(t, "ack", pid=other.pid, address=other.hold_address)
        elif ev == "write":
            other = self.by_name[msg["task"]]
            self.trace("mmap_lock_start_locking", t, mm=other.name, write=True)
            try:
                os.write(other.writer_wfd, b"w")      # its own thread queues (mbind), as the kernel needs
            except OSError:
                pass                                   # that task is gone
        elif ev == "unhold":
            other = self.by_name[msg["task"]]
            self.fs.open_gate(f"hold{other.index}")
            self.trace("mmap_lock_released", t, mm=other.name, write=False)
        elif ev == "steps_done":
            t.steps_done = True
        elif ev == "fault":
            t.fault = msg.get("what")

    def _on_death(self, t: HostTaskRecord) -> None:
        while not t.eof:                           # its last words first (a fault says why)
            for msg in self._read(t, 0.05):
                self._on_message(t, msg)
            if not t.eof and t.ctl.fileno() < 0:
                break
        code = t.proc.wait()
        t.exited, t.exited_at = True, self.now()
        if t.victim is None:
            self._kernel_log()                     # its "Killed process" line first, if it was killed
        self.trace("exited", t, t.exited_at, crashed=False)
        if t.victim is not None:
            t.victim.exited_at_s = round(t.exited_at, 6)
        elif code not in (0,) and t.fault is not None:
            self.error = f"host task {t.name} failed: {t.fault}"
            self.verdict = Verdict.ERROR

    def _kernel_log(self, final: bool = False) -> bool:
        """Take in what the kernel logged about the run's tasks; True if anything came."""
        from .kmsg import OomInvoked, OomKill, OomReaped, OomReapFailed, oom_events
        got = False
        records = self._kcarry + self.klog.read()
        # An "invoked oom-killer" line names no pid: the dump_stack line after it does, which
        # may come in the next read: such a line among the last two waits for it, with what
        # follows it (at the end, nothing waits).
        settle = len(records)
        if not final:
            from .kmsg import parse_invoked
            tail = [i for i in range(max(0, len(records) - 2), len(records)) if parse_invoked(records[i].text)]
            settle = tail[0] if tail else len(records)
        settled = {(r.time, r.text) for r in records[:settle]}
        self._kcarry = records[settle:]
        for ev in oom_events(records, self.by_pid):
            if (ev.time, ev.text) not in settled:
                continue
            t = self.by_pid[ev.pid]
            got = True
            self.printk(ev.text, ev.time)
            line = ev.line
            if isinstance(line, OomInvoked) and self.first_oom_at is None:
                self.first_oom_at = ev.time
            elif isinstance(line, OomKill) and ev.time < 0 and self.error is None:
                self.verdict = Verdict.ERROR
                self.error = (f"the kernel killed {t.name} before time 0: the scenario's initial memory does "
                              f"not fit in {self.scenario.memory_mb:g} MB on this host")
            elif isinstance(line, OomKill) and t.victim is None:
                self.kills += 1
                t.victim = VictimRecord(t.name, t.pid, round(ev.time, 6),
                                        memcg="/" + t.spec.memcg if t.spec.memcg else "/")
                if t.exited_at is not None:
                    t.victim.exited_at_s = round(t.exited_at, 6)
                self.victims.append(t)
                self.trace("oom_kill", t, ev.time, anon_rss=line.anon_rss_kb, file_rss=line.file_rss_kb,
                           shmem_rss=line.shmem_rss_kb, total_vm=line.total_vm_kb)
            elif isinstance(line, OomReaped) and t.victim is not None:
                self.trace("finish_task_reaping", t, ev.time, anon_rss=line.anon_rss_kb)
            elif isinstance(line, OomReapFailed) and t.victim is not None:
                t.victim.unable_to_reap = True
                self.trace("reap_deadline", t, ev.time, reason="MAX_OOM_REAP_RETRIES")
        return got

    def _resolved(self) -> bool:
        for t in self.tasks:
            if t.exited:
                continue
            if t.spec.steps and not t.steps_done:
                return False
            if t.allocating:
                return False
        return True

    def _quiet(self) -> bool:
        return all(t.exited for t in self.victims)

    # -- the end ---------------------------------------------------------------------------
    def _teardown(self) -> None:
        """Kill and reap every task, then the FUSE mount, the memcgs and the files go.
        Runs with terminating signals deferred: it always runs to its end."""
        for t in self.tasks:
            if t.proc is not None and t.proc.poll() is None:
                try:
                    t.proc.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.fs is not None:
            self.fs.close()                        # its gates open: killed D-state readers die
        for t in self.tasks:
            if t.proc is not None:
                try:
                    t.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            if t.pidfd >= 0:
                os.close(t.pidfd)
                t.pidfd = -1
            if t.ctl is not None:
                t.ctl.close()
            if t.writer_wfd >= 0:
                os.close(t.writer_wfd)
                t.writer_wfd = -1
        if self.klog is not None:
            try:
                self._kernel_log(final=True)
            except OSError:
                pass
            self.klog.close()
        if self.tracer is not None:
            self.trace("run_end", verdict=self.verdict, kills=self.kills)
            self.tracer.close()
        if self.memcgs is not None:
            self.memcgs.remove()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)

    def _result(self) -> RunResult:
        verdict = self.verdict or Verdict.HUNG
        ttr = None
        if verdict == Verdict.RESOLVED and self.first_oom_at is not None:
            ttr = round(self.resolved_at - self.first_oom_at, 6)
        diverged = [t.name for t in self.victims if t.spec.oom_score_adj == -1000]
        r = RunResult(self.scenario.name, POLICY, 1.0, verdict, self.kills, self.scenario.min_kills, ttr,
                      [t.victim for t in self.victims], self.lines, self.run_id,
                      None if self.first_oom_at is None else round(self.first_oom_at, 6),
                      None if self.resolved_at is None else round(self.resolved_at, 6), None,
                      error=self.error, error_kind=None if self.error is None else "environment",
                      notes=list(self.notes),
                      diverged=None if not diverged else
                      f"{', '.join(diverged)} was meant to be spared (oom_score_adj -1000) but was killed")
        return r


class _Interrupted(Exception):
    pass


def _memlock_limit() -> str:
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft >> 10} kB"


def cleanup_leftovers() -> list[str]:
    """What dead host runs left: their files, FUSE mounts and memcgs (one line each)."""
    done = []
    for base in (DISK_DIR, SHM_DIR):
        try:
            entries = os.listdir(base)
        except OSError:
            continue
        for e in entries:
            if not e.startswith(DIR_PREFIX):
                continue
            run_id = e[len(DIR_PREFIX):]
            pid = names.run_pid(run_id)
            if pid is None or _alive(pid):
                continue
            path = os.path.join(base, e)
            if os.path.isdir(path) and not os.path.ismount(path):
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {path}")
    try:
        from .fuse import cleanup_leftovers as fuse_leftovers
        done += fuse_leftovers(names.PREFIX, parents=(DISK_DIR,))
    except ImportError:
        pass
    try:
        from .cgroup import cleanup_leftovers as cgroup_leftovers
        done += cgroup_leftovers(names.PREFIX)
    except ImportError:
        pass
    return done


def _alive(pid: int) -> bool:
    """A process that is not a zombie (a zombie is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
