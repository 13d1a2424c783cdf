"""How a run ended. The values are what a user reads: in output lines, in JSON, in scenario files."""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """A run's verdict. A StrEnum: it prints, compares and serialises as its value."""
    RESOLVED = "resolved"     # every task finished its steps, nobody is stuck allocating
    PANIC = "panic"           # a global OOM found nobody left to kill: "Kernel panic - not syncing"
    HUNG = "hung"             # the run deadline passed first (a livelock, or a memcg OOM with nobody to kill)
    # The run itself broke: a worker died unexplained, the machine ran short, or the
    # accounting disagreed. Never an outcome a scenario can state.
    ERROR = "error"


#: the verdicts a scenario file may state as its expected outcome
OUTCOMES = (Verdict.RESOLVED, Verdict.PANIC, Verdict.HUNG)
