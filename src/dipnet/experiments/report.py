"""Reports from a run store: a Markdown file with PNG figures and one self-contained HTML file.

For each suite and task: a table of mean ± 95% CI over seeds (test accuracy, test loss,
generalization gap, example-gradients relative to the baseline, wall time), the paired
comparison of every method with the baseline (difference, CI, paired t and Wilcoxon p-values,
a "within noise" flag), and figures: accuracy per method with CIs, learning curves, accuracy per
training time, the learned DIPNet sigma per layer, and any instrument measures the runs carry
(curves such as accuracy vs corruption severity or attack eps; scalars such as the Jacobian
norm against the generalization gap). The environment and the exact suite text close it.
The HTML embeds its figures as base64 PNGs and links nothing outside itself.
"""
from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .stats import PairedComparison, Summary, compute_account, format_p, paired_compare, summarize
from .store import RunRecord, RunStore

METRICS = (  # key in final, column title, scale, digits
    ("test_acc", "test acc (%)", 100.0, 2),
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


@dataclass
class TaskTable:
    suite: str
    task: str
    baseline: str
    rows: list[MethodRow]
    runs: dict[str, list[RunRecord]] = field(default_factory=dict)


def _ordered(found: list[str], preferred: list[str]) -> list[str]:
    return [x for x in preferred if x in found] + [x for x in found if x not in preferred]


def task_tables(store: RunStore, suite: str | None = None) -> list[TaskTable]:
    """Per (suite, task): the summary rows of every method, the baseline first."""
    tables = []
    for name in [suite] if suite else store.suites():
        meta = store.get_meta(f"suite:{name}", {}) or {}
        records = store.runs(suite=name)
        by_task: dict[str, dict[str, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
        for r in records:
            by_task[r.task][r.method].append(r)
        for task in _ordered(list(by_task), meta.get("tasks", [])):
            methods = _ordered(list(by_task[task]), meta.get("methods", []))
            baseline = meta.get("baseline") or methods[0]
            done = {m: [r for r in by_task[task][m] if r.status == "done"] for m in methods}
            base_runs = done.get(baseline, [])
            base_acc = {r.seed: r.final.get("test_acc") for r in base_runs}
            rows = []
            for m in methods:
                runs = done[m]
                metrics = {k: summarize(r.final.get(k) for r in runs) for k, *_ in METRICS}
                acct = compute_account([r.final for r in runs], [r.final for r in base_runs])
                vs = None
                if m != baseline and runs and base_runs:
                    vs = paired_compare({r.seed: r.final.get("test_acc") for r in runs}, base_acc)
                rows.append(MethodRow(m, sorted(r.seed for r in runs), metrics, vs, acct.ratio, acct.example_grads,
                                      acct.wall_s, sum(r.status == "failed" for r in by_task[task][m])))
            tables.append(TaskTable(name, task, baseline, rows, {m: by_task[task][m] for m in methods}))
    return tables


def _diff_cells(row: MethodRow) -> list[str]:
    vs = row.vs_baseline
    if vs is None:
        return ["baseline" if not row.failed or row.seeds else "", "", "", ""]
    d = vs.diff
    diff = f"{100 * d.mean:+.2f}" + (f" [{100 * d.low:+.2f}, {100 * d.high:+.2f}]" if math.isfinite(d.half_width) else "")
    return [diff, format_p(vs.t_p), format_p(vs.wilcoxon_p), vs.verdict]


def table_cells(table: TaskTable) -> tuple[list[str], list[list[str]]]:
    """Header and body of a task's table as strings (shared by text, Markdown and HTML)."""
    header = ["method", "seeds"] + [title for _, title, _, _ in METRICS[:1]] + [
        "Δ acc vs " + table.baseline + " (pp, 95% CI)", "p (paired t)", "p (Wilcoxon)", "verdict"
    ] + [title for _, title, _, _ in METRICS[1:]] + ["example grads (× baseline)", "wall s"]
    body = []
    for row in table.rows:
        seeds = str(len(row.seeds)) + (f" ({row.failed} failed)" if row.failed else "")
        cells = [row.method, seeds, row.metrics["test_acc"].format(100.0, 2)] + _diff_cells(row)
        cells += [row.metrics[k].format(scale, digits) for k, _, scale, digits in METRICS[1:]]
        cells.append(f"{row.example_grads.mean:.3g} ({row.grads_ratio:.2f}×)" if row.example_grads.n else "n/a")
        cells.append(row.wall_s.format(1.0, 1 if row.wall_s.mean >= 10 else 2))
        body.append(cells)
    return header, body


def format_text_table(table: TaskTable) -> str:
    """A plain-text table for the terminal."""
    header, body = table_cells(table)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [f"{table.suite} / {table.task}  (mean ± 95% CI over seeds)"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


# ---------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def _mean_curve(runs: list[RunRecord], key: str, log: bool = False) -> tuple[list[float], ...]:
    """Per epoch: x, the mean over seeds, and the band's lower and upper edges (95% t interval).

    With ``log`` the mean and interval are taken over log10 values (a geometric mean), so a
    band on a log axis stays positive.
    """
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        for i, row in enumerate(r.history):
            v = row.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v) and (not log or v > 0):
                by_epoch[int(row.get("epoch", i)) + 1].append(math.log10(v) if log else float(v))
    xs = sorted(by_epoch)
    stats = [summarize(by_epoch[x]) for x in xs]
    half = [s.half_width if math.isfinite(s.half_width) else 0.0 for s in stats]
    mean, low, high = [s.mean for s in stats], [s.mean - h for s, h in zip(stats, half)], [s.mean + h for s, h in zip(stats, half)]
    if log:
        mean, low, high = ([10**v for v in seq] for seq in (mean, low, high))
    return [float(x) for x in xs], mean, low, high


def fig_accuracy(table: TaskTable) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(table.rows), 3.4))
    span: list[float] = []
    for i, row in enumerate(table.rows):
        s = row.metrics["test_acc"]
        if not s.n:
            continue
        err = s.half_width * 100 if math.isfinite(s.half_width) else 0.0
        ax.bar(i, s.mean * 100, yerr=err, capsize=4, color=f"C{i % 10}", alpha=0.8)
        acc = [100 * r.final["test_acc"] for r in table.runs.get(row.method, [])
               if r.status == "done" and isinstance(r.final.get("test_acc"), (int, float))]
        ax.plot([i + 0.15] * len(acc), acc, "k.", ms=5)
        span += acc + [s.mean * 100 - err, s.mean * 100 + err]
    ax.set_xticks(range(len(table.rows)), [r.method for r in table.rows], rotation=30, ha="right")
    if span:
        pad = max(1.0, 0.1 * (max(span) - min(span)))
        ax.set_ylim(max(0.0, min(span) - pad), min(100.0, max(span) + pad))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{table.task}: test accuracy, mean and 95% CI (dots: seeds)", fontsize=9)
    return _png(fig)


def fig_learning_curves(table: TaskTable) -> bytes | None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    any_curve = False
    for i, row in enumerate(table.rows):
        runs = [r for r in table.runs.get(row.method, []) if r.status == "done"]
        for ax, key in zip(axes, ("test_acc", "train_loss")):
            xs, ys, low, high = _mean_curve(runs, key, log=key.endswith("loss"))
            if not xs:
                continue
            any_curve = True
            scale = 100.0 if key.endswith("acc") else 1.0
            ax.plot(xs, [y * scale for y in ys], color=f"C{i % 10}", label=row.method)
            ax.fill_between(xs, [v * scale for v in low], [v * scale for v in high], color=f"C{i % 10}", alpha=0.15)
    if not any_curve:
        _pyplot().close(fig)
        return None
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].set_ylabel("train loss (geometric mean)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{table.task}: learning curves (mean over seeds, band: 95% CI)", fontsize=9)
    return _png(fig)


