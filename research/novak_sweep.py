"""Novak et al. (2018) on our data: train a sweep of small models and relate their sensitivity
(mean test Jacobian norm, region transitions) to their generalization gap.

``PYTHONPATH=src python research/novak_sweep.py --data mnist1d --out docs/measure_sweep_mnist1d.jsonl`` trains
every configuration of :func:`sweep_configs` (a few seconds each on one CPU thread), measures it
and appends one JSON record per model; :func:`summarize` computes the rank correlations and
:func:`plot_sweep` draws the figures used in docs/measure.md.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dipnet.data import Dataset, load_dataset
from dipnet.engine import TrainConfig, evaluate, threads, train
from dipnet.engine.config import Optimizer
from dipnet.measure import (circle_through, draw_anchors, jacobian_norm, lipschitz_bounds, measure_model, random_anchors,
                       region_transitions, sharpness, spearman, transitions_along)
from dipnet.methods import METHODS
from dipnet.projection import noise_layers


@dataclass
class SweepRun:
    """One model of the sweep: training options and the data treatment (label noise, augmentation)."""

    name: str
    model: str = "mlp"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer: Optimizer = "adamw"
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 30
    weight_decay: float = 0.0
    label_noise: float = 0.0
    augment: bool = False
    method: str = "erm"
    method_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


def sweep_configs(data: str, methods: list[str], epochs_scale: float = 1.0) -> list[SweepRun]:
    """At least 24 models varying width, depth, optimizer, batch size (incl. full batch), label noise,
    augmentation, training length and the training methods registered; ``epochs_scale`` lengthens
    every run (e.g. 4 to train close to 100% training accuracy, the regime of Novak et al.)."""
    full = 4000 if data == "mnist1d" else 8000
    w = (128, 128) if data == "mnist1d" else (256,)
    ep = round((30 if data == "mnist1d" else 10) * epochs_scale)
    runs = [
        SweepRun("base", model_kwargs={"widths": w}, epochs=ep),
        SweepRun("base seed 1", model_kwargs={"widths": w}, epochs=ep, seed=1),
        SweepRun("width 32", model_kwargs={"widths": (32,)}, epochs=ep),
        SweepRun("width 128", model_kwargs={"widths": (128,)}, epochs=ep),
        SweepRun("width 512", model_kwargs={"widths": (512,)}, epochs=ep),
        SweepRun("width 512 x2", model_kwargs={"widths": (512, 512)}, epochs=ep),
        SweepRun("depth 3", model_kwargs={"widths": (128,) * 3}, epochs=ep),
        SweepRun("depth 4 width 64", model_kwargs={"widths": (64,) * 4}, epochs=ep),
        SweepRun("sgd", model_kwargs={"widths": w}, optimizer="sgd", lr=0.05, epochs=ep),
        SweepRun("sgd width 512", model_kwargs={"widths": (512,)}, optimizer="sgd", lr=0.05, epochs=ep),
        SweepRun("adamw lr 1e-2", model_kwargs={"widths": w}, lr=1e-2, epochs=ep),
        SweepRun("batch 32", model_kwargs={"widths": w}, batch_size=32, epochs=ep),
        SweepRun("batch 512", model_kwargs={"widths": w}, batch_size=512, epochs=ep),
        SweepRun("full batch", model_kwargs={"widths": w}, batch_size=full, lr=3e-3, epochs=10 * ep),
        SweepRun("full batch width 512", model_kwargs={"widths": (512,)}, batch_size=full, lr=3e-3, epochs=10 * ep),
        SweepRun("label noise 0.2", model_kwargs={"widths": w}, label_noise=0.2, epochs=ep),
        SweepRun("label noise 0.5", model_kwargs={"widths": w}, label_noise=0.5, epochs=ep),
        SweepRun("label noise 0.2 width 512 x2", model_kwargs={"widths": (512, 512)}, label_noise=0.2, epochs=ep),
        SweepRun("label noise 0.5 width 512 x2", model_kwargs={"widths": (512, 512)}, label_noise=0.5, epochs=ep),
        SweepRun("augment", model_kwargs={"widths": w}, augment=True, epochs=ep),
        SweepRun("augment width 512", model_kwargs={"widths": (512,)}, augment=True, epochs=ep),
        SweepRun("weight decay 0.1", model_kwargs={"widths": w}, weight_decay=0.1, epochs=ep),
        SweepRun("short training", model_kwargs={"widths": w}, epochs=max(2, ep // 6)),
        SweepRun("long training", model_kwargs={"widths": w}, epochs=3 * ep),
    ]
    if data == "mnist1d":
        runs += [
            SweepRun("reference CNN", model="mnist1d-cnn", lr=3e-3, epochs=ep),
            SweepRun("reference CNN augment", model="mnist1d-cnn", lr=3e-3, epochs=ep, augment=True),
            SweepRun("reference CNN label noise 0.2", model="mnist1d-cnn", lr=3e-3, epochs=ep, label_noise=0.2),
        ]
    else:
        runs += [SweepRun("cnn2d", model="cnn2d", epochs=max(3, ep // 2))]
    for m in methods:
        if m != "erm":
            runs.append(SweepRun(f"method {m}", model_kwargs={"widths": w}, epochs=ep, method=m))
    return runs


def _treated(ds: Dataset, run: SweepRun) -> Dataset:
    gen = torch.Generator().manual_seed(1000 + run.seed)
    x, y = ds.x_train, ds.y_train.clone()
    if run.label_noise:
        flip = torch.rand(y.shape[0], generator=gen) < run.label_noise
        y[flip] = torch.randint(0, ds.info.num_classes, (int(flip.sum()),), generator=gen)
    if run.augment:  # three extra copies: random shift along the last axis (+-3) and small Gaussian noise
        copies = [x]
        for _ in range(3):
            shift = int(torch.randint(-3, 4, (1,), generator=gen))
            copies.append(torch.roll(x, shift, dims=-1) + 0.05 * torch.randn(x.shape, generator=gen) * x.std())
        x, y = torch.cat(copies), y.repeat(4)
    return Dataset(x, y, ds.x_test, ds.y_test, ds.info)


def train_and_measure(ds: Dataset, run: SweepRun, n_points: int = 1000, circles: int = 8, points: int = 1000) -> dict[str, Any]:
    """Train one configuration with the engine and take the Novak et al. measures on it."""
    t0 = time.perf_counter()
    cfg = TrainConfig(data=ds.info.name, model=run.model, method=run.method, epochs=run.epochs,
                      batch_size=run.batch_size, seed=run.seed, optimizer=run.optimizer, lr=run.lr,
                      weight_decay=run.weight_decay, model_kwargs=dict(run.model_kwargs),
                      method_params=dict(run.method_params), progress="none", train_eval_max=1)
    treated = _treated(ds, run)
    result = train(cfg, dataset=treated)
    model = result.model.eval()
    train_s = time.perf_counter() - t0
    n = ds.x_train.shape[0]  # the training set as trained on (noisy labels), without the augmented copies
    tr = evaluate(model, treated.x_train[:n], treated.y_train[:n])
    rec_clean = evaluate(model, ds.x_train, ds.y_train)
    te = evaluate(model, ds.x_test, ds.y_test)
    x_te, y_te = ds.x_test[:n_points], ds.y_test[:n_points]
    x_tr, y_tr = ds.x_train[:n_points], ds.y_train[:n_points]
    norms = jacobian_norm(model, x_te)
    with torch.no_grad():
        point_loss = F.cross_entropy(model(x_te), y_te, reduction="none")
    rec: dict[str, Any] = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in run.__dict__.items()},
        "train_acc": tr["acc"], "test_acc": te["acc"], "train_loss": tr["loss"], "test_loss": te["loss"],
        "gap_acc": tr["acc"] - te["acc"], "gap_loss": te["loss"] - tr["loss"], "train_acc_clean_labels": rec_clean["acc"],
        "jacobian_test_mean": float(norms.mean()), "jacobian_train_mean": float(jacobian_norm(model, x_tr).mean()),
        "jacobian_loss_spearman": spearman(norms, point_loss),
        "jacobian_per_point": [round(float(v), 6) for v in norms[:300]],
        "loss_per_point": [round(float(v), 6) for v in point_loss[:300]],
        "train_seconds": train_s,
    }
    for kind, anchors in (("train", draw_anchors(x_tr, y_tr, circles, seed=run.seed)),
                          ("test", draw_anchors(x_te, y_te, circles, seed=run.seed)),
                          ("random", random_anchors(x_tr, circles, seed=run.seed))):
        rt = region_transitions(model, anchors, points)
        rec[f"transitions_{kind}"] = float(rt.density.mean())
        rec[f"transitions_{kind}_flips"] = float(rt.flips.mean())
        rec[f"circle_length_{kind}"] = float(rt.length.mean())
        for key, value in anchor_profile(model, anchors, points).items():
            rec[f"{key}_{kind}"] = value
    bounds = lipschitz_bounds(model, x_te[:200], iters=50, strict=False)
    rec.update(lipschitz_lower=bounds.lower, lipschitz_upper=bounds.upper, lipschitz_upper_verified=bounds.upper_verified)
    trained_labels = treated.y_train[:500]  # the loss the model was trained on
    rec["sharpness_top"] = sharpness(model, F.cross_entropy, (treated.x_train[:500], trained_labels), iters=30, tol=1e-3).top
    rec["seconds"] = time.perf_counter() - t0
    return rec


def anchor_profile(model: torch.nn.Module, anchors: torch.Tensor, points: int = 1000, window: float = 0.02) -> dict[str, float]:
    """Novak et al. (2018) Fig. 2: is the net less sensitive at the data than between it? Along each
    circle through three points, transitions per step within +-``window`` of the circle around the
    anchors over those elsewhere, and the Jacobian norm at the anchors over its mean along the circle."""
    near_ratio, jac_ratio = [], []
    half = max(1, int(window * points))
    for triple in anchors:
        path, _ = circle_through(triple, points)
        per_step = transitions_along(model, path, per_step=True).double()
        idx = torch.cdist(triple.flatten(1).double(), path.flatten(1).double()).argmin(1)
        near = torch.zeros(points, dtype=torch.bool)
        for i in idx.tolist():
            near[torch.arange(i - half, i + half) % points] = True
        far_rate = per_step[~near].mean()
        near_ratio.append(float(per_step[near].mean() / far_rate) if far_rate > 0 else float("nan"))
        jac_path = jacobian_norm(model, path)
        jac_ratio.append(float(jac_path[idx].mean() / jac_path.mean()))
    nr = torch.tensor(near_ratio, dtype=torch.float64)
    return {"near_over_far_transitions": float(nr[~nr.isnan()].mean()) if (~nr.isnan()).any() else float("nan"),
            "anchor_over_path_jacobian": float(torch.tensor(jac_ratio).mean())}


MEASURE_COLUMNS = ("jacobian_test_mean", "transitions_test", "transitions_train", "lipschitz_lower",
                   "lipschitz_upper", "sharpness_top")


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman correlations of each measure with the gaps across models, per-point Jacobian-loss
    correlations, and mean transition densities around train / test / random points."""
    t = lambda key: torch.tensor([float(r[key]) for r in records], dtype=torch.float64)
    out: dict[str, Any] = {"models": len(records)}
    for col in MEASURE_COLUMNS:
        out[f"spearman({col}, gap_acc)"] = spearman(t(col), t("gap_acc"))
        out[f"spearman({col}, gap_loss)"] = spearman(t(col), t("gap_loss"))
    clean = [r for r in records if not r["label_noise"]]
    if len(clean) > 2:
        c = lambda key: torch.tensor([float(r[key]) for r in clean], dtype=torch.float64)
        out["models_without_label_noise"] = len(clean)
        out["spearman(jacobian_test_mean, gap_acc), no label noise"] = spearman(c("jacobian_test_mean"), c("gap_acc"))
        out["spearman(jacobian_test_mean, gap_loss), no label noise"] = spearman(c("jacobian_test_mean"), c("gap_loss"))
    per_point = t("jacobian_loss_spearman")
    out["per_point_spearman_median"] = float(per_point.median())
    out["per_point_spearman_min"] = float(per_point.min())
    out["per_point_spearman_positive_fraction"] = float((per_point > 0).double().mean())
    for kind in ("train", "test", "random"):
        out[f"transitions_{kind}_mean"] = float(t(f"transitions_{kind}").mean())
    out["models_with_fewer_transitions_on_train_than_random"] = int((t("transitions_train") < t("transitions_random")).sum())
    for kind in ("train", "test", "random"):
        for key in ("near_over_far_transitions", "anchor_over_path_jacobian"):
            ratios = t(f"{key}_{kind}")
            out[f"{key}_{kind}_median"] = float(ratios[~ratios.isnan()].median())
            out[f"{key}_{kind}_below_1"] = int((ratios < 1).sum())
    return out


