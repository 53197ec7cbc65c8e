"""Summary tables of a suite from a run store: per task, each method's mean ± 95% CI over seeds
and its paired comparison with the baseline; the learned DIPNet sigma per layer.

A swept method (several configurations under one label) is represented by the configuration
with the best mean validation accuracy over its seeds, chosen per task; its row reports that
configuration's test figures, and :attr:`TaskTable.sweeps` lists every configuration's validation
and test accuracy, so the choice can be checked. Test accuracy never chooses anything."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

from .stats import (PairedComparison, Summary, adjust, compute_account, format_p, paired_compare,
                    resolvable_difference, summarize)
from .store import RunRecord, RunStore

METRICS = (  # key in final, column title, scale, digits
    ("test_acc", "test acc (%)", 100.0, 2),
    ("val_acc", "val acc (%)", 100.0, 2),
    ("test_loss", "test loss", 1.0, 3),
    ("gap", "gap (pp)", 100.0, 2),
    ("train_acc", "train acc (%)", 100.0, 2),
)


@dataclass
class MethodRow:
    method: str
    seeds: list[int]
    metrics: dict[str, Summary]
    vs_baseline: PairedComparison | None
    grads_ratio: float
    example_grads: Summary
    wall_s: Summary
    failed: int = 0
    label: str = ""  # the configuration's own label (the swept value chosen on validation)
    group: str = ""  # the suite's name for the method ([methods.NAME])


@dataclass
class TaskTable:
    suite: str
    task: str
    baseline: str
    rows: list[MethodRow]
    runs: dict[str, list[RunRecord]] = field(default_factory=dict)
    setting: str = ""  # dataset, model and training recipe, in words
    sweeps: dict[str, list[tuple[str, Summary, Summary, bool]]] = field(default_factory=dict)
    family: int = 0  # the comparisons "p (t, Holm)" is adjusted over: every one of the suite with its baseline
    excluded: dict[str, str] = field(default_factory=dict)  # swept configuration -> why it could not be chosen

    @property
    def title(self) -> str:
        return f"{self.suite} / {self.task}" + (f" ({self.setting})" if self.setting else "")

    def holm_note(self) -> str:
        """One line stating the Holm family of the table's "p (t, Holm)" column."""
        if not self.family:
            return ""
        return (f"p (t, Holm): Holm over the {self.family} paired comparisons of test accuracy with {self.baseline} in "
                f"suite {self.suite} (every method of every task), the family the verdict uses.")

    def resolution(self) -> str:
        """One line: the seeds, and the smallest difference they resolve (median spread of the
        paired differences in this table)."""
        comps = [r.vs_baseline for r in self.rows if r.vs_baseline is not None and r.vs_baseline.n >= 2]
        if not comps:
            return ""
        n = min(c.n for c in comps)
        sds = sorted(c.diff.std for c in comps if math.isfinite(c.diff.std))
        if not sds:
            return ""
        half = resolvable_difference(sds[len(sds) // 2], n)
        return (f"{n} seeds per method: with the median spread of the paired differences here (sd {100 * sds[len(sds) // 2]:.2f} pp, "
                f"ddof = 1) a 95% interval is ±{100 * half:.2f} pp, so smaller differences cannot be told from noise; "
                f"the smallest two-sided sign-flip p-value {n} seeds allow is {2 / 2**n:.3g}.")


def describe_setting(runs: list[RunRecord]) -> str:
    """"mnist1d, mnist1d-mlp; adamw lr 0.01 cosine, batch 100, 40 epochs" from a task's run configs (a
    fine-tuning run's: "chain_sum, smollm2-135m; adamw lr 0.001 constant, batch 8, 40 steps, LoRA r 8")."""
    cfgs = [r.spec.config for r in runs if r.spec.config]
    if not cfgs:
        return ""
    c = cfgs[0]
    ep = ""
    for unit in ("epochs", "steps"):  # training suites count epochs, fine-tuning suites optimizer steps
        counts = sorted({x[unit] for x in cfgs if x.get(unit) is not None})
        if counts:
            ep = f", {counts[0]} {unit}" if len(counts) == 1 else f", {counts[0]}-{counts[-1]} {unit}"
            break
    wd = f", weight decay {c['weight_decay']:g}" if c.get("weight_decay") else ""
    lora = f", LoRA r {c['lora_r']}" if c.get("lora_r") else ""  # fine-tuning: a task, AdamW, LoRA adapters
    optimizer = c.get("optimizer") or ("adamw" if lora else None)
    lr = f"lr {c['lr']:g}" if isinstance(c.get("lr"), (int, float)) else None
    recipe = " ".join(x for x in (optimizer, lr, c.get("schedule")) if x)
    return (f"{c.get('data') or c.get('task')}, {c.get('model')}; {recipe}, batch {c.get('batch_size')}{ep}{wd}{lora}")


def _ordered(found: list[str], preferred: list[str]) -> list[str]:
    return [x for x in preferred if x in found] + [x for x in found if x not in preferred]


def failed_runs(candidates: dict[str, list[RunRecord]]) -> dict[str, str]:
    """The configurations a choice on validation must pass over: those with failed runs (a
    configuration that diverged on some seeds is not "at its best" on the others)."""
    out = {}
    for label, runs in candidates.items():
        failed = sum(r.status == "failed" for r in runs)
        if failed:
            out[label] = f"excluded: {failed} of {len(runs)} runs failed"
    return out


def select_on_validation(candidates: dict[str, list[RunRecord]]) -> tuple[str | None, list[tuple[str, Summary, Summary, bool]]]:
    """The configuration with the best mean validation accuracy over its finished seeds (the first
    on ties), passing over those with failed runs (:func:`failed_runs`), and every
    configuration's (label, validation, test, chosen); None when a configuration without failed
    runs has no validation accuracy to compare, or when every one has failed runs."""
    stats = []
    for label, runs in candidates.items():
        done = [r for r in runs if r.status == "done"]
        stats.append((label, summarize(r.final.get("val_acc") for r in done), summarize(r.final.get("test_acc") for r in done)))
    failed = failed_runs(candidates)
    usable = [(label, val) for label, val, _ in stats if val.n and label not in failed]
    if len(usable) < len(stats) - len(failed) or not usable:
        return None, [(label, val, test, False) for label, val, test in stats]
    best = max(usable, key=lambda item: item[1].mean)[0] if usable else None
    return best, [(label, val, test, label == best) for label, val, test in stats]


def task_tables(store: RunStore, suite: str | None = None) -> list[TaskTable]:
    """Per (suite, task): the summary rows of every method (a swept one: its configuration chosen
    on validation), the baseline first; the paired comparisons' p-values are Holm-adjusted over
    every comparison of the suite."""
    tables = []
    for name in [suite] if suite else store.suites():
        meta = store.get_meta(f"suite:{name}", {}) or {}
        records = store.runs(suite=name)
        by_task: dict[str, dict[str, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
        for r in records:
            by_task[r.task][r.method].append(r)
        suite_tables = []
        for task in _ordered(list(by_task), meta.get("tasks", [])):
            labels = _ordered(list(by_task[task]), meta.get("methods", []))
            groups: dict[str, list[str]] = {g: [m for m in members if m in by_task[task]]
                                            for g, members in (meta.get("groups") or {m: [m] for m in labels}).items()}
            baseline = meta.get("baseline") or labels[0]
            order = {m: i for i, m in enumerate(labels)}
            groups = dict(sorted(((g, members) for g, members in groups.items() if members),
                                 key=lambda item: (item[0] != baseline, min(order[m] for m in item[1]))))
            chosen, sweeps, excluded = {}, {}, {}
            for g, members in groups.items():
                if len(members) == 1:
                    chosen[g] = members[0]
                    continue
                best, sweeps[g] = select_on_validation({m: by_task[task][m] for m in members})
                excluded.update(failed_runs({m: by_task[task][m] for m in members}))
                if best is not None:
                    chosen[g] = best
            done = {g: [r for r in by_task[task][m] if r.status == "done"] for g, m in chosen.items()}
            base_runs = done.get(baseline, [])
            base_acc = {r.seed: r.final.get("test_acc") for r in base_runs}
            rows = []
            for g, label in chosen.items():
                runs = done[g]
                metrics = {k: summarize(r.final.get(k) for r in runs) for k, *_ in METRICS}
                acct = compute_account([r.final for r in runs], [r.final for r in base_runs])
                vs = None
                if g != baseline and runs and base_runs:
                    vs = paired_compare({r.seed: r.final.get("test_acc") for r in runs}, base_acc)
                shown = g if label == g else f"{g} [{label[len(g) + 1:-1]}]" if label.startswith(g + "(") else label
                rows.append(MethodRow(shown, sorted(r.seed for r in runs), metrics, vs, acct.ratio, acct.example_grads,
                                      acct.wall_s, sum(r.status == "failed" for r in by_task[task][label]), label, g))
            every = [r for m in labels for r in by_task[task][m]]
            suite_tables.append(TaskTable(name, task, baseline, rows, {row.method: by_task[task][row.label] for row in rows},
                                          describe_setting(every), sweeps, excluded=excluded))
        all_rows = [row for t in suite_tables for row in t.rows]
        for row, vs in zip(all_rows, adjust([row.vs_baseline for row in all_rows])):
            row.vs_baseline = vs
        family = sum(1 for row in all_rows if row.vs_baseline is not None and math.isfinite(row.vs_baseline.t_p))
        for t in suite_tables:
            t.family = family
        tables += suite_tables
    return tables


def sweep_cells(table: TaskTable) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows of the sweep table: every configuration's validation and test accuracy."""
    if not table.sweeps:
        return None
    rows = []
    for group, entries in table.sweeps.items():
        for label, val, test, chosen in entries:
            rows.append([group, label, val.format(100.0, 2), test.format(100.0, 2),
                         "chosen" if chosen else table.excluded.get(label, "")])
    return ["method", "configuration", "val acc (%)", "test acc (%)", "chosen on validation"], rows


def _diff_cells(row: MethodRow) -> list[str]:
    vs = row.vs_baseline
    if vs is None:
        return ["baseline" if not row.failed or row.seeds else "", "", "", "", "", ""]
    d = vs.diff
    diff = f"{100 * d.mean:+.2f}" + (f" [{100 * d.low:+.2f}, {100 * d.high:+.2f}]" if math.isfinite(d.half_width) else "")
    dz = f"{vs.effect_size:+.2f}" if math.isfinite(vs.effect_size) else "n/a"
    return [diff, format_p(vs.t_p), format_p(vs.p), format_p(vs.sign_flip_p), dz, vs.verdict]


def table_cells(table: TaskTable) -> tuple[list[str], list[list[str]]]:
    """Header and body of a task's table as strings (shared by text, Markdown and HTML)."""
    header = ["method", "seeds"] + [title for _, title, _, _ in METRICS[:1]] + [
        "Δ acc vs " + table.baseline + " (pp, 95% CI)", "p (paired t)", "p (t, Holm)", "p (sign-flip)", "d_z",
        "verdict"
    ] + [title for _, title, _, _ in METRICS[1:]] + ["example grads (× baseline)", "wall s"]
    body = []
    for row in table.rows:
        seeds = str(len(row.seeds)) + (f" ({row.failed} failed)" if row.failed else "")
        cells = [row.method, seeds, row.metrics["test_acc"].format(100.0, 2)] + _diff_cells(row)
        cells += [row.metrics[k].format(scale, digits) for k, _, scale, digits in METRICS[1:]]
        cells.append(f"{row.example_grads.mean:,.0f} ({row.grads_ratio:.2f}×)" if row.example_grads.n else "n/a")
        cells.append(row.wall_s.format(1.0, 1))
        body.append(cells)
    return header, body


def format_markdown(table: TaskTable) -> list[str]:
    """The task's table as Markdown lines."""
    header, body = table_cells(table)
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]


def format_text_table(table: TaskTable) -> str:
    """A plain-text table for the terminal."""
    header, body = table_cells(table)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [f"{table.title}  (mean ± 95% CI over seeds)"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    lines += [note for note in (table.resolution(), table.holm_note()) if note]
    return "\n".join(lines)


# ---------------------------------------------------------------- figures


def _sigma_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Per-layer sigma values from a method's epoch metrics.

    A dict or list under a 'sigma' key is per layer; scalar 'sigma...' keys (summaries such as
    sigma_mean) are used only when no per-layer values exist.
    """
    structured = {k: v for k, v in metrics.items() if isinstance(v, (Mapping, list, tuple))}
    if any("sigma" in k.lower() for k in structured):
        metrics = structured
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if "sigma" not in key.lower():
            continue
        if isinstance(value, (list, tuple)):
            for j, v in enumerate(value):
                if isinstance(v, (int, float)):
                    out[f"{key}[{j}]" if len(metrics) > 1 else f"layer {j}"] = float(v)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                if isinstance(v, (int, float)):
                    out[str(k)] = float(v)
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def sigma_series(table: TaskTable) -> dict[str, tuple[list[str], list[Summary]]]:
    """``{method: (layers, per-layer Summary over seeds)}`` of the learned sigma at the end of training."""
    series = {}
    for row in table.rows:
        per_seed = [_sigma_values((r.history[-1].get("method") or {}) if r.history else {})
                    for r in table.runs.get(row.method, []) if r.status == "done"]
        per_seed = [p for p in per_seed if p]
        if per_seed:
            layers = list(per_seed[0])
            series[row.method] = (layers, [summarize(p.get(layer) for p in per_seed) for layer in layers])
    return series


def sigma_cells(table: TaskTable) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows of the learned-sigma table (mean ± 95% CI over seeds per layer), or None."""
    series = sigma_series(table)
    if not series:
        return None
    layers = list(dict.fromkeys(layer for names, _ in series.values() for layer in names))
    rows = []
    for method, (names, stats) in series.items():
        by_layer = dict(zip(names, stats))
        rows.append([method] + [by_layer[layer].format(digits=3) if layer in by_layer else "" for layer in layers])
    return ["method"] + layers, rows