def fig_accuracy_per_time(table: TaskTable) -> bytes | None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    plotted = False
    for i, row in enumerate(table.rows):
        acc = row.metrics["test_acc"]
        if not acc.n:
            continue
        err = acc.half_width * 100 if math.isfinite(acc.half_width) else 0.0
        for ax, s in zip(axes, (row.wall_s, row.example_grads)):
            if s.n:
                ax.errorbar(s.mean, acc.mean * 100, yerr=err, fmt="o", color=f"C{i % 10}", label=row.method, capsize=3)
                plotted = True
    if not plotted:
        _pyplot().close(fig)
        return None
    axes[0].set_xlabel("training wall time (s)")
    axes[1].set_xlabel("example-gradients")
    axes[0].set_ylabel("test accuracy (%)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
            break
    fig.suptitle(f"{table.task}: accuracy per training cost", fontsize=9)
    return _png(fig)


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


def fig_sigma(table: TaskTable) -> bytes | None:
    series = sigma_series(table)
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.8 / len(series)
    for i, (method, (layers, stats)) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(layers))]
        ax.bar(xs, [s.mean for s in stats], width, yerr=[s.half_width if math.isfinite(s.half_width) else 0 for s in stats],
               capsize=3, label=method, color=f"C{i % 10}")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))], layers, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("learned sigma (end of training)")
    ax.legend(fontsize=7)
    ax.set_title(f"{table.task}: learned DIPNet sigma per layer", fontsize=9)
    return _png(fig)


