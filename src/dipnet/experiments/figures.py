"""The report's figures as PNG bytes (matplotlib, headless): accuracy per method, learning
curves, accuracy per training cost, learned sigma, and the instruments' curves and scalars."""
from __future__ import annotations

import io
import math
from collections import defaultdict
from typing import Any, Mapping

from .stats import summarize
from .store import RunRecord
from .tables import TaskTable, sigma_series


def _pyplot() -> Any:
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
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(table.rows), 3.4), layout="constrained")
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


def _count(value: float, _pos: Any = None) -> str:
    """A tick label that stays short: 140000 -> 140k, 2500000 -> 2.5M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def fig_learning_curves(table: TaskTable) -> bytes | None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
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
        _integer_ticks(ax)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    fig.suptitle(f"{table.task}: learning curves (mean over seeds, band: 95% CI)", fontsize=9)
    return _png(fig)


def fig_accuracy_per_time(table: TaskTable) -> bytes | None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    plotted = False
    # methods of equal cost would sit on one x value: spread them by a small, labelled offset
    costs = [row.example_grads.mean for row in table.rows if row.example_grads.n]
    same: dict[float, int] = defaultdict(int)
    for i, row in enumerate(table.rows):
        acc = row.metrics["test_acc"]
        if not acc.n:
            continue
        err = acc.half_width * 100 if math.isfinite(acc.half_width) else 0.0
        for k, (ax, s) in enumerate(zip(axes, (row.wall_s, row.example_grads))):
            if not s.n:
                continue
            x = s.mean
            if k == 1:
                nth = same[round(x, 6)]
                same[round(x, 6)] += 1
                x *= 1 + 0.015 * nth * (max(costs) > min(costs) or 1)
            ax.errorbar(x, acc.mean * 100, yerr=err, fmt="o", color=f"C{i % 10}", label=row.method if k == 0 else None,
                        capsize=3)
            plotted = True
    if not plotted:
        _pyplot().close(fig)
        return None
    axes[0].set_xlabel("training wall time (s)")
    axes[1].set_xlabel("example-gradients (equal costs offset by 1.5% each)")
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axes[1].xaxis.set_major_locator(MaxNLocator(nbins=5))
    axes[1].xaxis.set_major_formatter(FuncFormatter(_count))
    axes[0].set_ylabel("test accuracy (%)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    fig.suptitle(f"{table.task}: accuracy per training cost", fontsize=9)
    return _png(fig)


def fig_sigma(table: TaskTable) -> bytes | None:
    series = sigma_series(table)
    if not series:
        return None
    plt = _pyplot()
    layers = list(dict.fromkeys(layer for names, _ in series.values() for layer in names))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(layers)), 3.4), layout="constrained")
    width = 0.8 / len(series)
    colour = {row.method: f"C{i % 10}" for i, row in enumerate(table.rows)}
    for i, (method, (names, stats)) in enumerate(series.items()):
        by_layer = dict(zip(names, stats))
        xs = [j + i * width for j, layer in enumerate(layers) if layer in by_layer]
        vals = [by_layer[layer] for layer in layers if layer in by_layer]
        ax.bar(xs, [s.mean for s in vals], width, yerr=[s.half_width if math.isfinite(s.half_width) else 0 for s in vals],
               capsize=3, label=method, color=colour.get(method, f"C{i % 10}"))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))], layers, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("noise std in input units (end of training)")
    fig.legend(loc="outside right upper", fontsize=7)
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
        fig, ax = plt.subplots(figsize=(6.2, 3.4), layout="constrained")
        for i, (method, cs) in enumerate(per_method.items()):
            xs = sorted(set().union(*cs))
            stats = [summarize(c.get(x) for c in cs) for x in xs]
            ax.errorbar(xs, [s.mean for s in stats], yerr=[s.half_width if math.isfinite(s.half_width) else 0 for s in stats],
                        marker="o", capsize=3, label=method, color=f"C{i % 10}")
        ax.set_xlabel(name.split(".", 1)[-1])
        ax.set_ylabel(name)
        fig.legend(loc="outside right upper", fontsize=7)
        ax.set_title(f"{table.task}: {name} (mean, 95% CI)", fontsize=9)
        figs.append((f"{name}", _png(fig)))
    for name, points in scalars.items():
        fig, ax = plt.subplots(figsize=(6.2, 3.4), layout="constrained")
        for i, (method, pts) in enumerate(points.items()):
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o", label=method, color=f"C{i % 10}")
        ax.set_xlabel(name)
        ax.set_ylabel("generalization gap (pp)")
        fig.legend(loc="outside right upper", fontsize=7)
        ax.set_title(f"{table.task}: {name} vs generalization gap (one point per run)", fontsize=9)
        figs.append((f"{name} vs gap", _png(fig)))
    return figs


# ---------------------------------------------------------------- documents
