"""How the Bulk-Adam page writes numbers, learning rates, tables and switch reasons."""

from __future__ import annotations

import math

from benchmarks.harness import markdown_table


def _f(x: float, spec: str = ".2f") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def _lr(x: float) -> str:
    return f"{x:g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The table's lines and a blank line after it."""
    return [*markdown_table(header, rows).split("\n"), ""]


REASON = {"threshold": "rule", "forced": "forced", "fixed": "fixed"}
