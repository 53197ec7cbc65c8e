"""Prose generated from the evidence: the sentences README.md and docs/ quote about what was
measured, written by code from the committed runs (``<!-- dipnet:begin claims name=... -->``
fragments, :mod:`.evidence`), so that a claim changes when its numbers do, and says plainly
when a method does not help.

A claim function takes an object with ``table(suite, task) -> TaskTable`` and returns lines.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from dipnet.errors import DataError
from dipnet.experiments.hypotheses import suite_results
from dipnet.experiments.tables import MethodRow, TaskTable
from dipnet.projection.hf import LLM_PRIOR, LLM_SIGMA

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
    if len(candidates) > 1:
        from dipnet.experiments.stats import paired_compare

        def across_tasks(label: str) -> dict[int, float]:
            per_task = [{r.seed: r.final["val_acc"] for r in t.runs.get(label, []) if r.status == "done"} for t in tables]
            shared = set.intersection(*(set(v) for v in per_task))
            return {s: sum(v[s] for v in per_task) / len(per_task) for s in shared}

        second = max((c for c in candidates if c != best), key=lambda c: overall[c])
        d = paired_compare(across_tasks(best), across_tasks(second)).diff
        lines.append(f"Against the runner-up, {second} ({_variant(second, tables)}): "
                     f"{100 * d.mean:+.2f} points [{100 * d.low:+.2f}, {100 * d.high:+.2f}] of validation accuracy "
                     f"averaged over the tasks, paired by seed (95% t interval)"
                     + ("; the seeds do not separate the two." if d.low <= 0 <= d.high else "."))
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


def _grid_value(label: str) -> str:
    """"sam(rho=0.05)" -> "0.05"; a label without a value is itself."""
    return label[label.index("=") + 1:-1] if "=" in label and label.endswith(")") else label


@claim("comparison-grids")
def comparison_grids(evidence: Any) -> list[str]:
    """Every swept method's grid in suites/comparison.toml and the value chosen on validation per
    task, marking a choice on the grid's edge (the suite's bracketing rule extends such a grid; a
    value of 0 has nothing below it and counts as interior)."""
    tables = evidence.tables("comparison")
    groups = list(dict.fromkeys(g for t in tables for g in t.sweeps))
    lines = ["| method | grid | " + " | ".join(t.task for t in tables) + " |",
             "|---|---|" + "---|" * len(tables)]
    edges = []
    for g in groups:
        grid = [_grid_value(label) for label, *_ in tables[0].sweeps.get(g, [])]
        key = tables[0].sweeps[g][0][0].split("(")[-1].split("=")[0] if "=" in tables[0].sweeps[g][0][0] else ""
        cells = []
        for t in tables:
            entries = t.sweeps.get(g, [])
            i = next((k for k, e in enumerate(entries) if e[3]), None)
            if i is None:
                cells.append("none")
                continue
            value = _grid_value(entries[i][0])
            edge = (i == len(entries) - 1) or (i == 0 and float(value) != 0.0)
            if edge:
                edges.append(f"{g} on {t.task}")
            cells.append(f"**{value}** (edge)" if edge else value)
        lines.append(f"| {g} | {key} " + ", ".join(grid) + " | " + " | ".join(cells) + " |")
    lines += ["", "Chosen on validation per task (mean over the seeds). "
              + (f"On an edge of its grid, not bracketed: {', '.join(edges)} (the suite's header lists the "
                 "extensions made and where they stopped)." if edges else
                 "Every choice is interior to its grid (or 0, the lower end).")]
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


STUDIES = {  # the pre-registered studies of issue 24, in the order README states them (docs/studies.md)
    "perturbation-study": "(a) the DIPNet paper's Table 1 regime (training under Gaussian or FGSM perturbation; "
                          "MNIST-1D MLP/CNN, MNIST MLP)",
    "llm-study": "(b) its Table 2 regime (SmolLM2-135M under LoRA, one epoch of chain_sum)",
    "sigma-study": "(c) learned against fixed sigma (DIPNet's sigma learning rate chosen on validation)",
}
FOLLOW_UPS = {  # a study's follow-ups with their own hypotheses, stated after it (not in the headline's tally)
    "sigma-study": {"sigma-fixed": "its follow-up, learned against larger (the fixed sigma chosen on validation "
                                   "from 0.1-0.8, MNIST-1D MLP)"},
}


def study_verdicts(evidence: Any, suite: str) -> str:
    """One sentence per declared hypothesis of a study: its resolution and interval on every task."""
    if not evidence.exported(suite):
        return "not yet exported (its runs are in progress; the study file and its hypotheses are committed)"
    results = suite_results(evidence.tables(suite), evidence.meta(suite))
    parts = []
    for h in dict.fromkeys(r.hypothesis for r in results):
        mine = [r for r in results if r.hypothesis == h]
        groups: dict[str, list[str]] = {}
        for r in mine:
            d = r.test.diff
            cell = f"{r.task} {d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]" if r.test.n >= 2 else f"{r.task} (no runs)"
            groups.setdefault(r.test.resolution, []).append(cell)
        said = "; ".join(f"{res} on {len(cells)} of {len(mine)} ({', '.join(cells)})" for res, cells in groups.items())
        parts.append(f"{h.statement}: {said}")
    seeds = min((r.test.n for r in results), default=0)
    return (f"{seeds} seeds per task, Holm over its {len(results)} test{'s' * (len(results) != 1)}, differences in "
            f"test accuracy points "
            f"(95% CI): " + ". ".join(parts))


@claim("headline")
def headline(evidence: Any) -> list[str]:
    """README's first paragraph: the tally of the pre-registered studies' primary tests so far."""
    done = [suite for suite in STUDIES if evidence.exported(suite)]
    tally: dict[str, int] = {}
    for suite in done:
        for r in suite_results(evidence.tables(suite), evidence.meta(suite)):
            tally[r.test.resolution] = tally.get(r.test.resolution, 0) + 1
    total = sum(tally.values())
    if not total:
        return ["Its pre-registered studies of DIPNet (docs/studies.md) are still running."]
    counts = ", ".join(f"{tally.get(k, 0)} {k}" for k in ("supported", "contradicted", "equivalent", "inconclusive"))
    verdict = "" if tally.get("supported") else "; in those studies DIPNet did not generalize better"
    so_far = "" if len(done) == len(STUDIES) else f" so far ({len(done)} of {len(STUDIES)} exported)"
    return [f"What its {len(STUDIES)} pre-registered studies of DIPNet found{so_far} (docs/studies.md): of {total} "
            f"primary tests (DIPNet better than ERM or than the same noise with sigma "
            f"fixed), {counts} after Holm{verdict}."]


@claim("studies")
def studies(evidence: Any) -> list[str]:
    """README's verdict of every pre-registered study, whatever it is (docs/studies.md)."""
    return [f"- {what}: {study_verdicts(evidence, suite)}."
            + "".join(f" In {more}: {study_verdicts(evidence, f)}." for f, more in FOLLOW_UPS.get(suite, {}).items())
            for suite, what in STUDIES.items()]


