"""Prose generated from the evidence: the sentences README.md and docs/ quote about what was
measured, written by code from the committed runs (``<!-- dipnet:begin claims name=... -->``
fragments, :mod:`.evidence`), so that a claim changes when its numbers do, and says plainly
when a method does not help.

A claim function takes an object with ``table(suite, task) -> TaskTable`` and returns lines.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from dipnet.experiments.tables import MethodRow, TaskTable

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
    diffs = [v - b for r in table.runs.get(method, [])
             if r.status == "done" and (b := base.get(r.seed)) is not None and (v := r.final.get(key)) is not None]
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


def _verdicts(table: TaskTable) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"better": [], "worse": [], "within noise": []}
    for r in table.rows:
        if r.vs_baseline is not None and r.vs_baseline.n >= 2:
            out.setdefault(r.vs_baseline.verdict, []).append(r.method.split(" [")[0])
    return out


def _list(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


@claim("comparison")
def comparison(evidence: Any) -> list[str]:
    """Per task of suites/comparison.toml: which methods beat or lose to ERM after Holm, and DIPNet's place."""
    lines = []
    for t in evidence.tables("comparison"):
        v = _verdicts(t)
        dip = row(t, "dipnet")
        seeds = dip.vs_baseline.n if dip is not None and dip.vs_baseline is not None else 0
        lines.append(f"- **{t.task}** ({seeds} seeds): better than ERM after Holm: {_list(v['better'])}; worse: "
                     f"{_list(v['worse'])}. DIPNet ({dip.method if dip else 'absent'}): "
                     f"{difference(dip) if dip else 'not run'}.")
    return lines


MEASURE_KEYS = {  # instrument key in the measures suite -> (words, lower is smoother/more robust?)
    "jacobian.mean": ("mean Jacobian norm of the softmax at test points", True),
    "lipschitz.lower": ("Lipschitz lower bound (largest local Jacobian norm)", True),
    "curvature.mean": ("input curvature", True),
    "sharpness.top_eigenvalue": ("top Hessian eigenvalue of the training loss", True),
    "corruptions.mean_acc": ("mean accuracy under corruptions", False),
}


def _measure_sentence(table: TaskTable, method: str, key: str, words: str, lower_better: bool) -> str | None:
    from dipnet.experiments.stats import paired_compare

    def values(label: str) -> dict[int, float]:
        out = {}
        for r in table.runs.get(label, []):
            v: Any = (r.results or {}).get("measures") or {}
            for part in key.split("."):
                v = v.get(part) if isinstance(v, dict) else None
            if isinstance(v, (int, float)) and r.status == "done":
                out[r.seed] = float(v)
        return out

    comp = paired_compare(values(method), values(table.baseline))
    if comp.n < 2 or not math.isfinite(comp.diff.half_width):
        return None
    d = comp.diff
    if d.low > 0 or d.high < 0:
        good = (d.mean < 0) == lower_better
        word = "lower" if d.mean < 0 else "higher"
        return f"{words}: {word} ({'better' if good else 'worse'}), {d.mean:+.3g} [{d.low:+.3g}, {d.high:+.3g}]"
    return f"{words}: within noise ({d.mean:+.3g} [{d.low:+.3g}, {d.high:+.3g}])"


@claim("measures")
def measures(evidence: Any) -> list[str]:
    """DIPNet's nets against ERM's on every instrument of suites/measures.toml (paired 95% intervals)."""
    lines = []
    for t in evidence.tables("measures"):
        parts = [s for key, (words, low) in MEASURE_KEYS.items()
                 if (s := _measure_sentence(t, "dipnet", key, words, low)) is not None]
        n = len([r for r in t.runs.get("dipnet", []) if r.status == "done"])
        lines.append(f"- **{t.task}**, DIPNet vs ERM ({n} seeds, paired 95% intervals, not adjusted): " + "; ".join(parts) + ".")
    return lines


@claim("readme")
def readme(evidence: Any) -> list[str]:
    """The README's "What we measured" paragraph, from the comparison and measures suites."""
    tables = evidence.tables("comparison")
    dip = {t.task: row(t, "dipnet") for t in tables}
    helped = [t.task for t in tables
              if (r := dip[t.task]) is not None and r.vs_baseline is not None and r.vs_baseline.verdict == "better"]
    winners = sorted({m for t in tables for m in _verdicts(t)["better"]})
    n_comp = sum(1 for t in tables for r in t.rows if r.vs_baseline is not None)
    seeds = min(r.vs_baseline.n for t in tables for r in t.rows if r.vs_baseline is not None)
    per_task = "; ".join(f"{t.task} {difference(r)}" for t in tables if (r := dip[t.task]) is not None)
    verdict = (f"DIPNet beats ERM on {', '.join(helped)}" if helped else
               "DIPNet is not better than ERM on any of them once the comparisons are corrected")
    measured = evidence.tables("measures")
    sharper = [t.task for t in measured
               if (s := _measure_sentence(t, "dipnet", "sharpness.top_eigenvalue", "", True)) and "worse" in s]
    smoother = [t.task for t in measured
                if (s := _measure_sentence(t, "dipnet", "jacobian.mean", "", True)) and "better" in s]
    return [
        f"Every method at its best against ERM at its best (each method's main hyperparameter chosen on "
        f"validation from the same 3-value grid; {seeds} seeds; {n_comp} paired comparisons, Holm-adjusted): "
        f"{verdict} ({per_task}). Methods that do beat ERM after the correction: {_list(winners)} "
        f"(docs/methods.md). DIPNet's nets have a smaller input Jacobian than ERM's on "
        f"{_list(smoother)}, and a larger top Hessian eigenvalue (sharper in weight space) on "
        f"{_list(sharper)} (docs/measure.md, docs/robust.md). Generated from the committed runs "
        f"(docs/results/); `make docs-check` regenerates every figure quoted here."
    ]
