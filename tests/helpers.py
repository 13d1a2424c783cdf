"""Test helpers, psutil-style: start processes that die with the session, find
what a session left behind, burn CPU, write scenarios; and what tests of more
than one layer (tests/pure, ipc, runs, cli, stress) share: the documents they
read, scenarios, segments made by hand.

Every process a test starts goes through :func:`spawn` (or :class:`HeldRun`,
:func:`oomemu`): it gets ``PR_SET_PDEATHSIG``, so it is signalled when the
thread that forked it dies. pytest-timeout's ``thread`` method runs each test
in the main thread and ends a timed-out session with ``os._exit``, which skips
every ``finally``: the test thread dies with the process, and the signal
(SIGTERM: a supervisor tears down its workers and its /dev/shm objects)
reaches every child. What still survives a dead session (a run made in the
pytest process itself leaves its /dev/shm objects) is swept at the next start
(:func:`sweep_dead_sessions`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import re
import selectors
import signal
import subprocess
import sys
import textwrap
import time

import posix_ipc
import psutil

from emulator.runtime import names
from emulator.runtime.zone import Zone

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
TEST_PREFIX = "oomemu_test"
# /dev/shm entries of a test session: oomemu_test<pytest pid>.<run>...; sem.oomemu_test<pid>...
_SESSION_ENTRY = re.compile(r"^(?:sem\.)?" + TEST_PREFIX + r"(\d+)\.")
_SESSION_ENV = re.compile(rb"(?:^|\0)OOMEMU_PREFIX=" + TEST_PREFIX.encode() + rb"(\d+)(?:\0|$)")


# -- processes that die with the session -------------------------------------------

def tie_to_parent(parent: int, sig: int) -> bool:
    """In a forked child: get ``sig`` when the thread that forked it dies. False if
    that did not work or ``parent`` is already gone (the child should leave)."""
    return _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0 and os.getppid() == parent


def die_with_parent(sig: int = signal.SIGTERM):
    """A ``preexec_fn``: the child gets ``sig`` when the thread that forks it dies.

    If that thread is already gone when the child gets here, the child leaves
    at once (it would otherwise be an orphan nobody signals)."""
    parent = os.getpid()

    def preexec():
        if not tie_to_parent(parent, sig):
            os._exit(127)
    return preexec


def spawn(args, sig: int = signal.SIGTERM, **kw) -> subprocess.Popen:
    """``subprocess.Popen`` tied to the session: ``sig`` reaches it if the test process dies."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    return subprocess.Popen(args, preexec_fn=die_with_parent(sig), **kw)


def oomemu_args(*args) -> list[str]:
    return [sys.executable, "-m", "emulator", *args]


def end_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Kill and wait: SIGCONT and SIGTERM (a supervisor tears its run down), then SIGKILL."""
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


@contextlib.contextmanager
def started(args, sig: int = signal.SIGTERM, **kw):
    """``with started([...]) as proc:``; the process is ended and waited for however the block ends."""
    proc = spawn(args, sig, **kw)
    try:
        yield proc
    finally:
        end_process(proc)


def read_line(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """The next line of ``proc``'s stdout, read from the pipe itself (so that
    ``communicate`` later gets the rest), waiting at most ``timeout`` seconds."""
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"no line from pid {proc.pid} within {timeout}s (got {data!r})")
            chunk = os.read(fd, 1)
            if not chunk:
                break
            data += chunk
    return data.decode()


def oomemu(*args, timeout: float = 60):
    """``oomemu ARGS`` to its end, as a user types it: a CompletedProcess."""
    with started(oomemu_args(*args)) as proc:
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- what a session has, and what a dead one left ----------------------------------

def shm_leftovers() -> set[str]:
    """Every object of this session's prefix in /dev/shm (segments, semaphores, FIFOs)."""
    return {e for entries in names.leftovers().values() for e in entries}


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _session_helper(p: psutil.Process) -> bool:
    """multiprocessing's resource tracker: started by the first 'spawn' pool, it
    lives as long as the pytest process and leaves with it."""
    try:
        return any("resource_tracker" in a for a in p.cmdline())
    except psutil.Error:
        return True


