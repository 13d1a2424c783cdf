"""Generated families of scenarios: one scenario's mechanism, its numbers drawn from ranges.

A family file (TOML) names a base scenario and the ranges its numbers are drawn
from, with a seed, so that the same file always gives the same family:

    [family]
    base = "mlocked"          # a built-in name, or a scenario file (relative to this one)
    count = 10                # members: mlocked~0 .. mlocked~9
    seed = 1
    mb = [0.7, 1.5]           # every size (memory_mb, a memcg's limit_mb, a VMA's or an
                              # alloc's mb, pgtables_mb) times one factor drawn from this range
    sleep_ms = [0.5, 2.0]     # every sleep step's ms (hold times: a lock or mmap_sem held
                              # across it) times a factor from this range
    busy_ms = [0.5, 3.0]      # every busy step's ms (time in D state) times a factor
    task_count = [1, 2]       # every task's count (if more than 1) times a whole factor

Each range is [low, high]; a factor is drawn uniformly from it, one per member
and range (``task_count``: a whole number). A range left out is [1, 1]. Sizes and
sizes of the machine move together (one ``mb`` factor), so a member keeps the
base's mechanism; the hold and D-state times move apart from each other, which
is what a sweep over a reaper's patience wants to vary. A member's ``min_kills``
is the base's (the mechanism decides it, not the numbers: keep ``task_count``
at [1, 1] for a base whose fewest kills depend on its counts), and it states
no expected outcome. Its ``run_deadline_s`` is the base's times the larger of
its ``sleep_ms`` and ``busy_ms`` factors (never shortened): a member whose holds
were stretched must not come out hung only because it met the base's deadline.
"""

from __future__ import annotations

import math
import os
import random

from ..errors import ScenarioError, UsageError
from ..scenario import MAX_DEADLINE_S, Scenario, builtin_names, builtin_path, parse_scenario

RANGES = ("mb", "sleep_ms", "busy_ms", "task_count")
KEYS = {"base", "count", "seed"} | set(RANGES)
MAX_MEMBERS = 10_000


def is_family(path: str) -> bool:
    """Is ``path`` a family file (a TOML file with a [family] table)?"""
    import tomllib
    if not (path.endswith(".toml") and os.path.isfile(path)):
        return False
    try:
        with open(path, "rb") as f:
            return "family" in tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return False


def _range(fam: dict, key: str, path: str, whole: bool = False) -> tuple[float, float]:
    r = fam.get(key, [1, 1])
    if (not isinstance(r, list) or len(r) != 2 or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                       for x in r) or not 0 < r[0] <= r[1] <= 1000
            or (whole and not all(float(x).is_integer() for x in r))):
        what = "whole numbers" if whole else "numbers"
        raise UsageError(f"{path}: family.{key}: must be [low, high], {what} with 0 < low <= high <= 1000, "
                         f"not {r!r}")
    return float(r[0]), float(r[1])


def load_family(path: str) -> list[Scenario]:
    """The members of the family file at ``path``; a mistake is one line (UsageError)."""
    import tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not TOML: {e}") from None
    fam = data.get("family")
    if not isinstance(fam, dict) or set(data) != {"family"}:
        raise UsageError(f"{path}: a family file holds one [family] table and nothing else")
    if unknown := set(fam) - KEYS:
        raise UsageError(f"{path}: family.{sorted(unknown)[0]}: not a family key (keys: {', '.join(sorted(KEYS))})")
    base, count, seed = fam.get("base"), fam.get("count"), fam.get("seed", 0)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_MEMBERS:
        raise UsageError(f"{path}: family.count: a whole number from 1 to {MAX_MEMBERS}, not {count!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UsageError(f"{path}: family.seed: a whole number, not {seed!r}")
    if not isinstance(base, str) or not base:
        raise UsageError(f"{path}: family.base: a built-in scenario's name or a scenario file")
    base_path = builtin_path(base) if base in builtin_names() else os.path.join(os.path.dirname(path), base)
    try:
        with open(base_path, "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"{path}: family.base {base!r}: {getattr(e, 'strerror', None) or e}") from None
    ranges = {k: _range(fam, k, path, whole=(k == "task_count")) for k in RANGES}
    rng = random.Random(seed)
    members = []
    for i in range(count):
        f = {k: (rng.randint(int(lo), int(hi)) if k == "task_count" else rng.uniform(lo, hi))
             for k, (lo, hi) in ranges.items()}
        data = _scaled(raw, f)
        data["name"] = f"{raw.get('name', os.path.basename(base_path)[:-5])}~{i}"
        try:
            members.append(parse_scenario(data, source=f"{path}#{i}"))
        except ScenarioError as e:
            raise UsageError(f"{path}: member {i}: {e}") from None
    return members


def _scaled(raw: dict, f: dict) -> dict:
    """A copy of the base's TOML data with the factors ``f`` applied."""
    import copy
    data = copy.deepcopy(raw)
    data.pop("expected", None)

    def walk(node, step_op=None):
        if isinstance(node, dict):
            op = node.get("op", step_op)
            for k, v in node.items():
                if k in ("memory_mb", "limit_mb"):
                    node[k] = math.ceil(v * f["mb"])
                elif k in ("mb", "pgtables_mb", "dirty_mb", "swap_mb"):
                    node[k] = round(v * f["mb"], 6)
                elif k == "ms" and op in ("sleep", "busy"):
                    node[k] = round(v * f["sleep_ms" if op == "sleep" else "busy_ms"], 6)
                elif k == "count" and isinstance(v, int) and v > 1:
                    node[k] = v * f["task_count"]
                else:
                    walk(v, op)
        elif isinstance(node, list):
            for x in node:
                walk(x, step_op)

    walk(data)
    # A member's hold and D-state times stretched by up to a factor keep their run
    # deadline in the same proportion (never shortened): a member must not come out
    # "hung" only because its longer holds met the base's deadline.
    stretch = max(1.0, f["sleep_ms"], f["busy_ms"])
    data["run_deadline_s"] = min(MAX_DEADLINE_S, round(float(raw.get("run_deadline_s", 60)) * stretch, 3))
    return data
