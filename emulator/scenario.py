"""Scenarios: TOML files that say which tasks exist and what they do.

``load_scenario`` accepts a built-in name (a file in ``emulator/scenarios/``)
or a path, checks every key and value, and returns a frozen
:class:`Scenario` with each ``[[task]]`` expanded by its ``count``. Every
mistake raises :class:`ScenarioError` naming the file and the key.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources

from .errors import ScenarioError
from .mm import MMU_NOTIFIERS, PAGES_PER_MB, VMA_KINDS

OPS = ("alloc", "sleep", "busy", "mmap_sem_down", "mmap_sem_up", "lock", "unlock", "exit")
_OP_KEYS = {"alloc": {"mb"}, "sleep": {"ms"}, "busy": {"ms"}, "mmap_sem_down": {"task"},
            "mmap_sem_up": {"task"}, "lock": {"name"}, "unlock": {"name"}, "exit": set()}
_TOP_KEYS = {"name", "description", "memory_mb", "min_kills", "run_deadline_s", "task", "memcg",
             "expected"}
_TASK_KEYS = {"name", "count", "oom_score_adj", "mmu_notifier", "exit_unmap_ms_per_mb",
              "exit_free_pgtables_ms", "pgtables_mb", "memcg", "vma", "step"}
_MEMCG_KEYS = {"name", "limit_mb"}
_EXPECTED_KEYS = {"verdict", "kills", "why"}
VERDICTS = ("resolved", "panic", "hung")
_VMA_KEYS = {"kind", "mb", "mlocked"}


@dataclass(frozen=True)
class VmaSpec:
    kind: str
    mb: float
    mlocked: bool = False


@dataclass(frozen=True)
class StepSpec:
    op: str
    mb: float = 0.0
    ms: float = 0.0
    name: str = ""
    task: str = ""          # mmap_sem_down/_up: another task's mmap_sem (default: its own)


@dataclass(frozen=True)
class MemcgSpec:
    name: str
    limit_mb: float


@dataclass(frozen=True)
class Expected:
    """A scenario file's stated outcome under one policy, and why."""
    verdict: str
    kills: int | None
    why: str


@dataclass(frozen=True)
class TaskSpec:
    name: str
    oom_score_adj: int = 0
    mmu_notifier: str = "none"
    exit_unmap_ms_per_mb: float = 2.0
    exit_free_pgtables_ms: float = 10.0
    vmas: tuple[VmaSpec, ...] = ()
    steps: tuple[StepSpec, ...] = ()
    pgtables_mb: float = 0.0
    memcg: str = ""

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
    memcgs: tuple[MemcgSpec, ...] = ()

    def memcg_index(self, name: str) -> int:
        """0 for the root memcg, else 1 + the position in ``memcgs``."""
        if not name:
            return 0
        return 1 + [m.name for m in self.memcgs].index(name)

    @property
    def lock_names(self) -> list[str]:
        return sorted({s.name for t in self.tasks for s in t.steps if s.op in ("lock", "unlock")})


# The seed's cases in the order the argument names them, then the rest.
SEED_ORDER = ("mlocked", "mmu_notifier", "shared_file", "small_rss", "slow_pgtables",
              "mmap_sem_held", "parallel_victims", "livelock", "memcg_tight")