def session_processes(prefix: str | None = None) -> list[psutil.Process]:
    """Every process started under this session's OOMEMU_PREFIX (supervisors,
    workers, inject processes, anything a test started), but this one."""
    needle = b"\0OOMEMU_PREFIX=" + (prefix or names.PREFIX).encode() + b"\0"
    out = []
    for pid in psutil.pids():
        if pid != os.getpid() and needle in b"\0" + _environ(pid) + b"\0":
            try:
                p = psutil.Process(pid)
            except psutil.Error:
                continue
            if not _session_helper(p):
                out.append(p)
    return out


def session_descendants() -> list[psutil.Process]:
    """This process's children and theirs (a forked child keeps pytest's own environment,
    so the prefix does not find it), but multiprocessing's resource tracker."""
    try:
        kids = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    return [p for p in kids if not _session_helper(p)]


def workers_of(supervisor_pid: int) -> list[psutil.Process]:
    """Live workers of the run whose supervisor is ``supervisor_pid`` (a zombie is dead)."""
    out = []
    for w in worker_processes():
        try:
            cmd = w.cmdline()
            if "--parent" in cmd and cmd[cmd.index("--parent") + 1] == str(supervisor_pid):
                out.append(w)
        except (psutil.Error, IndexError):
            pass
    return out


def worker_processes() -> list[psutil.Process]:
    """Worker processes of this test session (other runs on the machine are not ours)."""
    out = []
    for p in session_processes():
        try:
            if "workers.task" in p.cmdline():
                out.append(p)
        except psutil.Error:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def sweep_dead_sessions(own: bool = False, shm_dir: str = names.SHM_DIR) -> list[str]:
    """Remove what test sessions that are no longer alive left: processes whose
    OOMEMU_PREFIX is ``oomemu_test<pid>`` of a dead pid, then their /dev/shm
    objects (see :func:`remove_all`). Returns what it removed.

    ``own``: this session's prefix counts as a dead session's too (its pid may
    have been a dead session's): only at the start, when nothing of it can exist yet."""
    me = os.getpid()
    dead = lambda pid: (own and pid == me) or (pid != me and not _alive(pid))
    procs = []
    for pid in psutil.pids():
        m = _SESSION_ENV.search(_environ(pid)) if pid != me else None
        if m and dead(int(m.group(1))):
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
    entries = [e for e in _listdir(shm_dir) if (m := _SESSION_ENTRY.match(e)) and dead(int(m.group(1)))]
    removed = remove_all(procs, entries, shm_dir)
    return [f"process {p.pid}" for p in procs] + [os.path.join(shm_dir, e) for e in removed]


def _listdir(d: str) -> list[str]:
    try:
        return sorted(os.listdir(d))
    except FileNotFoundError:
        return []


