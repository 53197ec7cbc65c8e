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


def mean_paired(table: TaskTable, method: str, key: str = "val_acc") -> float:
    """Mean over shared seeds of ``method``'s ``key`` minus the baseline's (nan if none shared)."""
    base = {r.seed: r.final.get(key) for r in table.runs.get(table.baseline, []) if r.status == "done"}
    diffs = [r.final.get(key) - base[r.seed] for r in table.runs.get(method, [])
             if r.status == "done" and base.get(r.seed) is not None and r.final.get(key) is not None]
    return sum(diffs) / len(diffs) if diffs else math.nan


def _variant(label: str, tables: list[TaskTable]) -> str:
    cfg = next(r.spec.resolved.get("dipnet", {}) for t in tables for r in t.runs.get(label, []))
    if not cfg:
        return label
    minimum = math.sqrt(cfg["beta"] / cfg["alpha"]) if cfg["alpha"] else math.inf
    return f"{cfg['scale']}, prior minimum {minimum:.3g}"


@claim("dipnet-defaults")
def dipnet_defaults(evidence: Any) -> list[str]:
    """The choice of DIPNet's defaults: each candidate's mean paired validation gain over ERM on
    every task, their mean across tasks, and the winner (suites/dipnet-defaults.toml)."""
    tables = evidence.tables("dipnet-defaults")
    candidates = [r.method for r in tables[0].rows if r.method != tables[0].baseline]
    gains = {c: [mean_paired(t, c) for t in tables] for c in candidates}
    overall = {c: sum(g) / len(g) for c, g in gains.items()}
    best = max(overall, key=lambda c: overall[c])
    lines = ["| candidate | " + " | ".join(t.task for t in tables) + " | mean |",
             "|---|" + "---|" * (len(tables) + 1)]
    for c in candidates:
        mark = " (chosen)" if c == best else ""
        lines.append(f"| {c}: {_variant(c, tables)}{mark} | " + " | ".join(f"{100 * g:+.2f}" for g in gains[c])
                     + f" | {100 * overall[c]:+.2f} |")
    seeds = min(len(t.runs.get(best, [])) for t in tables)
    lines += ["", f"Mean paired validation gain over ERM in points ({seeds} seeds per task). Chosen on validation "
                  f"across the {len(tables)} tasks together: **{best}** ({_variant(best, tables)}), mean "
                  f"{100 * overall[best]:+.2f} points. Test accuracy played no part in the choice."]
    return lines