def plot_sweep(records: list[dict[str, Any]], out_png: str | Path, title: str) -> Path:
    """Four panels: Jacobian norm vs gap across models; Jacobian norm vs per-point loss for one model;
    Jacobian norm at the anchors over its mean along the circle, and transitions per unit length,
    for circles through train / test / random points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    jac = [r["jacobian_test_mean"] for r in records]
    gap = [r["gap_acc"] for r in records]
    ax = axes[0]
    sc = ax.scatter(jac, gap, c=[r["label_noise"] for r in records], cmap="viridis")
    fig.colorbar(sc, ax=ax, label="label noise")
    ax.set_xscale("log")
    ax.set_xlabel("mean test ||d softmax / dx||_F")
    ax.set_ylabel("generalization gap (train acc - test acc)")
    rho = spearman(torch.tensor(jac), torch.tensor(gap))
    ax.set_title(f"{len(records)} models: Spearman {rho:.2f}")
    base = next((r for r in records if r["name"] == "base"), records[0])
    ax = axes[1]
    ax.scatter(base["jacobian_per_point"], base["loss_per_point"], s=5, alpha=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("||J(x)||_F at a test point")
    ax.set_ylabel("cross-entropy at that point")
    ax.set_title(f"per test point, model '{base['name']}': Spearman {base['jacobian_loss_spearman']:.2f}")
    kinds = ("train", "test", "random")
    for ax, key, label in ((axes[2], "anchor_over_path_jacobian", "||J|| at anchors / mean ||J|| on circle"),
                           (axes[3], "transitions", "unit flips per unit length")):
        for r in records:
            ax.plot(range(3), [r[f"{key}_{k}"] for k in kinds], color="gray", alpha=0.35, marker="o", ms=3)
        med = [float(torch.tensor([r[f"{key}_{k}"] for r in records]).median()) for k in kinds]
        ax.plot(range(3), med, color="crimson", marker="s", lw=2, label="median over models")
        ax.set_xticks(range(3), [f"{k} points" for k in kinds])
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.legend(loc="best", fontsize=8)
    axes[2].axhline(1.0, color="black", lw=0.8, ls="--")
    axes[2].set_title("sensitivity at the anchors of circles through ...")
    axes[3].set_title("transitions along circles through ...")
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def compare_methods(ds: Dataset, methods: list[str], seeds: tuple[int, ...] = (0, 1), samples: int = 16) -> list[dict[str, Any]]:
    """Train the MNIST-1D MLP and reference CNN with each method and measure the deterministic net
    and, where the method leaves noise modules in the model (DIPNet, noise layers), the smoothed net."""
    models = [("mlp", {"widths": (128, 128)}, 1e-3, 120), ("mnist1d-cnn", {}, 3e-3, 30)]
    records = []
    for model_name, kwargs, lr, epochs in models:
        for method in methods:
            for seed in seeds:
                t0 = time.perf_counter()
                cfg = TrainConfig(data=ds.info.name, model=model_name, model_kwargs=dict(kwargs), method=method,
                                  epochs=epochs, lr=lr, seed=seed, progress="none", train_eval_max=1)
                model = train(cfg, dataset=ds).model.eval()
                noisy = bool(noise_layers(model))
                m = measure_model(model, ds, names="jacobian,lipschitz,curvature,sharpness", n_examples=1000,
                                  seed=seed, smoothed_samples=samples if noisy else 0)
                tr = evaluate(model, ds.x_train, ds.y_train)
                rec = {"model": model_name, "method": method, "seed": seed, "test_acc": m["test_acc"],
                       "train_acc": tr["acc"], "gap_acc": tr["acc"] - m["test_acc"],
                       "jacobian": m["jacobian"]["mean"], "curvature": m["curvature"]["mean"],
                       "lipschitz_lower": m["lipschitz"]["lower"], "lipschitz_upper": m["lipschitz"]["upper"],
                       "lipschitz_upper_verified": m["lipschitz"]["upper_verified"],
                       "sharpness_top": m["sharpness"]["top_eigenvalue"], "sharpness_trace": m["sharpness"]["trace"],
                       "seconds": time.perf_counter() - t0}
                if noisy:
                    rec.update(jacobian_smoothed=m["jacobian_smoothed"]["mean"], curvature_smoothed=m["curvature_smoothed"]["mean"],
                               lipschitz_lower_log_probs=m["lipschitz_smoothed"]["lower_log_probs_deterministic"],
                               lipschitz_lower_log_probs_smoothed=m["lipschitz_smoothed"]["lower_log_probs"])
                records.append(rec)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}), flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="research/novak_sweep.py", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist1d", choices=("mnist1d", "mnist"))
    p.add_argument("--out", required=True, help="JSON-lines file; finished runs in it are skipped (resume)")
    p.add_argument("--figure", default=None, help="PNG for the three-panel figure")
    p.add_argument("--limit", type=int, default=0, help="train only the first N configurations")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every run's epochs (default 1)")
    p.add_argument("--compare-methods", default=None, metavar="M1,M2",
                   help="instead of the sweep: train the MLP and CNN with these methods, 2 seeds, and measure them")
    args = p.parse_args(argv)

    threads.apply(1)
    ds = load_dataset(args.data)
    if args.compare_methods:
        records = compare_methods(ds, [m.strip() for m in args.compare_methods.split(",") if m.strip()])
        Path(args.out).write_text("\n".join(json.dumps(r) for r in records) + "\n")
        return 0
    runs = sweep_configs(args.data, METHODS.names(), args.epochs_scale)
    if args.limit:
        runs = runs[: args.limit]
    out = Path(args.out)
    done = {json.loads(line)["name"] for line in out.read_text().splitlines() if line.strip()} if out.exists() else set()
    for run in runs:
        if run.name in done:
            continue
        try:
            rec = train_and_measure(ds, run)
        except Exception as exc:  # keep the sweep going; the failure is recorded
            print(f"{run.name}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{run.name}: test {rec['test_acc']:.3f} gap {rec['gap_acc']:.3f} jac {rec['jacobian_test_mean']:.4f} "
              f"trans tr/te/rnd {rec['transitions_train']:.2f}/{rec['transitions_test']:.2f}/{rec['transitions_random']:.2f} "
              f"({rec['seconds']:.1f}s)", flush=True)
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    print(json.dumps(summarize(records), indent=1))
    if args.figure:
        scale = f", epochs x{args.epochs_scale:g}" if args.epochs_scale != 1 else ""
        plot_sweep(records, args.figure, f"Novak et al. (2018) on {args.data}: {len(records)} models{scale}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