@claim("readme")
def readme(evidence: Any) -> list[str]:
    """The README's "What we measured" paragraph, from the comparison and measures suites."""
    tables = evidence.tables("comparison")
    dip = {t.task: row(t, "dipnet") for t in tables}
    helped = [t.task for t in tables
              if (r := dip[t.task]) is not None and r.vs_baseline is not None and r.vs_baseline.verdict == "better"]
    winners = sorted({m for t in tables for m in _verdicts(t)["better"]})
    n_comp = sum(1 for t in tables for r in t.rows if r.vs_baseline is not None)
    sizes = sorted({len(entries) for t in tables for entries in t.sweeps.values()}) or [1]
    grid = (f"the same {sizes[0]}-value grid" if len(sizes) == 1 else
            f"a grid of {sizes[0]} values, extended to {sizes[-1]} where the choice sat on an edge")
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
        f"validation from {grid}; {seeds} seeds; {n_comp} paired comparisons, Holm-adjusted): "
        f"{verdict} ({per_task}). Methods that do beat ERM after the correction: {_list(winners)} "
        f"(docs/methods.md). DIPNet's nets have a smaller input Jacobian than ERM's on "
        f"{_list(smoother)}, and a larger top Hessian eigenvalue (sharper in weight space) on "
        f"{_list(sharper)} (docs/measure.md, docs/robust.md). Generated from the committed runs "
        f"(docs/results/); `make docs-check` regenerates every figure quoted here."
    ]


CALIBRATION = Path("docs") / "results" / "llm-prior" / "calibration.json"
PRIOR_RULE_COST = 0.05  # the prior's minimum: the largest sigma whose answer loss rises by at most this


