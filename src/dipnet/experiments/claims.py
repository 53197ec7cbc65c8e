"""Prose generated from the evidence: the sentences README.md and docs/ quote about what was
measured, written by code from the committed runs (``<!-- dipnet:begin claims name=... -->``
fragments, :mod:`.evidence`), so that a claim changes when its numbers do, and says plainly
when a method does not help.

A claim function takes an object with ``table(suite, task) -> TaskTable`` and returns lines.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from .tables import MethodRow, TaskTable

ClaimFn = Callable[[Any], list[str]]
CLAIMS: dict[str, ClaimFn] = {}


def claim(name: str) -> Callable[[ClaimFn], ClaimFn]:
    """Register a prose fragment under ``name``."""
    def deco(fn: ClaimFn) -> ClaimFn:
        CLAIMS[name] = fn
        return fn
    return deco


def difference(row: MethodRow) -> str:
    """"+3.10 points [+1.2, +5.0], Holm p = 0.012" / "within noise (-0.4 [-1.9, +1.1])"."""
    vs = row.vs_baseline
    if vs is None or not math.isfinite(vs.diff.half_width):
        return "not compared"
    d = vs.diff
    span = f"{100 * d.mean:+.2f} points [{100 * d.low:+.2f}, {100 * d.high:+.2f}]"
    if vs.verdict == "within noise":
        return f"within noise ({span}, Holm p = {vs.p:.2g})"
    return f"{span} ({vs.verdict}, Holm p = {vs.p:.2g})"


def row(table: TaskTable, group: str) -> MethodRow | None:
    """The row of a method (its chosen configuration, if swept)."""
    return next((r for r in table.rows if r.method == group or r.method.startswith(group + " [")), None)