def remove_all(procs, shm_entries, shm_dir: str = names.SHM_DIR) -> list[str]:
    """End these processes (SIGCONT and SIGTERM, so a supervisor tears down; SIGKILL
    what is left after 5 s) and wait for them, then unlink these /dev/shm entries;
    returns the entries it unlinked (a supervisor may have removed its own)."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGCONT)
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    removed = []
    for entry in shm_entries:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):   # a mount point is not ours to unlink
            os.unlink(os.path.join(shm_dir, entry))
            removed.append(entry)
    return removed


def jsonl_lines(path) -> list:
    """The records of a JSON-lines file (a sweep's results); a line still being written,
    read while the file is appended to, is not one yet."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def wait_for(predicate, timeout: float, interval: float = 0.01):
    """Bounded wait for a condition; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def write_scenario(tmp_path, text: str, name: str = "scenario") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def _burn(stop, parent):
    # a forked child: it dies with the session too (no busy loop outlives a killed test)
    if not tie_to_parent(parent, signal.SIGKILL):
        return
    while not stop.is_set():
        sum(range(10000))


class CpuBurner:
    """Keep every core busy (a noisy neighbour) while a test runs."""

    def __init__(self, n: int | None = None):
        self.n = n or os.cpu_count() or 2
        self._stop = multiprocessing.Event()
        self._procs = []

    def __enter__(self):
        for _ in range(self.n):
            p = multiprocessing.Process(target=_burn, args=(self._stop, os.getpid()), daemon=True)
            p.start()
            self._procs.append(p)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for p in self._procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
def scaled_variant(name: str, mb: float = 1.0, ms: float = 1.0):
    """A built-in scenario with every size times ``mb`` and every duration times ``ms``.

    Sizes and durations move together, so the mechanism stays and only the
    numbers change (``exit_unmap_ms_per_mb`` stays: unmapping more takes longer).
    """
    import math
    import tomllib

    from emulator.scenario import builtin_path, parse_scenario

    with open(builtin_path(name), "rb") as f:
        data = tomllib.load(f)

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("memory_mb", "limit_mb"):             # whole MB
                    node[k] = math.ceil(v * mb)
                elif k in ("mb", "pgtables_mb"):
                    node[k] = v * mb
                elif k in ("ms", "exit_free_pgtables_ms"):
                    node[k] = v * ms
                else:
                    walk(v)
        elif isinstance(node, list):
            for x in node:
                walk(x)

    walk(data)
    data["name"] = f"{name}-x{mb:g}mb-x{ms:g}ms"
    data.pop("expected", None)
    return parse_scenario(data, source=f"<{data['name']}>")




class HeldRun:
    """``oomemu run ... --hold`` in a subprocess, as a user in one terminal starts it.

    The supervisor gets SIGTERM if the test process dies (it then tears its run
    down); however the ``with`` block ends, the run is stopped and waited for."""

    def __init__(self, scenario: str, policy: str = "v4.17", *extra: str, trace: str | None = None,
                 start_timeout: float = 30.0):
        args = oomemu_args("run", scenario, "--policy", policy, "--hold", *extra)
        if trace:
            args += ["--trace", trace]
        self.trace = trace
        self.out = ""
        self.proc = spawn(args)
        try:
            first = read_line(self.proc, start_timeout)
            if not first.startswith("oomemu: run "):
                raise AssertionError(f"run did not start: {first}")
        except BaseException:
            end_process(self.proc)
            raise
        self.id = first.split()[2].rstrip(":")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        try:
            if self.proc.poll() is None:
                if exc_type is None:
                    self.stop()
                else:                                     # keep the test's own error in view
                    self.proc.send_signal(signal.SIGINT)
                    self.proc.communicate(timeout=60)
        finally:
            end_process(self.proc)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)            # what 'oomemu stop' does
        return self.wait()

    def wait(self, timeout: float = 60) -> str:
        """The rest of its output once it has ended (it must end well: exit 0)."""
        out, err = self.proc.communicate(timeout=timeout)
        self.out = out
        assert self.proc.returncode == 0, err
        return out

    def events(self) -> list[dict]:
        try:
            with open(self.trace) as f:
                return [json.loads(line) for line in f if line.endswith("\n")]
        except FileNotFoundError:
            return []

    def wait_event(self, predicate, timeout: float = 30.0) -> dict:
        found = wait_for(lambda: next((e for e in self.events() if predicate(e)), None), timeout, 0.05)
        assert found, f"no such event within {timeout}s"
        return found


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The documents the tests read, one constant each (the README is being split into docs/):
# the tables of trace events, and the file whose outcome table `make claims` rewrites.
_READING_OUTPUT = os.path.join(REPO, "docs", "reading-output.md")
DOCS_TRACE_EVENTS = _READING_OUTPUT
CLAIMS_DOC = os.path.join(REPO, "README.md")


def documented_trace_events(readme: str = DOCS_TRACE_EVENTS) -> dict[str, set[str]]:
    """The tables of trace events in DOCS_TRACE_EVENTS (header ``| event | when | own fields |``):
    each event name -> the names quoted in its "own fields" column."""
    out: dict[str, set[str]] = {}
    in_table = False
    with open(readme) as f:
        for line in f:
            line = line.strip()
            if line.startswith("| event | when | own fields |"):
                in_table = True
                continue
            if not line.startswith("|"):
                in_table = False
                continue
            if in_table and not line.startswith("|---"):
                event, _, fields = [c.strip() for c in line.strip("|").split("|")]
                for name in re.findall(r"`([a-z_]+)`", event):
                    out[name] = set(re.findall(r"`([a-z_]+)`", fields))
    return out


COMMON_EVENT_FIELDS = {"t", "ev", "pid", "task", "free_kb"}     # every event has them (DOCS_TRACE_EVENTS)


def check_documented(events: list[dict]) -> None:
    """Every event is in DOCS_TRACE_EVENTS's tables, with only the fields they list."""
    doc = documented_trace_events()
    for e in events:
        assert e["ev"] in doc, f"trace event {e['ev']!r} is not in {DOCS_TRACE_EVENTS}: {e}"
        assert COMMON_EVENT_FIELDS <= set(e), e
        extra = set(e) - COMMON_EVENT_FIELDS - doc[e["ev"]]
        assert not extra, f"{e['ev']}: fields {sorted(extra)} are not in the table of {DOCS_TRACE_EVENTS}: {e}"


# -- scenarios more than one layer's tests use --------------------------------------

# One task in one memcg; every number a parameter (TOML text, as a user writes it).
_BOUNDS_TEMPLATE = """
name = {name}
description = {description}
memory_mb = {memory_mb}
min_kills = {min_kills}
run_deadline_s = {run_deadline_s}
[[memcg]]
name = "m"
limit_mb = {limit_mb}
[[task]]
name = "t"
count = {count}
memcg = "m"
oom_score_adj = {adj}
exit_unmap_ms_per_mb = {unmap}
exit_free_pgtables_ms = {pgt}
pgtables_mb = {pgtables_mb}
vma = [{{ kind = "anon", mb = {vma_mb} }}]
step = [{{ op = "sleep", ms = {ms} }}, {{ op = "alloc", mb = {alloc_mb} }}]
[expected]
"v4.17" = {{ verdict = "resolved", kills = {kills}, why = {why} }}
"""
_BOUNDS_BASE = dict(name='"bounds"', description='"d"', memory_mb=64, min_kills=1, run_deadline_s=60, limit_mb=64,
            count=1, adj=0, unmap=2, pgt=10, pgtables_mb=0, vma_mb=1, ms=10, alloc_mb=1, kills=1, why='"w"')


def scenario_text(**change) -> str:
    """The scenario "bounds" (the bounds tests), with ``change``'s numbers in place of its own."""
    return _BOUNDS_TEMPLATE.format(**dict(_BOUNDS_BASE, **change))


# idle tasks, {count} of them (the error tests)
IDLE = """
name = "idle"
memory_mb = 64

[[task]]
name = "idle"
count = {count}

  [[task.vma]]
  kind = "anon"
  mb = 1
"""


# -- segments made by hand, no run (the live commands' checks) ----------------------

def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def shm(name: str) -> str:
    """The /dev/shm path of a segment's name."""
    return names.shm_path(name, False)


def make_zone(run_id: str, supervisor_pid: int, scenario: str = "s", ctime: float = 0.0) -> Zone:
    """A zone of 256 pages and no tasks under ``run_id``, naming ``supervisor_pid`` (no process starts)."""
    return Zone(run_id, create={"supervisor_pid": supervisor_pid, "supervisor_ctime": ctime,
                                "speed": 1.0, "total_pages": 256, "scenario": scenario, "policy": "v4.17"})


def unlink_zone(run_id: str) -> None:
    for unlink, name in ((posix_ipc.unlink_shared_memory, names.zone(run_id)),):
        try:
            unlink(name)
        except posix_ipc.ExistentialError:
            pass


# -- compare's pool, pictures -------------------------------------------------------

def pool_processes() -> list[psutil.Process]:
    """compare's pool processes of this test session (also those orphaned by a compare that ended)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "spawn_main" in " ".join(p.info["cmdline"] or []) and \
                    p.environ().get("OOMEMU_PREFIX") == names.PREFIX:
                out.append(p)
        except psutil.Error:
            pass
    return out


def reaper_collections(ax):
    """The reaper's labelled marks on a picture's axes, by label."""
    return {c.get_label(): c for c in ax.collections if not c.get_label().startswith("_")}