def prior_rule(record: dict[str, Any]) -> tuple[float, float, float, float]:
    """``(sigma, median, alpha, beta)`` of docs/llm_prior.py's rule: the prior's minimum
    ``sqrt(beta / alpha)`` at the largest measured sigma whose answer loss rises by at most
    :data:`PRIOR_RULE_COST`, and its pull on a sigma far below it (``2 beta`` per log sigma, from
    ``alpha sigma^2 - beta log sigma^2``) equal to the median per-feature data gradient there."""
    clean = float(record["clean_loss"])
    fits = [r for r in record["rows"] if float(r["loss"]) <= (1 + PRIOR_RULE_COST) * clean]
    if not fits:
        raise DataError(f"{CALIBRATION}: no measured sigma keeps the answer loss within {PRIOR_RULE_COST:.0%}")
    best = max(fits, key=lambda r: float(r["sigma"]))
    sigma, median = float(best["sigma"]), float(best["grad_median_abs"])
    beta = median / 2
    return sigma, median, beta / sigma**2, beta


@claim("llm-prior")
def llm_prior(evidence: Any) -> list[str]:
    """docs/llm.md's calibration of the LLM prior, from docs/llm_prior.py's stored measurement."""
    path = Path(evidence.root) / CALIBRATION
    if not path.exists():
        raise DataError(f"{path} is missing; run PYTHONPATH=src python docs/llm_prior.py")
    record = json.loads(path.read_text(encoding="utf-8"))
    clean = float(record["clean_loss"])
    rows = [[f"{r['sigma']:g}", f"{r['loss']:.4g}", f"{100 * (r['loss'] - clean) / clean:+.1f}%",
             f"{1e4 * r['grad_mean']:+.3f}e-4", f"{1e4 * r['grad_median_abs']:.3g}e-4"] for r in record["rows"]]
    sigma, median, alpha, beta = prior_rule(record)
    alpha0, beta0 = LLM_PRIOR
    minimum0 = math.sqrt(beta0 / alpha0)
    kept = math.isclose(minimum0, sigma, rel_tol=0.01)
    env = record.get("env") or {}
    return [
        f"Measured by `docs/llm_prior.py` ({record['wall_s'] / 60:.1f} minutes on one CPU thread, "
        f"{env.get('time_utc', '?')[:10]}): {record['model']}, LoRA r={record['lora_r']} on q/k/v/o at its zero start, "
        f"{record['questions']} {record['task']} training questions, {record['draws']} noise draws each, "
        f"answer-token loss {clean:.4g} without noise.",
        "",
        "| relative sigma at all 60 sub-blocks | answer loss | change | mean dL/d log sigma per feature | median abs |",
        "|---|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        f"The rule: the prior's minimum `sqrt(beta / alpha)` sits at the largest sigma whose answer loss rises "
        f"by at most {PRIOR_RULE_COST:.0%} ({sigma:g}), and its pull on a sigma far below that minimum (`2 beta` per "
        f"log sigma) equals the median per-feature data gradient there ({1e4 * median:.3g}e-4): `beta` = {beta:.2g}, "
        f"`alpha = beta / {sigma:g}^2` = {alpha:.2g}. `LLM_PRIOR = ({alpha0:g}, {beta0:g})` (minimum "
        f"{minimum0:.2g}) came from a first calibration whose questions were test questions of "
        f"the `llm` suite; "
        + ("the rule on training questions gives the same minimum, so it was kept (the LLM suites ran with it)."
           if kept else "the rule on training questions gives another minimum: `LLM_PRIOR` is due a change, and the "
                        "LLM suites a rerun."),
    ]


@claim("llm-study-sigma")
def llm_study_sigma(evidence: Any) -> list[str]:
    """How far DIPNet's relative sigmas moved in the LLM study (every feature of every projection)."""
    (table,) = evidence.tables("llm-study")
    runs = [r for r in table.runs.get("dipnet", []) if r.status == "done" and r.history]
    if not runs:
        raise DataError("suite 'llm-study' has no finished dipnet run with a history")
    ends = [r.history[-1].get("method") or {} for r in runs]
    low, high = min(e["sigma_relative_min"] for e in ends), max(e["sigma_relative_max"] for e in ends)
    mean = sum(e["sigma_relative_mean"] for e in ends) / len(ends)
    steps = max(int(r.final.get("steps", 0)) for r in runs)
    return [f"How far sigma moved: after {steps} steps every relative sigma of DIPNet's "
            f"{len(ends[0].get('sigma') or {})} projections lies in [{low:.4f}, {high:.4f}] (mean {mean:.4f}; all "
            f"start at {LLM_SIGMA:g}; {len(runs)} seeds): the learned part is {max(LLM_SIGMA - low, high - LLM_SIGMA) / LLM_SIGMA:.0%} "
            f"of the starting sigma at most, so DIPNet here is, to within that, noise at a fixed relative "
            f"{LLM_SIGMA:g}, which is what the noise-layers arm holds."]