def _measure_items(rec: RunRecord) -> tuple[dict[str, float], dict[str, dict[float, float]]]:
    """Scalar measures and curves (dicts with numeric keys) of a run, flattened as 'instrument.key'."""
    scalars, curves = {}, {}
    for inst, values in ((rec.results or {}).get("measures") or {}).items():
        if isinstance(values, (int, float)):
            scalars[inst] = float(values)
            continue
        if not isinstance(values, Mapping):
            continue
        for key, v in values.items():
            name = f"{inst}.{key}"
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                scalars[name] = float(v)
            elif isinstance(v, Mapping):
                try:
                    curves[name] = {float(k): float(x) for k, x in v.items()}
                except (TypeError, ValueError):
                    continue
    return scalars, curves


def fig_measures(table: TaskTable) -> list[tuple[str, bytes]]:
    """Curves (e.g. accuracy vs corruption severity or attack eps) and scalars vs the gap."""
    plt = _pyplot()
    figs = []
    curves: dict[str, dict[str, list[dict[float, float]]]] = defaultdict(lambda: defaultdict(list))
    scalars: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in table.rows:
        for r in table.runs.get(row.method, []):
            if r.status != "done":
                continue
            sc, cu = _measure_items(r)
            for name, c in cu.items():
                curves[name][row.method].append(c)
            gap = r.final.get("gap")
            for name, v in sc.items():
                if isinstance(gap, (int, float)):
                    scalars[name][row.method].append((v, float(gap)))
    for name, per_method in curves.items():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for i, (method, cs) in enumerate(per_method.items()):
            xs = sorted(set().union(*cs))
            stats = [summarize(c.get(x) for c in cs) for x in xs]
            ax.errorbar(xs, [s.mean for s in stats], yerr=[s.half_width if math.isfinite(s.half_width) else 0 for s in stats],
                        marker="o", capsize=3, label=method, color=f"C{i % 10}")
        ax.set_xlabel(name.split(".", 1)[-1])
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
        ax.set_title(f"{table.task}: {name} (mean, 95% CI)", fontsize=9)
        figs.append((f"{name}", _png(fig)))
    for name, per_method in scalars.items():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for i, (method, pts) in enumerate(per_method.items()):
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o", label=method, color=f"C{i % 10}")
        ax.set_xlabel(name)
        ax.set_ylabel("generalization gap (pp)")
        ax.legend(fontsize=7)
        ax.set_title(f"{table.task}: {name} vs generalization gap (one point per run)", fontsize=9)
        figs.append((f"{name} vs gap", _png(fig)))
    return figs


# ---------------------------------------------------------------- documents


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    figures: list[Path]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _environment(store: RunStore) -> list[tuple[str, str]]:
    done = store.runs(status="done")
    if not done:
        return []
    env = (done[-1].results or {}).get("env") or {}
    items = [("runs done / total", f"{len(done)} / {len(store.runs())}")]
    for key in ("python", "platform", "machine", "processor", "cpu_count", "torch_threads", "device", "gpu", "git_commit"):
        if env.get(key) is not None:
            items.append((key, str(env[key])))
    for pkg, ver in (env.get("versions") or {}).items():
        items.append((pkg, str(ver)))
    hosts = sorted({str(((r.results or {}).get("env") or {}).get("platform")) for r in done})
    if len(hosts) > 1:
        items.append(("platforms", "; ".join(hosts)))
    return items


