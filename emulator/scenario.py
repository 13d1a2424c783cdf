"""Scenarios: TOML files that say which tasks exist and what they do.

``load_scenario`` accepts a built-in name (a file in ``emulator/scenarios/``)
or a path, checks every key and value, and returns a frozen
:class:`Scenario` with each ``[[task]]`` expanded by its ``count``.

Invariant: for any file content whatever, ``load_scenario`` returns a
Scenario or raises :class:`ScenarioError` (one line, naming the file and the
key), and a Scenario it returns stays inside every limit of the runtime
(the ``MAX_*`` bounds below, each with its reason), so a run of it cannot
fail on a number or a size that the file gave it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field

from .errors import ScenarioError
from .kernel.mm_types import (MAX_MEMCGS, MAX_VMAS, MM_HEADER_PAGES, MMU_NOTIFIERS, OBJECT_KINDS,
                              PAGE_CACHE_KINDS, PAGES_PER_MB, TASK_COMM_LEN, VMA_KINDS)
from .kernel.verdict import OUTCOMES, Verdict

OPS = ("alloc", "sleep", "busy", "mmap_sem_down", "mmap_sem_up", "lock", "unlock", "exit", "mm_pin", "shm_unlink",
       "shm_truncate", "touch")
_OP_KEYS = {"alloc": {"mb"}, "sleep": {"ms"}, "busy": {"ms"}, "mmap_sem_down": {"task", "mode"},
            "mmap_sem_up": {"task"}, "lock": {"name"}, "unlock": {"name"}, "exit": set(),
            "mm_pin": {"task", "ms"}, "shm_unlink": {"name"}, "shm_truncate": {"name"},
            "touch": {"vma", "mb", "ms", "repeat"}}
SHM_OPS = ("shm_unlink", "shm_truncate")
MMAP_SEM_MODES = ("read", "write")
_TOP_KEYS = {"name", "description", "memory_mb", "min_kills", "run_deadline_s", "task", "memcg",
             "expected", "writeback_mb_per_s", "nr_cpus", "reclaim_ms_per_mb", "refault_ms_per_mb", "swap_mb",
             "swap_mb_per_s"}
_TASK_KEYS = {"name", "count", "oom_score_adj", "oom_score_adj_last", "mmu_notifier", "exit_unmap_ms_per_mb",
              "exit_free_pgtables_ms", "pgtables_mb", "memcg", "vma", "step", "mm", "sigterm"}
#: how a task answers SIGTERM (``sigterm``): the default action (it dies, as of SIGKILL: the
#: kernel makes a fatal signal SIGKILL), "ignore", or a number: its handler cleans up for
#: that many ms, then the task exits
SIGTERM_ANSWERS = ("default", "ignore")
#: what belongs to the mm, not the task: a task that shares another's mm (``mm``) takes the
#: owner's (oom_score_adj too: the kernel keeps it equal for every process sharing an mm)
_MM_KEYS = ("vma", "pgtables_mb", "oom_score_adj", "oom_score_adj_last", "mmu_notifier", "memcg", "exit_unmap_ms_per_mb",
            "exit_free_pgtables_ms")
_MEMCG_KEYS = {"name", "limit_mb", "parent", "oom_group"}
_EXPECTED_KEYS = {"verdict", "kills", "why"}
VERDICTS = tuple(v.value for v in OUTCOMES)      # what [expected] may state
_VMA_KEYS = {"kind", "mb", "mlocked", "dirty_mb", "object"}
MAX_OBJECTS = 4096              # page-cache and shmem objects per run: each is a segment in /dev/shm
                                # that the supervisor maps (a thousand tasks with a few files each)
WRITEBACK_MB_PER_S = 100.0      # the default writeback rate (writeback_mb_per_s)
# The emulated machine's CPUs, for PSI (nr_cpus): FULL is per CPU, weighted by each CPU's
# non-idle time. A small machine's (a laptop, a phone's cluster); not the host's, which
# only runs the emulation. Tasks are placed on them by index.
NR_CPUS = 4
MAX_CPUS = 4096                 # the kernel's NR_CPUS on a large x86-64 config
# Direct reclaim's own cost, per MB it takes (reclaim_ms_per_mb): the allocator stalls that
# long (a memstall, reason reclaim) before it tries again. 0 by default: reclaiming clean
# page cache takes no emulated time, as before PSI was fed (so the built-ins' outcomes
# stand); set it for what-ifs (a few tenths of a ms per MB: shrinking clean LRU pages
# runs at GB/s on one core).
RECLAIM_MS_PER_MB = 0.0
# A refault reads the page back from its file (refault_ms_per_mb): 10 ms per MB is a read
# at the default disk rate (writeback_mb_per_s, 100 MB/s), the same disk writeback uses.
REFAULT_MS_PER_MB = 10.0
# A swap device (swap_mb, 0: none) and its rate (swap_mb_per_s): reclaim swaps anon pages out
# at that rate (the allocator waits for the writes), a touch swaps them in at it. The default
# is the default disk's, as for writeback.
SWAP_MB_PER_S = 100.0
MAX_REPEAT = 1_000_000          # a touch's repeat: a thrashing loop of minutes at ms-long touches
# exit_mmap's speed, as measured on Linux 6.18 (docs/kernel-crosscheck.md): 60 MB
# of mlocked memory munlocked and unmapped in 11-16 ms; 120 MB of page tables freed in
# about 20 ms. A scenario that needs a slow exit names a cause (a D state before it, an
# mm another task holds), not slower rates; the keys stay, for what-ifs.
EXIT_UNMAP_MS_PER_MB = 0.2
FREE_PGTABLES_MS_PER_MB = 0.17
# Faulting fresh anonymous memory in (the fault, the zeroing) takes time too: 0.32-0.37 ms
# per MB on this machine's kernel (100 and 200 MB written 1 MB at a time, less the copy).
# An allocation's pages come at that pace, so what a victim frees is not taken at once.
FAULT_MS_PER_MB = 0.35

# -- bounds: every number and size a scenario can set, and why ----------------
MAX_FILE_BYTES = 1 << 20        # 1 MiB: a thousand tasks of ten steps each take a tenth of it
MAX_MEMORY_MB = 1 << 20         # 1 TiB: the zone is real memory (/dev/shm) and must fit the machine
MAX_TASKS = 1000                # each a process cloned by the run's fork server (about 3 MiB of its
                                # own): 1,000 start in about 2 s on 2 cores (make bench)
MAX_STEPS = 256                 # steps per task: a worker's spec travels in one line to the fork server
MAX_LOCKS = 64                  # distinct lock names: each a semaphore that every worker opens
MAX_SCENARIO_MEMCGS = MAX_MEMCGS - 1   # the zone's memcg table, less the root memcg
MAX_NAME_BYTES = 48             # the run's name in UTF-8: the zone's scenario field holds this many bytes
MAX_COMM = TASK_COMM_LEN - 1    # task, memcg and lock names: a comm, ASCII
MAX_TEXT_BYTES = 4096           # description and [expected] why, in UTF-8
MAX_POLICY_NAME = 64            # a policy name in [expected]
MAX_DEADLINE_S = 86_400         # a day of emulated time: no duration may be longer ...
MAX_DURATION_MS = MAX_DEADLINE_S * 1000    # ... steps, exit_mmap's times (at --speed 0.1, a
                                # day is 10 days of real time: inside what epoll and sleep take)
MAX_MAPPED_MB = 64 << 20        # 64 TiB: the supervisor maps every task's mm, and each mm has
                                # room for the whole zone; half of x86-64's 128 TiB of user space
#: glibc's M_MMAP_THRESHOLD (128 KiB): an ``alloc`` of this much or more maps its memory
#: (mmap, under mmap_sem held for write) before faulting it in; a smaller one only faults
MMAP_THRESHOLD_MB = 0.125
MMAP_THRESHOLD_PAGES = round(MMAP_THRESHOLD_MB * PAGES_PER_MB)

_COMM_RE = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_COMM)


@dataclass(frozen=True)
class VmaSpec:
    kind: str
    mb: float
    mlocked: bool = False
    dirty_mb: float = 0.0   # file_shared: how much of its page cache is dirty at start
    object: str = ""        # shmem: the named object it maps ("": anonymous, its own)


@dataclass(frozen=True)
class ObjectSpec:
    """A file's pages in memory, apart from any mm: the page cache of a file
    (``kind`` "file": every ``file_*`` VMA maps one of its own) or a shmem object
    ("shmem": anonymous, for one VMA, or named, for every VMA naming it). Charged
    to ``memcg`` (the first mapper's, in file order) from the start, all of it."""
    kind: str               # "file" or "shmem"
    pages: int              # its size: the largest VMA that maps it
    dirty_pages: int = 0
    memcg: str = ""
    name: str = ""          # a named shmem object's name ("": anonymous)


@dataclass(frozen=True)
class StepSpec:
    op: str
    mb: float = 0.0
    ms: float = 0.0
    name: str = ""
    task: str = ""          # mmap_sem_down/_up: another task's mmap_sem (default: its own); mm_pin: whose mm
    mode: str = ""          # mmap_sem_down: "read" or "write"
    vma: int = -1           # touch: the index of the VMA it touches (a file VMA)
    repeat: int = 1         # touch: how many times, one after the other


@dataclass(frozen=True)
class MemcgSpec:
    name: str
    limit_mb: float
    parent: str = ""            # the parent memcg's name ("": the root memcg)
    oom_group: bool = False     # cgroup v2's memory.oom.group: an OOM kills it whole


@dataclass(frozen=True)
class Expected:
    """A scenario file's stated outcome under one policy, and why."""
    verdict: Verdict
    kills: int | None
    why: str


@dataclass(frozen=True)
class TaskSpec:
    name: str
    oom_score_adj: int = 0
    mmu_notifier: str = "none"
    exit_unmap_ms_per_mb: float = EXIT_UNMAP_MS_PER_MB
    exit_free_pgtables_ms: float = 0.0
    vmas: tuple[VmaSpec, ...] = ()
    steps: tuple[StepSpec, ...] = ()
    pgtables_mb: float = 0.0
    memcg: str = ""
    vma_objects: tuple[int, ...] = ()     # per VMA, the index of the object it maps (-1: none)
    mm: str = ""            # the task whose mm this one shares (CLONE_VM), "": its own
    sigterm: str | float = "default"   # how it answers SIGTERM: "default", "ignore", or ms (SIGTERM_ANSWERS)

    @property
    def initial_mb(self) -> float:
        return sum(v.mb for v in self.vmas) + self.pgtables_mb

    @property
    def alloc_mb(self) -> float:
        return sum(s.mb for s in self.steps if s.op == "alloc")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    memory_mb: float
    min_kills: int
    run_deadline_s: float
    tasks: tuple[TaskSpec, ...]
    source: str = "<memory>"
    expected: dict[str, Expected] = field(default_factory=dict, compare=False)
    memcgs: tuple[MemcgSpec, ...] = ()     # parents before their children
    objects: tuple[ObjectSpec, ...] = ()
    writeback_mb_per_s: float = WRITEBACK_MB_PER_S
    nr_cpus: int = NR_CPUS
    reclaim_ms_per_mb: float = RECLAIM_MS_PER_MB
    refault_ms_per_mb: float = REFAULT_MS_PER_MB
    swap_mb: float = 0.0
    swap_mb_per_s: float = SWAP_MB_PER_S

    def object_index(self, name: str) -> int:
        """The index of the named shmem object ``name`` (ValueError: none)."""
        return [o.name for o in self.objects].index(name)

    def memcg_index(self, name: str) -> int:
        """0 for the root memcg, else 1 + the position in ``memcgs``."""
        if not name:
            return 0
        return 1 + [m.name for m in self.memcgs].index(name)

    def memcg_path(self, name: str) -> str:
        """The cgroup path of a memcg ("/" for the root, "/a/b")."""
        by_name = {m.name: m for m in self.memcgs}
        path = ""
        while name:
            path, name = "/" + name + path, by_name[name].parent
        return path or "/"

    @property
    def lock_names(self) -> list[str]:
        return sorted({s.name for t in self.tasks for s in t.steps if s.op in ("lock", "unlock")})


# The cases of the 2018 timeout patch's thread, in the order its argument names them, then the rest.
CASE_ORDER = ("mlocked", "mmu_notifier", "shared_file", "small_rss", "slow_pgtables",
              "mmap_sem_held", "parallel_victims", "livelock", "memcg_tight", "page_cache", "shmem")


# tomllib, datetime and importlib.resources are imported where used: a worker process (which
# imports this module for its constants) is a clone of a template that imports only what
# workers need, and every module more is memory each clone maps and the template copies.


def builtin_names() -> list[str]:
    from importlib import resources
    files = resources.files("emulator.scenarios")
    names = [p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml")]
    rank = {n: i for i, n in enumerate(CASE_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def builtin_path(name: str) -> str:
    from importlib import resources
    return str(resources.files("emulator.scenarios") / f"{name}.toml")


def _printable(text: str, limit: int = 80) -> str:
    """``text`` for a one-line message: control characters escaped, at most ``limit`` long."""
    out = text if text.isprintable() else repr(text)[1:-1]
    return out if len(out) <= limit else out[:limit - 3] + "..."


def _num(x: float) -> str:
    """A bound for a message: 1048576, not 1.04858e+06."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:.10g}"


def _show(v) -> str:
    """A value from a file, for a one-line message (never a huge or multi-line one)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return repr(v) if v.bit_length() <= 64 else f"a {v.bit_length()}-bit integer"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        r = repr(v)                              # escapes control characters
        return r if len(r) <= 42 else r[:38] + "..." + r[-1]
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    import datetime
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return f"a date/time ({v.isoformat()})"
    return f"a {type(v).__name__}"


def load_scenario(name_or_path: str | os.PathLike) -> Scenario:
    """Load a built-in scenario by name, or a scenario file by path.

    Raises only ScenarioError, whatever the file holds."""
    text_name = os.fsdecode(name_or_path)
    shown = _printable(text_name, 200)
    if text_name in builtin_names():
        path = builtin_path(text_name)
    elif os.path.exists(text_name):
        path = text_name
    else:
        known = ", ".join(builtin_names())
        raise ScenarioError(shown, "", f"no such scenario file or built-in name (built-in: {known})")
    shown = _printable(path, 200)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ScenarioError(shown, "", e.strerror or str(e)) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ScenarioError(shown, "", f"larger than {MAX_FILE_BYTES >> 20} MiB: not a scenario file")
    import tomllib
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ScenarioError(shown, "", "not valid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(shown, "", f"not valid TOML: {_printable(str(e), 200)}") from None
    except RecursionError:
        raise ScenarioError(shown, "", "not valid TOML for a scenario: nested too deeply") from None
    except (ValueError, MemoryError) as e:            # e.g. an integer of more than 4300 digits
        raise ScenarioError(shown, "", f"not valid TOML: {_printable(str(e), 120)}") from None
    default_name = os.path.splitext(os.path.basename(path))[0]
    return parse_scenario(data, source=path, default_name=default_name)


class _Checker:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str):
        raise ScenarioError(_printable(self.source, 200), _printable(key, 120), message)

    def keys(self, table: dict, allowed: set, where: str) -> None:
        for k in table:
            if k not in allowed:
                self.fail(f"{where}{k}", f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def number(self, table: dict, key: str, where: str, default=None, *, minimum=0.0,
               maximum=None, integer=False, positive=False, why: str = ""):
        """A number in [minimum, maximum] (> 0 if ``positive``), an int if ``integer``.
        ``why`` is added to a message about ``maximum``."""
        if key not in table:
            if default is None:
                self.fail(where + key, "is required")
            return default
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            self.fail(where + key, f"must be {'a whole number' if integer else 'a number'}, not {_show(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            self.fail(where + key, f"must be finite, not {_show(v)}")
        if positive and v <= 0:
            self.fail(where + key, f"must be > 0, not {_show(v)}")
        if minimum is not None and v < minimum:
            self.fail(where + key, f"must be >= {_num(minimum)}, not {_show(v)}")
        if maximum is not None and v > maximum:
            self.fail(where + key, f"must be <= {_num(maximum)}{why}, not {_show(v)}")
        return v

    def string(self, table: dict, key: str, where: str, default=None, choices=None) -> str:
        if key not in table:
            if default is None:
                self.fail(where + key, "is required")
            return default
        v = table[key]
        if not isinstance(v, str) or not v:
            self.fail(where + key, f"must be a non-empty string, not {_show(v)}")
        if choices is not None and v not in choices:
            self.fail(where + key, f"must be one of {', '.join(choices)}, not {_show(v)}")
        return v

    def text(self, table: dict, key: str, where: str, default: str, *, max_bytes: int,
             newlines: bool) -> str:
        """Free text: a string of at most ``max_bytes`` UTF-8 bytes, no control characters
        (but newlines and tabs if ``newlines``)."""
        v = table.get(key, default)
        if not isinstance(v, str):
            self.fail(where + key, f"must be a string, not {_show(v)}")
        allowed = "\n\r\t" if newlines else ""
        if not all(c.isprintable() or c in allowed for c in v):
            self.fail(where + key, "must be printable text (no control characters"
                                   + (" but newlines and tabs)" if newlines else ")"))
        if len(v.encode()) > max_bytes:
            self.fail(where + key, f"must be at most {max_bytes} bytes of UTF-8, not {len(v.encode())}")
        return v

    def tables(self, table: dict, key: str, where: str, *, most: int, what: str) -> list:
        """An array of at most ``most`` tables (``what`` says why there is a most)."""
        v = table.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
            self.fail(where + key, f"must be an array of tables ([[{key}]])")
        if len(v) > most:
            self.fail(where + key, f"at most {most} {what}, not {len(v)}")
        return v

    def comm(self, table: dict, key: str, where: str, default=None) -> str:
        v = self.string(table, key, where, default)
        if not _name_ok(v):
            self.fail(where + key, f"{_show(v)}: use 1 to {MAX_COMM} of A-Z a-z 0-9 - _ (a comm)")
        return v


def _name_ok(name: str) -> bool:
    """A comm-like name: 1..15 ASCII letters, digits, '-' or '_' (fits 16 bytes, NUL-padded)."""
    return isinstance(name, str) and _COMM_RE.fullmatch(name) is not None


def _scenario_name(c: _Checker, data: dict, default_name: str) -> str:
    """The run's name: printable, no '/', at most MAX_NAME_BYTES of UTF-8 (the zone's field)."""
    given = "name" in data
    name = c.string(data, "name", "", default=default_name) if given else default_name
    problem = None
    if not isinstance(name, str) or not name or not name.strip():
        problem = "must not be blank"
    elif not name.isprintable():
        problem = "must be printable (no control characters)"
    elif "/" in name or name in (".", ".."):
        problem = "must not contain '/' or be '.' or '..' (it names files, as in compare --plot-dir)"
    elif len(name.encode()) > MAX_NAME_BYTES:
        problem = f"must be at most {MAX_NAME_BYTES} bytes of UTF-8, not {len(name.encode())}"
    if problem is None:
        return name
    if given:
        c.fail("name", f"{_show(name)} {problem}")
    c.fail("name", f"the default, the file name {_show(name)}, {problem}: set name = \"...\" in the file")


def _pages(mb: float) -> int:
    """Pages, rounded as the run charges them."""
    return round(mb * PAGES_PER_MB)


def parse_scenario(data: dict, source: str = "<memory>", default_name: str = "scenario") -> Scenario:
    """Check a decoded TOML document and build the :class:`Scenario`."""
    c = _Checker(source)
    if not isinstance(data, dict):
        c.fail("", f"must be a table of keys, not {_show(data)}")
    c.keys(data, _TOP_KEYS, "")
    name = _scenario_name(c, data, default_name)
    description = c.text(data, "description", "", "", max_bytes=MAX_TEXT_BYTES, newlines=True)
    memory_mb = c.number(data, "memory_mb", "", integer=True, minimum=1, maximum=MAX_MEMORY_MB,
                         why=" (1 TiB)")
    run_deadline_s = c.number(data, "run_deadline_s", "", default=60, positive=True,
                              maximum=MAX_DEADLINE_S, why=" (a day)")
    mb_bound = dict(maximum=memory_mb, why=" (memory_mb)")
    ms_bound = dict(maximum=MAX_DURATION_MS, why=" (a day)")

    memcgs = []
    for mi, m in enumerate(c.tables(data, "memcg", "", most=MAX_SCENARIO_MEMCGS,
                                    what="memory cgroups (the zone's table)")):
        w = f"memcg[{mi}]."
        c.keys(m, _MEMCG_KEYS, w)
        mname = c.comm(m, "name", w)
        if mname in [x.name for x in memcgs]:
            c.fail(w + "name", f"{_show(mname)}: another [[memcg]] has this name")
        limit = c.number(m, "limit_mb", w, integer=True, minimum=1, **mb_bound)
        parent = c.comm(m, "parent", w) if "parent" in m else ""
        group = m.get("oom_group", False)
        if not isinstance(group, bool):
            c.fail(w + "oom_group", f"must be true or false, not {_show(group)}")
        memcgs.append(MemcgSpec(mname, float(limit), parent, group))
    memcgs = _memcg_tree_order(c, memcgs)

    tasks: list[TaskSpec] = []
    raw_tasks = c.tables(data, "task", "", most=MAX_TASKS, what="[[task]] tables")
    if not raw_tasks:
        c.fail("task", "a scenario needs at least one [[task]]")
    zone_pages = _pages(memory_mb)
    for ti, t in enumerate(raw_tasks):
        w = f"task[{ti}]."
        c.keys(t, _TASK_KEYS, w)
        tname = c.comm(t, "name", w, default=f"task{ti}")
        shares = t.get("mm", "")
        if not isinstance(shares, str) or ("mm" in t and not shares):
            c.fail(w + "mm", f"must be the name of the task whose mm it shares, not {_show(shares)}")
        if shares:
            given = [k for k in _MM_KEYS if k in t]
            if given:
                c.fail(w + given[0], f"{tname}: shares the mm of {_show(shares)} (mm), whose {given[0]} "
                                     f"applies: a task sharing an mm has none of its own")
        count = c.number(t, "count", w, default=1, integer=True, minimum=1, maximum=MAX_TASKS)
        if len(tasks) + count > MAX_TASKS:
            c.fail(w + "count", f"more than {MAX_TASKS} tasks in all (each is a process)")
        adj = c.number(t, "oom_score_adj", w, default=0, integer=True, minimum=-1000, maximum=1000)
        adj_last = adj
        if "oom_score_adj_last" in t:
            if count < 2:
                c.fail(w + "oom_score_adj_last", f"{tname}: a ladder needs count >= 2 (with one copy, "
                                                 f"oom_score_adj says it all)")
            adj_last = c.number(t, "oom_score_adj_last", w, integer=True, minimum=-1000, maximum=1000)
        notifier = c.string(t, "mmu_notifier", w, default="none", choices=tuple(MMU_NOTIFIERS))
        sigterm = t.get("sigterm", "default")
        if isinstance(sigterm, str):
            c.string(t, "sigterm", w, default="default", choices=SIGTERM_ANSWERS)
        else:
            sigterm = float(c.number(t, "sigterm", w, maximum=MAX_DURATION_MS,
                                     why=" (a day: the ms its SIGTERM handler takes before the task exits)"))
        # exit_mmap unmaps at most the whole zone: that must take at most a day too
        unmap = c.number(t, "exit_unmap_ms_per_mb", w, default=EXIT_UNMAP_MS_PER_MB,
                         maximum=MAX_DURATION_MS / memory_mb,
                         why=f" (unmapping all {memory_mb} MB of memory_mb must take at most a day)")
        pgtables_mb = c.number(t, "pgtables_mb", w, default=0.0, **mb_bound)
        pgt = c.number(t, "exit_free_pgtables_ms", w, default=round(FREE_PGTABLES_MS_PER_MB * pgtables_mb, 6),
                       **ms_bound)
        memcg = c.string(t, "memcg", w, default="")
        if memcg and memcg not in [m.name for m in memcgs]:
            c.fail(w + "memcg", f"no [[memcg]] is called {_show(memcg)}")
        raw_vmas = c.tables(t, "vma", w, most=MAX_VMAS, what=f"VMAs (the mm's table has {MAX_VMAS})")
        vmas = []
        for vi, v in enumerate(raw_vmas):
            vw = f"{w}vma[{vi}]."
            c.keys(v, _VMA_KEYS, vw)
            kind = c.string(v, "kind", vw, choices=VMA_KINDS)
            mb = c.number(v, "mb", vw, **mb_bound)
            mlocked = v.get("mlocked", False)
            if not isinstance(mlocked, bool):
                c.fail(vw + "mlocked", f"must be true or false, not {_show(mlocked)}")
            dirty = 0.0
            if "dirty_mb" in v:
                if kind != "file_shared":
                    c.fail(vw + "dirty_mb", f"only a file_shared VMA has dirty page cache (a written private "
                                            f"page is anon), not {kind}")
                dirty = c.number(v, "dirty_mb", vw, maximum=mb, why=" (the VMA's mb)")
            obj = ""
            if "object" in v:
                if kind != "shmem":
                    c.fail(vw + "object", f"only a shmem VMA maps a named object, not {kind}")
                obj = c.comm(v, "object", vw)
            vmas.append(VmaSpec(kind, float(mb), mlocked, float(dirty), obj))
        if len(vmas) == MAX_VMAS and not any(v.kind == "anon" for v in vmas):
            c.fail(w + "vma", f"at most {MAX_VMAS - 1} VMAs without an anon one (the run adds an "
                              f"anon VMA for alloc, and the mm's table has {MAX_VMAS})")
        steps = []
        for si, s in enumerate(c.tables(t, "step", w, most=MAX_STEPS,
                                        what="steps (a worker gets them on its command line)")):
            sw = f"{w}step[{si}]."
            op = c.string(s, "op", sw, choices=OPS)
            if op == "mmap_sem_up" and "mode" in s:
                c.fail(sw + "mode", "mmap_sem_up takes no mode: it releases whatever the task holds "
                                    "on that mmap_sem")
            c.keys(s, {"op"} | _OP_KEYS[op], sw)
            if op == "alloc":
                steps.append(StepSpec(op, mb=float(c.number(s, "mb", sw, positive=True, **mb_bound))))
            elif op in ("sleep", "busy"):
                steps.append(StepSpec(op, ms=float(c.number(s, "ms", sw, **ms_bound))))
            elif op == "mm_pin":
                other = c.string(s, "task", sw)
                steps.append(StepSpec(op, task=other, ms=float(c.number(s, "ms", sw, **ms_bound))))
            elif op in ("mmap_sem_down", "mmap_sem_up"):
                other = s.get("task", "")
                if not isinstance(other, str):
                    c.fail(sw + "task", f"must be a task's name, not {_show(other)}")
                mode = ""
                if op == "mmap_sem_down":
                    mode = c.string(s, "mode", sw, default="write", choices=MMAP_SEM_MODES)
                steps.append(StepSpec(op, task=other, mode=mode))
            elif op == "touch":
                if shares:
                    c.fail(sw + "vma", f"{tname} shares the mm of {_show(shares)} (mm): its owner touches its VMAs")
                steps.append(_touch_step(c, s, sw, vmas, tname, ms_bound, memory_mb))
            elif op in ("lock", "unlock") or op in SHM_OPS:
                steps.append(StepSpec(op, name=c.comm(s, "name", sw)))
            else:
                steps.append(StepSpec(op))
        _check_own_read_holds(c, w, tname, steps)
        # alloc grows one VMA whose room is its initial pages + the zone's (supervisor._layout)
        alloc_pages = sum(_pages(s.mb) for s in steps if s.op == "alloc")
        if alloc_pages > zone_pages:
            c.fail(w + "step", f"its allocs add up to {alloc_pages} pages, more than the zone's "
                               f"{zone_pages} ({memory_mb} MB)")
        for k in range(count):
            full = tname if count == 1 else f"{tname}-{k}"
            if len(full) > MAX_COMM:
                c.fail(w + "name", f"{full!r} is longer than a comm's {MAX_COMM} characters")
            tasks.append(TaskSpec(full, ladder_adj(adj, adj_last, k, count), notifier, float(unmap), float(pgt), tuple(vmas), tuple(steps),
                                  float(pgtables_mb), memcg, mm=shares, sigterm=sigterm))

    seen = set()
    for t in tasks:
        if t.name in seen:
            c.fail("task.name", f"two tasks are called {t.name!r}")
        seen.add(t.name)
    for t in tasks:
        for s in t.steps:
            if s.task and s.task not in seen:
                c.fail("task.step.task", f"{t.name}: no task is called {_show(s.task)}")
            if s.op == "mm_pin" and s.task == t.name:
                c.fail("task.step.task", f"{t.name}: mm_pin names itself (a task holds its own mm already)")
    tasks = _share_mms(c, tasks)
    tasks, objects = _objects(c, tasks, memcgs)
    writeback = c.number(data, "writeback_mb_per_s", "", default=WRITEBACK_MB_PER_S, positive=True,
                         maximum=MAX_MEMORY_MB, why=" (1 TiB a second)")
    nr_cpus = c.number(data, "nr_cpus", "", default=NR_CPUS, integer=True, minimum=1, maximum=MAX_CPUS,
                       why=" (the kernel's NR_CPUS)")
    # each ms-per-MB cost times the whole zone must stay inside a day, as every duration does
    cost_bound = dict(maximum=MAX_DURATION_MS / memory_mb,
                      why=f" (all {memory_mb} MB of memory_mb at that cost must take at most a day)")
    reclaim_ms = c.number(data, "reclaim_ms_per_mb", "", default=RECLAIM_MS_PER_MB, **cost_bound)
    refault_ms = c.number(data, "refault_ms_per_mb", "", default=REFAULT_MS_PER_MB, **cost_bound)
    swap_mb = c.number(data, "swap_mb", "", default=0, integer=True, maximum=MAX_MEMORY_MB, why=" (1 TiB)")
    swap_rate = c.number(data, "swap_mb_per_s", "", default=SWAP_MB_PER_S, positive=True,
                         maximum=MAX_MEMORY_MB, why=" (1 TiB a second)")
    locks = {s.name for t in tasks for s in t.steps if s.op in ("lock", "unlock")}
    if len(locks) > MAX_LOCKS:
        c.fail("task.step.name", f"at most {MAX_LOCKS} distinct lock names, not {len(locks)}")

    min_kills = c.number(data, "min_kills", "", default=0, integer=True, maximum=len(tasks),
                         why=" (the number of tasks)")
    expected = {}
    raw_expected = data.get("expected", {})
    if not isinstance(raw_expected, dict):
        c.fail("expected", "must be a table: policy = { verdict = ..., kills = ..., why = ... }")
    for pol, e in raw_expected.items():
        if not pol.isprintable() or len(pol) > MAX_POLICY_NAME:
            c.fail(f"expected.{pol}", f"not a policy's name (at most {MAX_POLICY_NAME} printable characters)")
        w = f"expected.{pol}."
        if not isinstance(e, dict):
            c.fail(f"expected.{pol}", "must be a table { verdict = ..., kills = ..., why = ... }")
        c.keys(e, _EXPECTED_KEYS, w)
        kills = c.number(e, "kills", w, default=-1, integer=True, minimum=-1, maximum=len(tasks),
                         why=" (the number of tasks)")
        why = c.text(e, "why", w, "-", max_bytes=MAX_TEXT_BYTES, newlines=False) or "-"
        expected[pol] = Expected(Verdict(c.string(e, "verdict", w, choices=VERDICTS)),
                                 None if kills == -1 else kills, why)

    initial = sum(_start_pages(t) for t in tasks) + sum(o.pages for o in objects)
    if initial > zone_pages:
        c.fail("memory_mb", f"the tasks need {initial} pages at start but the zone has {zone_pages} "
                            f"({memory_mb} MB)")
    for m in memcgs:
        below = {m.name}                 # usage is hierarchical: its tasks and its descendants'
        for x in memcgs:                 # parents come first: one pass from m finds them all
            if x.parent in below:
                below.add(x.name)
        used = sum(_start_pages(t) for t in tasks if t.memcg in below) \
            + sum(o.pages for o in objects if o.memcg in below)
        if used > _pages(m.limit_mb):
            whose = "its tasks" if below == {m.name} else "its tasks and its descendants'"
            c.fail("memcg.limit_mb", f"{m.name}: {whose} need {used} pages at start, the limit is "
                                     f"{_pages(m.limit_mb)} ({_num(m.limit_mb)} MB)")
    # Every mm's segment is sparse but mapped whole, by the supervisor and by each worker
    # that touches it: its VMAs, page tables and room for the zone (supervisor._layout).
    mapped = sum(MM_HEADER_PAGES if t.mm else _start_pages(t) + zone_pages + MM_HEADER_PAGES for t in tasks) \
        + sum(o.pages for o in objects)
    if mapped > _pages(MAX_MAPPED_MB):
        c.fail("memory_mb", f"{len(tasks)} tasks, each mapping room for the whole zone ({memory_mb} MB), "
                            f"map more than the {MAX_MAPPED_MB >> 20} TiB a run may map in all: "
                            f"use fewer tasks or a smaller memory_mb")
    return Scenario(name, description, float(memory_mb), int(min_kills), float(run_deadline_s),
                    tuple(tasks), source, expected, tuple(memcgs), tuple(objects), float(writeback),
                    nr_cpus, float(reclaim_ms), float(refault_ms), float(swap_mb), float(swap_rate))


def ladder_adj(first: int, last: int, k: int, count: int) -> int:
    """The oom_score_adj of copy ``k`` of ``count`` on a ladder from ``first`` (copy 0) to
    ``last`` (copy count-1): spread evenly, rounded down, so every value lies between the
    two ends and each end is taken by its copy (as Android spreads its cached apps over
    CACHED_APP_MIN_ADJ..CACHED_APP_MAX_ADJ in LRU order)."""
    if count < 2:
        return first
    return first + (last - first) * k // (count - 1)


def _objects(c: _Checker, tasks: list[TaskSpec], memcgs: list[MemcgSpec]) -> tuple[list[TaskSpec], list[ObjectSpec]]:
    """The page-cache and shmem objects the tasks' VMAs map, in file order, and the tasks
    with ``vma_objects`` set. Each ``file_*`` VMA and each shmem VMA without ``object``
    has an object of its own; shmem VMAs naming one object share it: its size is the
    largest of them, its memcg the first mapper's. Every shm step must name an object."""
    objects: list[ObjectSpec] = []
    named: dict[str, int] = {}
    out = []
    for t in tasks:
        idx = []
        for v in t.vmas:
            if v.kind not in OBJECT_KINDS:
                idx.append(-1)
                continue
            pages = _pages(v.mb)
            if v.object and v.object in named:
                k = named[v.object]
                o = objects[k]
                objects[k] = ObjectSpec(o.kind, max(o.pages, pages), 0, o.memcg, o.name)
            else:
                k = len(objects)
                if v.object:
                    named[v.object] = k
                objects.append(ObjectSpec("shmem" if v.kind == "shmem" else "file", pages,
                                          _pages(v.dirty_mb), t.memcg, v.object))
            idx.append(k)
        out.append(dataclasses.replace(t, vma_objects=tuple(idx)))
    if len(objects) > MAX_OBJECTS:
        c.fail("task.vma", f"at most {MAX_OBJECTS} page-cache and shmem objects in all (each file or shmem VMA "
                           f"maps one), not {len(objects)}")
    for t in out:
        for s in t.steps:
            if s.op in SHM_OPS and s.name not in named:
                c.fail("task.step.name", f"{t.name}: {s.op}: no shmem VMA maps an object called {_show(s.name)}")
    return out, objects


def _memcg_tree_order(c: _Checker, memcgs: list[MemcgSpec]) -> list[MemcgSpec]:
    """The memcgs with every parent before its children (else in file order), after checking
    that each parent exists and that no memcg is its own ancestor."""
    index = {m.name: i for i, m in enumerate(memcgs)}
    for i, m in enumerate(memcgs):
        if not m.parent:
            continue
        if m.parent not in index:
            c.fail(f"memcg[{i}].parent", f"no [[memcg]] is called {_show(m.parent)}")
        if m.parent == m.name:
            c.fail(f"memcg[{i}].parent", f"{m.name}: a memcg cannot be its own parent")
        seen, up = [m.name], m.parent
        while up:
            if up in seen:
                c.fail(f"memcg[{i}].parent", f"{m.name}: its parents make a cycle "
                                             f"({' -> '.join(seen + [up])})")
            seen.append(up)
            up = memcgs[index[up]].parent
    ordered: list[MemcgSpec] = []
    def place(m: MemcgSpec) -> None:
        if m in ordered:
            return
        if m.parent:
            place(memcgs[index[m.parent]])
        ordered.append(m)
    for m in memcgs:
        place(m)
    return ordered


def _touch_step(c: _Checker, s: dict, sw: str, vmas: list[VmaSpec], tname: str, ms_bound: dict,
                memory_mb: float) -> StepSpec:
    """``touch``: read ``mb`` (default: all) of a file VMA again (refaults), or of an anon VMA
    (swap-ins), ``repeat`` times, each taking ``ms`` of work besides. ``vma``: its index in
    the task's [[task.vma]], or a kind (the first VMA of that kind; "anon" with none declared:
    the VMA alloc grows)."""
    v = s.get("vma")
    grows = False                       # the anon VMA the run adds for alloc (none declared)
    if isinstance(v, str) and not isinstance(v, bool):
        found = [i for i, x in enumerate(vmas) if x.kind == v]
        if not found and v == "anon":
            found, grows = [len(vmas)], True
        if not found:
            c.fail(sw + "vma", f"{tname} has no VMA of kind {_show(v)}")
        index = found[0]
    else:
        index = c.number(s, "vma", sw, integer=True, minimum=0, maximum=max(0, len(vmas) - 1),
                         why=" (the task's last VMA)")
        if not vmas:
            c.fail(sw + "vma", f"{tname} has no VMA of its own to touch")
    vma = VmaSpec("anon", 0.0) if grows else vmas[index]
    if vma.kind not in PAGE_CACHE_KINDS + ("anon",) or vma.mlocked:
        c.fail(sw + "vma", f"a touch reads a file VMA again ({', '.join(PAGE_CACHE_KINDS)}) or an anon one "
                           f"that may be on swap, not {'mlocked ' if vma.mlocked else ''}{vma.kind}")
    if vma.kind == "anon":              # what it holds by then (alloc grows it): all of it, by default
        mb = c.number(s, "mb", sw, default=memory_mb, positive=True,
                      maximum=memory_mb, why=" (memory_mb)")
    else:
        mb = c.number(s, "mb", sw, default=vma.mb, positive=True, maximum=vma.mb, why=" (the VMA's mb)")
    repeat = c.number(s, "repeat", sw, default=1, integer=True, minimum=1, maximum=MAX_REPEAT)
    ms = c.number(s, "ms", sw, default=0.0, maximum=ms_bound["maximum"] / repeat,
                  why=" (repeat times ms must be at most a day)")
    return StepSpec("touch", mb=float(mb), ms=float(ms), vma=index, repeat=repeat)


def _check_own_read_holds(c: _Checker, where: str, name: str, steps: list[StepSpec]) -> None:
    """Refuse an ``alloc`` that maps memory (0.125 MB or more: the mmap takes mmap_sem for
    write) while the task holds its own mmap_sem for read only: in the kernel, down_write
    under one's own read lock waits for ever."""
    own: list[str] = []                      # modes of the task's holds on its own mmap_sem
    for si, s in enumerate(steps):
        if s.op == "mmap_sem_down" and not s.task:
            own.append(s.mode)
        elif s.op == "mmap_sem_up" and not s.task:
            own.clear()
        elif s.op == "alloc" and own and "write" not in own and _pages(s.mb) >= MMAP_THRESHOLD_PAGES:
            c.fail(f"{where}step[{si}]", f"{name}: an alloc of {_num(s.mb)} MB while it holds its own "
                                         f"mmap_sem for read would deadlock (an alloc of {MMAP_THRESHOLD_MB} MB "
                                         f"or more maps memory first: down_write under its own read lock)")


def _share_mms(c: _Checker, tasks: list[TaskSpec]) -> list[TaskSpec]:
    """Check each ``mm`` (a task of the file, not itself, that has an mm of its own) and give
    the sharer its owner's mm keys, which apply to it (CLONE_VM: one mm_struct)."""
    by_name = {t.name: t for t in tasks}
    out = []
    for t in tasks:
        if t.mm:
            owner = by_name.get(t.mm)
            if t.mm == t.name:
                c.fail("task.mm", f"{t.name}: mm names the task itself")
            if owner is None:
                c.fail("task.mm", f"{t.name}: no task is called {_show(t.mm)} (a task with count = N "
                                  f"is called NAME-0 .. NAME-N-1)")
            if owner.mm:
                c.fail("task.mm", f"{t.name}: {t.mm!r} shares the mm of {owner.mm!r} itself: name the "
                                  f"owner, {owner.mm!r}")
            t = dataclasses.replace(t, oom_score_adj=owner.oom_score_adj, mmu_notifier=owner.mmu_notifier,
                                    exit_unmap_ms_per_mb=owner.exit_unmap_ms_per_mb,
                                    exit_free_pgtables_ms=owner.exit_free_pgtables_ms, memcg=owner.memcg)
        out.append(t)
    return out


def _start_pages(t: TaskSpec) -> int:
    """Pages charged to the task's own mm at start (its objects' are charged apart)."""
    return sum(_pages(v.mb) for v in t.vmas if v.kind not in OBJECT_KINDS) + _pages(t.pgtables_mb)
