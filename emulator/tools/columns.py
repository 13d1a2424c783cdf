"""Plain-text tables as ``oomemu`` prints them: left-aligned columns, two spaces apart."""

from __future__ import annotations


def columns(rows: list[tuple[str, ...]] | list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
