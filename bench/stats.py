"""Summaries of samples, and how a figure stands against its floor and its target."""

from __future__ import annotations

import math
import statistics


class Dist:
    """Samples, sorted: median, p99 (nearest rank: the max below 100 samples), max."""

    def __init__(self, samples):
        self.xs = sorted(samples)
        self.n = len(self.xs)

    def _pick(self, q: float) -> float:
        return self.xs[max(0, math.ceil(q * self.n) - 1)] if self.xs else math.nan

    @property
    def median(self) -> float:
        return statistics.median(self.xs) if self.xs else math.nan

    @property
    def p99(self) -> float:
        return self._pick(0.99)

    @property
    def max(self) -> float:
        return self.xs[-1] if self.xs else math.nan


def ratio(figure: float, floor: float) -> str:
    """``figure / floor`` as ``123x`` (6 characters)."""
    if not floor or math.isnan(figure) or math.isnan(floor):
        return "    - "
    return f"{figure / floor:5.0f}x" if figure / floor >= 10 else f"{figure / floor:5.1f}x"


def verdict(met: bool) -> str:
    return "met" if met else "NOT MET"
