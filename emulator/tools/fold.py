"""One line for many tasks: what ``ps``, the text timeline and the picture say of the
tasks they fold instead of giving each a row.

A scenario's ``count`` makes tasks ``NAME-0``, ``NAME-1``, ...; a line naming
three hundred of them one by one is as unreadable as three hundred rows. So
tasks are named in runs: ``cached-0..276`` for consecutive copies of one
``[[task]]``, each run with its oom_score_adj (one value, or the range a
ladder spans): ``cached-0..276 (oom_score_adj 900..992)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_COPY = re.compile(r"(.+)-(\d+)")
MAX_RUNS = 8                 # runs named in one line; the rest are counted


@dataclass
class _Run:
    base: str                # the name, or the name of a [[task]] with count, without -N
    first: int | None        # its copy numbers (None: a task without count)
    last: int | None
    adj_lo: int
    adj_hi: int

    @property
    def size(self) -> int:
        return 1 if self.first is None else self.last - self.first + 1

    def text(self, with_key: bool) -> str:
        name = self.base if self.first is None else (
            f"{self.base}-{self.first}" if self.first == self.last else f"{self.base}-{self.first}..{self.last}")
        adj = str(self.adj_lo) if self.adj_lo == self.adj_hi else f"{self.adj_lo}..{self.adj_hi}"
        return f"{name} ({'oom_score_adj ' if with_key else ''}{adj})"


def _runs(tasks: list[tuple[str, int]]) -> list[_Run]:
    """Consecutive copies of one [[task]] (``NAME-k``, ``NAME-k+1``, ...) as one run each."""
    out: list[_Run] = []
    for name, adj in tasks:
        m = _COPY.fullmatch(name)
        base, k = (m.group(1), int(m.group(2))) if m else (name, None)
        last = out[-1] if out else None
        if last and k is not None and last.base == base and last.last is not None and k == last.last + 1:
            last.last = k
            last.adj_lo, last.adj_hi = min(last.adj_lo, adj), max(last.adj_hi, adj)
        else:
            out.append(_Run(base, k, k, adj, adj))
    return out


def name_tasks(tasks: list[tuple[str, int]], most: int = MAX_RUNS) -> str:
    """``tasks`` ((name, oom_score_adj), in the run's order) in one line: runs of copies
    named by their range, each with its oom_score_adj, in order; the ``most`` largest runs
    are named, the others counted (``and N more``). Every task is named or counted."""
    runs = _runs(tasks)
    keep = set(sorted(range(len(runs)), key=lambda n: -runs[n].size)[:most])     # the largest runs
    parts = [r.text(not parts_so_far) for parts_so_far, r in
             enumerate(r for n, r in enumerate(runs) if n in keep)]
    rest = sum(r.size for n, r in enumerate(runs) if n not in keep)
    if rest:
        parts.append(f"and {rest} more")
    return ", ".join(parts)


def plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"