def builtin_names() -> list[str]:
    files = resources.files("emulator.scenarios")
    names = [p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml")]
    rank = {n: i for i, n in enumerate(SEED_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def builtin_path(name: str) -> str:
    return str(resources.files("emulator.scenarios") / f"{name}.toml")


def load_scenario(name_or_path: str | os.PathLike) -> Scenario:
    """Load a built-in scenario by name, or a scenario file by path."""
    text_name = os.fspath(name_or_path)
    if text_name in builtin_names():
        path = builtin_path(text_name)
    elif os.path.exists(text_name):
        path = text_name
    else:
        known = ", ".join(builtin_names())
        raise ScenarioError(text_name, "", f"no such scenario file or built-in name (built-in: {known})")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(path, "", f"not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ScenarioError(path, "", "not valid TOML: not UTF-8 text") from None
    except OSError as e:
        raise ScenarioError(path, "", e.strerror or str(e)) from None
    default_name = os.path.splitext(os.path.basename(path))[0]
    return parse_scenario(data, source=path, default_name=default_name)


class _Checker:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str):
        raise ScenarioError(self.source, key, message)

    def keys(self, table: dict, allowed: set, where: str) -> None:
        for k in table:
            if k not in allowed:
                self.fail(f"{where}{k}", f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def number(self, table: dict, key: str, where: str, default=None, *, minimum=0.0,
               maximum=None, integer=False, positive=False):
        if key not in table:
            if default is None:
                self.fail(where + key, "is required")
            return default
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            self.fail(where + key, f"must be {'an integer' if integer else 'a number'}, not {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            self.fail(where + key, f"must be finite, not {v!r}")
        if positive and v <= 0:
            self.fail(where + key, f"must be > 0, not {v!r}")
        if minimum is not None and v < minimum:
            self.fail(where + key, f"must be >= {minimum:g}, not {v!r}")
        if maximum is not None and v > maximum:
            self.fail(where + key, f"must be <= {maximum:g}, not {v!r}")
        return v

    def string(self, table: dict, key: str, where: str, default=None, choices=None) -> str:
        if key not in table:
            if default is None:
                self.fail(where + key, "is required")
            return default
        v = table[key]
        if not isinstance(v, str) or not v:
            self.fail(where + key, f"must be a non-empty string, not {v!r}")
        if choices is not None and v not in choices:
            self.fail(where + key, f"must be one of {', '.join(choices)}, not {v!r}")
        return v

    def tables(self, table: dict, key: str, where: str) -> list:
        v = table.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
            self.fail(where + key, f"must be an array of tables ([[{key}]])")
        return v


def _name_ok(name: str) -> bool:
    return all(c.isalnum() or c in "-_" for c in name) and len(name) <= 15


def parse_scenario(data: dict, source: str = "<memory>", default_name: str = "scenario") -> Scenario:
    """Check a decoded TOML document and build the :class:`Scenario`."""
    c = _Checker(source)
    c.keys(data, _TOP_KEYS, "")
    name = c.string(data, "name", "", default=default_name)
    description = data.get("description", "")
    if not isinstance(description, str):
        c.fail("description", "must be a string")
    memory_mb = c.number(data, "memory_mb", "", positive=True)
    min_kills = c.number(data, "min_kills", "", default=0, integer=True)
    run_deadline_s = c.number(data, "run_deadline_s", "", default=60, positive=True)
    expected = {}
    raw_expected = data.get("expected", {})
    if not isinstance(raw_expected, dict):
        c.fail("expected", "must be a table: policy = { verdict = ..., kills = ..., why = ... }")
    for pol, e in raw_expected.items():
        w = f"expected.{pol}."
        if not isinstance(e, dict):
            c.fail(f"expected.{pol}", "must be a table { verdict = ..., kills = ..., why = ... }")
        c.keys(e, _EXPECTED_KEYS, w)
        kills = c.number(e, "kills", w, default=-1, integer=True, minimum=-1)
        expected[pol] = Expected(c.string(e, "verdict", w, choices=VERDICTS),
                                 None if kills == -1 else kills, c.string(e, "why", w, default="-"))
    memcgs = []
    for mi, m in enumerate(c.tables(data, "memcg", "")):
        w = f"memcg[{mi}]."
        c.keys(m, _MEMCG_KEYS, w)
        mname = c.string(m, "name", w)
        if not _name_ok(mname) or mname in [x.name for x in memcgs]:
            c.fail(w + "name", f"{mname!r}: use a new name of letters, digits, '-' or '_'")
        memcgs.append(MemcgSpec(mname, float(c.number(m, "limit_mb", w, positive=True))))
    if len(memcgs) > 31:
        c.fail("memcg", "at most 31 memory cgroups")

    tasks: list[TaskSpec] = []
    raw_tasks = c.tables(data, "task", "")
    if not raw_tasks:
        c.fail("task", "a scenario needs at least one [[task]]")
    for ti, t in enumerate(raw_tasks):
        w = f"task[{ti}]."
        c.keys(t, _TASK_KEYS, w)
        tname = c.string(t, "name", w, default=f"task{ti}")
        if not _name_ok(tname):
            c.fail(w + "name", f"{tname!r}: use at most 15 letters, digits, '-' or '_' (a comm)")
        count = c.number(t, "count", w, default=1, integer=True, minimum=1, maximum=1000)
        adj = c.number(t, "oom_score_adj", w, default=0, integer=True, minimum=-1000, maximum=1000)
        notifier = c.string(t, "mmu_notifier", w, default="none", choices=tuple(MMU_NOTIFIERS))
        unmap = c.number(t, "exit_unmap_ms_per_mb", w, default=2.0)
        pgt = c.number(t, "exit_free_pgtables_ms", w, default=10.0)
        pgtables_mb = c.number(t, "pgtables_mb", w, default=0.0)
        memcg = c.string(t, "memcg", w, default="")
        if memcg and memcg not in [m.name for m in memcgs]:
            c.fail(w + "memcg", f"no [[memcg]] is called {memcg!r}")
        vmas = []
        for vi, v in enumerate(c.tables(t, "vma", w)):
            vw = f"{w}vma[{vi}]."
            c.keys(v, _VMA_KEYS, vw)
            kind = c.string(v, "kind", vw, choices=VMA_KINDS)
            mb = c.number(v, "mb", vw)
            mlocked = v.get("mlocked", False)
            if not isinstance(mlocked, bool):
                c.fail(vw + "mlocked", f"must be true or false, not {mlocked!r}")
            vmas.append(VmaSpec(kind, float(mb), mlocked))
        steps = []
        for si, s in enumerate(c.tables(t, "step", w)):
            sw = f"{w}step[{si}]."
            op = c.string(s, "op", sw, choices=OPS)
            c.keys(s, {"op"} | _OP_KEYS[op], sw)
            if op == "alloc":
                steps.append(StepSpec(op, mb=float(c.number(s, "mb", sw, positive=True))))
            elif op in ("sleep", "busy"):
                steps.append(StepSpec(op, ms=float(c.number(s, "ms", sw))))
            elif op in ("mmap_sem_down", "mmap_sem_up"):
                other = s.get("task", "")
                if not isinstance(other, str):
                    c.fail(sw + "task", f"must be a task's name, not {other!r}")
                steps.append(StepSpec(op, task=other))
            elif op in ("lock", "unlock"):
                lname = c.string(s, "name", sw)
                if not _name_ok(lname):
                    c.fail(sw + "name", f"{lname!r}: use letters, digits, '-' or '_'")
                steps.append(StepSpec(op, name=lname))
            else:
                steps.append(StepSpec(op))
        for k in range(count):
            full = tname if count == 1 else f"{tname}-{k}"
            if len(full) > 15:
                c.fail(w + "name", f"{full!r} is longer than a comm's 15 characters")
            tasks.append(TaskSpec(full, adj, notifier, float(unmap), float(pgt), tuple(vmas), tuple(steps),
                                  float(pgtables_mb), memcg))

    seen = set()
    for t in tasks:
        if t.name in seen:
            c.fail("task.name", f"two tasks are called {t.name!r}")
        seen.add(t.name)
    for ti, t in enumerate(tasks):
        for s in t.steps:
            if s.task and s.task not in seen:
                c.fail("task.step.task", f"{t.name}: no task is called {s.task!r}")
    # Checked in pages, rounded as the run charges them.
    pages = lambda mb: round(mb * PAGES_PER_MB)
    start_pages = lambda t: sum(pages(v.mb) for v in t.vmas) + pages(t.pgtables_mb)
    initial = sum(start_pages(t) for t in tasks)
    if initial > pages(memory_mb):
        c.fail("memory_mb", f"the tasks need {initial} pages at start but the zone has {pages(memory_mb)} "
                            f"({memory_mb:g} MB)")
    for m in memcgs:
        used = sum(start_pages(t) for t in tasks if t.memcg == m.name)
        if used > pages(m.limit_mb):
            c.fail("memcg.limit_mb", f"{m.name}: its tasks need {used} pages at start, the limit is "
                                     f"{pages(m.limit_mb)} ({m.limit_mb:g} MB)")
    return Scenario(name, description, float(memory_mb), int(min_kills), float(run_deadline_s),
                    tuple(tasks), source, expected, tuple(memcgs))