def write_report(store_path: str | Path, out_dir: str | Path, *, suite: str | None = None) -> ReportFiles:
    """Write ``report.md`` (+ ``figures/*.png``) and a self-contained ``report.html`` into ``out_dir``."""
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    with RunStore(store_path, create=False) as store:
        tables = task_tables(store, suite)
        env = _environment(store)
        failed = store.runs(status="failed")
        pending = [r for r in store.runs() if r.status in ("pending", "running")]
        suites = {name: store.get_meta(f"suite:{name}", {}) or {} for name in ([suite] if suite else store.suites())}

    md: list[str] = ["# dipnet comparison report", ""]
    body: list[str] = []
    figures: list[Path] = []
    md.append(f"Store: `{Path(store_path).name}`. Accuracy in %, differences in percentage points (pp); "
              "intervals are 95% Student-t intervals over seeds; comparisons with the baseline are paired by seed.")
    body.append(f"<p>Store: <code>{html.escape(Path(store_path).name)}</code>. Accuracy in %, differences in "
                "percentage points (pp); intervals are 95% Student-t intervals over seeds; comparisons with the "
                "baseline are paired by seed.</p>")
    if pending:
        note = f"{len(pending)} run(s) not finished yet (pending or interrupted): the numbers below leave them out."
        md += ["", f"**{note}**"]
        body.append(f"<p class='warn'>{html.escape(note)}</p>")
    for table in tables:
        title = f"{table.suite} / {table.task}"
        md += ["", f"## {title}", ""]
        body.append(f"<h2>{html.escape(title)}</h2>")
        header, rows = table_cells(table)
        md.append("| " + " | ".join(header) + " |")
        md.append("|" + "---|" * len(header))
        md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        body.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead><tbody>"
                    + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                    + "</tbody></table>")
        sigma = sigma_cells(table)
        if sigma is not None:
            caption = "Learned sigma per layer at the end of training (mean ± 95% CI over seeds):"
            md += ["", caption, "", "| " + " | ".join(sigma[0]) + " |", "|" + "---|" * len(sigma[0])]
            md += ["| " + " | ".join(r) + " |" for r in sigma[1]]
            body.append(f"<p>{html.escape(caption)}</p><table><thead><tr>"
                        + "".join(f"<th>{html.escape(h)}</th>" for h in sigma[0]) + "</tr></thead><tbody>"
                        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in sigma[1])
                        + "</tbody></table>")
        small = [r.method for r in table.rows if r.vs_baseline is not None and r.vs_baseline.n < 6]
        if small:
            note = ("With fewer than 6 seeds the two-sided Wilcoxon p-value cannot go below 0.05 "
                    "(its minimum is 2/2^n); the verdict uses the t interval.")
            md += ["", note]
            body.append(f"<p class='note'>{html.escape(note)}</p>")
        plots = [("test accuracy", fig_accuracy(table)), ("learning curves", fig_learning_curves(table)),
                 ("accuracy per training cost", fig_accuracy_per_time(table)), ("learned sigma", fig_sigma(table))]
        plots += fig_measures(table)
        for name, png in plots:
            if png is None:
                continue
            path = fig_dir / f"{_slug(table.suite)}__{_slug(table.task)}__{_slug(name)}.png"
            path.write_bytes(png)
            figures.append(path)
            md += ["", f"![{table.task}: {name}](figures/{path.name})"]
            b64 = base64.b64encode(png).decode("ascii")
            body.append(f"<figure><img alt='{html.escape(table.task + ': ' + name)}' src='data:image/png;base64,{b64}'>"
                        f"<figcaption>{html.escape(table.task + ': ' + name)}</figcaption></figure>")
    if failed:
        md += ["", "## Failed runs", ""]
        body.append("<h2>Failed runs</h2><ul>")
        for r in failed:
            line = f"{r.suite} / {r.task} / {r.method} / seed {r.seed}: {r.error}"
            md.append(f"- {line}")
            body.append(f"<li>{html.escape(line)}</li>")
        body.append("</ul>")
    if env:
        md += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in env]
        body.append("<h2>Environment</h2><table><tbody>" + "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in env) + "</tbody></table>")
    for name, meta in suites.items():
        text = meta.get("text")
        if not text:
            continue
        md += ["", f"## Suite `{name}` ({meta.get('source', '')})", "", "```toml", text.strip(), "```"]
        body.append(f"<h2>Suite {html.escape(name)} <small>{html.escape(str(meta.get('source', '')))}</small></h2>"
                    f"<pre>{html.escape(text.strip())}</pre>")

    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    html_path.write_text(_HTML.format(body="\n".join(body)), encoding="utf-8")
    return ReportFiles(md_path, html_path, figures)


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dipnet comparison report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }}
td:first-child, th:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; }}
img {{ max-width: 100%; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
.warn {{ color: #a40; font-weight: bold; }}
.note {{ color: #555; font-size: 0.9em; }}
</style></head>
<body>
<h1>dipnet comparison report</h1>
{body}
</body></html>
"""
