"""Mutated scenario files, and the checks a fuzz of the scenario loader makes on them.

Each mutant starts from a built-in scenario file (``emulator/scenarios/*.toml``):
either its text, flipped, truncated or spliced, or its decoded tables with
values replaced by extreme or odd values of every TOML type, keys deleted or
added and tables duplicated, written back as TOML (and then perhaps
flipped or truncated too). The promise checked (issue 8):

* ``load_scenario`` returns a Scenario or raises ScenarioError, one line
  naming the file, whatever the file holds;
* a file it accepts runs: ``oomemu run FILE --quiet`` exits 0, 2 or 3, prints
  no traceback, and ends within a generous wall-clock bound.

``tests/pure/test_fuzz_scenarios.py`` checks the first on a few hundred
mutants, ``tests/cli/test_fuzz_scenarios.py`` the second on a few; the
standalone fuzz (``python -m bench.fuzz``, ``make fuzz``) both, on as many as
asked. This module holds no tests.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import signal
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass

from hypothesis import strategies as st

from emulator.errors import ScenarioError
from emulator.scenario import Scenario, builtin_names, builtin_path, load_scenario

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOWED_EXITS = {0, 2, 3}
# A run of an accepted mutant is skipped (counted, not run) past these, to spare the machine:
RUN_MAX_TASKS = 64            # each task is a Python process
RUN_MAX_MB = 1024             # real memory a run can take: the zone, or what its tasks ask for


# -- TOML out ------------------------------------------------------------------

@dataclass(frozen=True)
class Raw:
    """TOML text put into a document as it is (what the data model cannot say)."""
    text: str


def _string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML for {type(v).__name__}")


def dumps(doc: dict) -> str:
    """A document as top-level keys with inline values (valid TOML for any nesting)."""
    return "".join(f"{_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


# -- odd values of every TOML type ---------------------------------------------

ODD_INTS = [0, 1, -1, 2, 15, 16, 31, 32, 63, 64, 65, 255, 256, 257, 1000, 1001, 86_400, 86_401,
            86_400_000, 86_400_001, 1 << 20, (1 << 20) + 1, 2**31 - 1, 2**31, 2**32, 2**53 + 1,
            2**63 - 1, -2**63, 2**64, 10**30]
ODD_FLOATS = [0.0, -0.0, 0.5, 0.9, 256.5, 1e-300, 5e-324, 1e308, -1e308, math.inf, -math.inf,
              math.nan, 86_400.000001, 1e15, 0.004, 0.003]
ODD_STRINGS = ["", " ", "x" * 15, "x" * 16, "x" * 48, "x" * 49, "é" * 24, "é" * 25, "\x00",
               "a\nb", "\x1b[31mred", "../x", "a/b", ".", "..", "\u202eevil", "🙂" * 12,
               "🙂" * 13, "a" * 5000, "v4.17", "anon", "alloc", "lock", "resolved", "task0",
               "L", "none", "blockable", "hugetlb", "mmap_sem_down", "exit"]
KNOWN_KEYS = sorted({"name", "description", "memory_mb", "min_kills", "run_deadline_s", "task",
                     "memcg", "expected", "count", "oom_score_adj", "oom_score_adj_last", "mmu_notifier",
                     "exit_unmap_ms_per_mb", "exit_free_pgtables_ms", "pgtables_mb", "vma", "step",
                     "limit_mb", "verdict", "kills", "why", "kind", "mb", "mlocked", "op", "ms",
                     "dirty_mb", "object", "writeback_mb_per_s", "parent", "oom_group"})
DEEP = [Raw("[" * 3000 + "]" * 3000), Raw("9" * 5000), Raw("{ a = " * 400 + "1" + " }" * 400),
        Raw("1979-05-27T07:32:00Z"), Raw("07:32:00"), Raw("1979-05-27"), Raw("0x7fffffffffffffff"),
        Raw("'''\nmulti\nline\n'''"), Raw("[[1, 2], ['a']]"), Raw("[{}, {}]")]

# Values near the edges of what a key may hold (inside and just outside), by key.
EDGES = {
    "memory_mb": [1, 2, 64, 1024, 1 << 20, (1 << 20) + 1, 256.5],
    "limit_mb": [1, 2, 64, 1 << 20, 100.5],
    "mb": [0, 5e-324, 1e-9, 0.001, 0.5, 1, 255.9, 256, 257, 1 << 20],
    "pgtables_mb": [0, 5e-324, 0.001, 1, 200, 256],
    "ms": [0, 5e-324, 0.001, 1, 86_400_000, 86_400_001],
    "exit_free_pgtables_ms": [0, 0.001, 86_400_000, 86_400_001],
    "exit_unmap_ms_per_mb": [0, 0.001, 337_500, 337_501, 1e6],
    "run_deadline_s": [1e-9, 0.001, 1, 86_400, 86_400.001],
    "count": [1, 2, 15, 16, 200, 1000, 1001],
    "oom_score_adj": [-1000, -999, 999, 1000, 1001, -1001],
    "oom_score_adj_last": [-1000, 0, 900, 999, 1000, 1001, -1001, 999.5],
    "min_kills": [0, 1, 4, 5, 1000],
    "kills": [-1, 0, 1, 3, 4, 5, 1000],
    "name": ["a", "x" * 15, "x" * 16, "é" * 24, "é" * 25, "a b", "a/b", "L", "holder", "task0", "é"],
    "kind": ["anon", "file_private", "file_shared", "hugetlb", "pfnmap", "shmem", "thp"],
    "op": ["alloc", "sleep", "busy", "mmap_sem_down", "mmap_sem_up", "lock", "unlock", "exit", "shm_unlink",
           "shm_truncate", "fork"],
    "dirty_mb": [0, 5e-324, 1, 60, 100, 120, 121, -1],
    "object": ["bufpool", "data", "x" * 15, "x" * 16, "a b"],
    "writeback_mb_per_s": [5e-324, 0.001, 1, 100, 1 << 20, (1 << 20) + 1, 0, -1],
    "mmu_notifier": ["none", "nonblocking", "blockable", "x"],
    "verdict": ["resolved", "panic", "hung", "ok"],
    "mlocked": [True, False, 1],
    "memcg": ["", "tight", "roomy", "a", "b", "nosuch"],
    "parent": ["", "tight", "roomy", "a", "b", "nosuch"],
    "oom_group": [True, False, 1],
    "task": ["", "vb", "holder", "va", "nosuch"],
    "why": ["", "x" * 4096, "x" * 4097, "a\nb"],
    "description": ["", "x" * 4096, "é" * 2049, "a\x1b[31m"],
}
ALL_EDGES = sorted({v for vs in EDGES.values() for v in vs if not isinstance(v, str)}, key=repr)

scalars = st.one_of(
    st.sampled_from(ODD_INTS), st.sampled_from(ODD_FLOATS), st.sampled_from(ODD_STRINGS),
    st.integers(), st.floats(), st.text(max_size=40), st.booleans(),
    st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc)), st.dates(), st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(KNOWN_KEYS) | st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
) | st.sampled_from(DEEP)


# -- mutations ---------------------------------------------------------------

def _slots(node, out, containers_only=False):
    """Every (container, key) in a decoded document; with containers_only, the containers."""
    if isinstance(node, dict):
        if containers_only:
            out.append(node)
        for k, v in node.items():
            if not containers_only:
                out.append((node, k))
            _slots(v, out, containers_only)
    elif isinstance(node, list):
        if containers_only:
            out.append(node)
        for i, v in enumerate(node):
            if not containers_only:
                out.append((node, i))
            _slots(v, out, containers_only)
    return out


@st.composite
def structural_mutation(draw, doc: dict) -> None:
    """Change the decoded document in place, one way."""
    how = draw(st.sampled_from(["replace", "edge", "edge", "edge", "nudge", "nudge", "delete", "add",
                                "duplicate", "duplicate"]))
    if how in ("replace", "nudge", "edge"):
        slots = _slots(doc, [])
        container, key = draw(st.sampled_from(slots))
        old = container[key]
        if how == "edge":
            container[key] = draw(st.sampled_from(EDGES.get(key, ALL_EDGES)))
        elif how == "nudge" and isinstance(old, (int, float)) and not isinstance(old, bool):
            factor = draw(st.sampled_from([0, -1, 0.5, 0.999, 1.001, 2, 10, 1000, 1e6, 1e300]))
            new = old * factor
            if isinstance(old, int) and draw(st.booleans()):
                new = old + draw(st.sampled_from([-1, 1, 1000, 10**6]))
            container[key] = new
        else:
            container[key] = draw(values)
    elif how == "delete":
        dicts = [c for c in _slots(doc, [], True) if isinstance(c, dict) and c]
        target = draw(st.sampled_from(dicts))
        del target[draw(st.sampled_from(sorted(target)))]
    elif how == "add":
        dicts = [c for c in _slots(doc, [], True) if isinstance(c, dict)]
        target = draw(st.sampled_from(dicts))
        target[draw(st.sampled_from(KNOWN_KEYS) | st.text(max_size=12))] = draw(values)
    else:                                        # duplicate an element of an array many times
        lists = [c for c in _slots(doc, [], True) if isinstance(c, list) and c]
        if not lists:
            return
        target = draw(st.sampled_from(lists))
        item = draw(st.sampled_from(target))
        times = draw(st.sampled_from([1, 2, 30, 62, 63, 64, 65, 255, 256, 257, 999, 1000, 1001]))
        target.extend(copy.deepcopy(item) for _ in range(times))


@st.composite
def text_mutation(draw, data: bytes) -> bytes:
    """Change the bytes of a file, one way."""
    how = draw(st.sampled_from(["truncate", "flip", "dup_line", "del_line", "junk", "dup_slice"]))
    if how == "truncate":
        return data[:draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    lines = data.split(b"\n")
    if how == "dup_line":
        i = draw(st.integers(0, len(lines) - 1))
        return b"\n".join(lines[:i + 1] + [lines[i]] + lines[i + 1:])
    if how == "del_line" and len(lines) > 1:
        i = draw(st.integers(0, len(lines) - 1))
        return b"\n".join(lines[:i] + lines[i + 1:])
    if how == "junk":
        i = draw(st.integers(0, len(data)))
        junk = draw(st.binary(min_size=1, max_size=20) | st.sampled_from(
            [b"\n[expected]\n", b"\n[[task]]\n", b"\n[task]\n", b"\nname = 1\n", b"\xff\xfe",
             b"\n" + toml_value(DEEP[0]).encode() + b"\n", b"\x00"]))
        return data[:i] + junk + data[i:]
    i = draw(st.integers(0, len(data)))
    j = draw(st.integers(i, min(len(data), i + 400)))
    return data[:j] + data[i:j] * draw(st.integers(1, 3)) + data[j:]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


_SOURCES = {name: _read(builtin_path(name)) for name in builtin_names()}


@st.composite
def mutants(draw) -> tuple[str, bytes]:
    """(the built-in it came from, the bytes of a mutated scenario file)."""
    origin = draw(st.sampled_from(sorted(_SOURCES)))
    raw = _SOURCES[origin]
    if draw(st.integers(0, 4)) == 0:                       # the file's own text
        for _ in range(draw(st.integers(1, 3))):
            raw = draw(text_mutation(raw))
        return origin, raw
    doc = tomllib.loads(raw.decode())
    for _ in range(draw(st.integers(1, 3))):
        draw(structural_mutation(doc))
    raw = dumps(doc).encode()
    if draw(st.integers(0, 3)) == 0:
        raw = draw(text_mutation(raw))
    return origin, raw


# -- checks ----------------------------------------------------------------------

def load_mutant(raw: bytes, directory: str) -> tuple[str, Scenario | None, str | None]:
    """Write ``raw`` to a new file in ``directory`` and load it: (its path, *check_load(path))."""
    fd, path = tempfile.mkstemp(suffix=".toml", dir=directory)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return path, *check_load(path)


def check_load(path: str) -> tuple[Scenario | None, str | None]:
    """(the scenario, None), or (None, None) for a ScenarioError, or (None, what went wrong)."""
    try:
        return load_scenario(path), None
    except ScenarioError as e:
        msg = str(e)
        if "\n" in msg or not msg.startswith(path):
            return None, f"ScenarioError not one line naming the file: {msg[:300]!r}"
        return None, None
    except BaseException as e:                 # the loader promised ScenarioError only
        if isinstance(e, KeyboardInterrupt):
            raise
        return None, f"{type(e).__name__}: {str(e)[:300]}"


def runnable(s: Scenario, max_tasks: int = RUN_MAX_TASKS, max_mb: int = RUN_MAX_MB) -> bool:
    need_mb = min(s.memory_mb, sum(t.initial_mb + t.alloc_mb for t in s.tasks))
    return len(s.tasks) <= max_tasks and need_mb <= max_mb


def speed_for(s: Scenario) -> float:
    """Fast enough that the run's deadline passes in about a second of real time."""
    return min(1e6, max(100.0, s.run_deadline_s))


def run_cli(path: str, s: Scenario, timeout: float, env: dict | None = None) -> tuple[str | None, int, str]:
    """Run a scenario through ``oomemu run``: (what went wrong or None, exit code, last line)."""
    args = [sys.executable, "-m", "emulator", "run", path, "--speed", f"{speed_for(s):g}", "--quiet"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         errors="replace", cwd=REPO_ROOT, env=env, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)       # the run's own session: its supervisor and workers
        except ProcessLookupError:
            pass
        p.communicate()
        return f"hang: still running after {timeout:g}s", p.returncode, ""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    last = (out.strip().splitlines() or [""])[-1]
    if p.returncode not in ALLOWED_EXITS:
        return f"exit {p.returncode}: {err.strip()[-400:]}", p.returncode, last
    if "Traceback" in err:
        return f"traceback (exit {p.returncode}): {err.strip()[-400:]}", p.returncode, last
    if p.returncode == 0 and not last.startswith(f"oomemu: {s.name} under "):
        return f"exit 0 without a summary line: {out.strip()[-200:]!r}", p.returncode, last
    return None, p.returncode, last
