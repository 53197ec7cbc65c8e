"""Fragment bodies from the runs' instrument measures (:mod:`evidence`'s ``measures`` and
``pairs`` kinds): per method and measure, mean ± 95% CI over seeds and the paired difference with
the baseline, Holm-adjusted over the fragment's own cells (each fragment states that family)."""
from __future__ import annotations

import math
from typing import Any

from dipnet.experiments.stats import adjust, format_p, paired_compare, summarize
from dipnet.experiments.tables import TaskTable


def lookup(results: dict[str, Any] | None, dotted: str) -> float | None:
    """The number at a dotted path of a run's measures (``final.x``: of its final metrics); a key
    that itself holds dots (an eps such as ``0.05``) is matched by the longest prefix."""
    value: Any = (results or {}).get("measures") or {}
    if dotted.startswith("final."):
        value, dotted = (results or {}).get("final") or {}, dotted[len("final."):]
    parts = dotted.split(".")
    while parts:
        if not isinstance(value, dict):
            return None
        for n in range(len(parts), 0, -1):
            key = ".".join(parts[:n])
            if key in value:
                value, parts = value[key], parts[n:]
                break
        else:
            return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def measures_cells(table: TaskTable, keys: list[str], scale: float = 1.0, digits: int = 3,
                   labels: list[str] | None = None) -> tuple[list[str], list[list[str]], str]:
    """Per method (its chosen configuration) and measure ``key`` (a dotted path into the run's
    measures, or ``final.x``): mean ± 95% CI over seeds, and for the others the paired difference
    with the baseline, its 95% CI and Holm-adjusted p (over the cells of this fragment); and the
    line stating that family."""
    by_method = {row.method: {r.seed: r for r in table.runs.get(row.method, []) if r.status == "done"}
                 for row in table.rows}
    base = next((row.method for row in table.rows if row.vs_baseline is None), table.rows[0].method)
    comps, slots = [], []
    for row in table.rows:
        for key in keys:
            if row.method == base:
                continue
            a = {s: lookup(r.results, key) for s, r in by_method[row.method].items()}
            b = {s: lookup(r.results, key) for s, r in by_method[base].items()}
            comps.append(paired_compare({s: v for s, v in a.items() if v is not None},
                                        {s: v for s, v in b.items() if v is not None}))
            slots.append((row.method, key))
    adjusted = dict(zip(slots, adjust(comps)))
    family = sum(1 for c in comps if math.isfinite(c.t_p))
    note = (f"p_Holm: Holm over this table's {family} paired comparisons with {base} ({len(table.rows) - 1} methods × "
            f"{len(keys)} measures, task {table.task}), not over the suite's other measures or tables.")
    body = []
    for row in table.rows:
        cells = [row.method]
        for key in keys:
            s = summarize(lookup(r.results, key) for r in by_method[row.method].values())
            cell = s.format(scale, digits)
            comp = adjusted.get((row.method, key))
            if comp is not None and comp.n >= 2 and math.isfinite(comp.diff.half_width):
                d = comp.diff
                cell += (f" (Δ {d.mean * scale:+.{digits}f} [{d.low * scale:+.{digits}f}, {d.high * scale:+.{digits}f}],"
                         f" p_Holm {format_p(comp.p)})")
            cells.append(cell)
        body.append(cells)
    return ["method"] + (labels if labels and len(labels) == len(keys) else keys), body, note


def pair_lines(table: TaskTable, pairs: list[list[str]], key: str, scale: float) -> list[str]:
    """``a vs b``: the paired difference of ``key`` (95% interval, t and sign-flip p), one line a pair."""
    out = []
    for a, b in pairs:
        va = {r.seed: lookup(r.results, key) for r in table.runs.get(a, []) if r.status == "done"}
        vb = {r.seed: lookup(r.results, key) for r in table.runs.get(b, []) if r.status == "done"}
        comp = paired_compare({s: v for s, v in va.items() if v is not None}, {s: v for s, v in vb.items() if v is not None})
        d = comp.diff
        out.append(f"- {table.task}: {a} vs {b}: {d.mean * scale:+.2f} [{d.low * scale:+.2f}, {d.high * scale:+.2f}] "
                   f"({comp.n} seeds, paired t p = {format_p(comp.t_p)}, sign-flip p = {format_p(comp.sign_flip_p)})")
    return out
