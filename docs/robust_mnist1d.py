"""Robustness of models trained under DIPNet's three training-time perturbation settings (none,
Gaussian input noise, FGSM examples); writes docs/robust_<data>.json and docs/figures/robust_<data>.png.

    OMP_NUM_THREADS=1 python docs/robust_mnist1d.py [--epochs 40] [--seeds 0,1,2] [--methods erm,dipnet]
    OMP_NUM_THREADS=1 python docs/robust_mnist1d.py --data mnist --models cnn2d --epochs 5 --seeds 0 --lr 1e-3
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dipnet.data import load_dataset
from dipnet.engine import TrainConfig, train
from dipnet.robust import evaluate_robustness

HERE = Path(__file__).resolve().parent
EPS = [0.0, 0.05, 0.1, 0.2, 0.3]  # data units; MNIST-1D is standardized (std 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--models", default="mnist1d-cnn,mnist1d-mlp")
    ap.add_argument("--methods", default="erm")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--data", default="mnist1d")
    ap.add_argument("--lr", type=float, default=None, help="default: 1e-2 for CNNs, 3e-3 otherwise")
    ap.add_argument("--resume", action="store_true", help="keep the runs already in the JSON file")
    ap.add_argument("--eot", type=int, default=8,
                    help="DIPNet runs are also evaluated with noise on (mode='noise'), K-sample EOT attacks")
    args = ap.parse_args()
    ds = load_dataset(args.data)
    out_json = HERE / f"robust_{args.data}.json"
    bounds = ds.info.bounds  # None for MNIST-1D: standardized, unbounded
    settings = {"none": ("", {}), "gaussian": ("gaussian-examples", {"gaussian-examples.sigma": 0.3}),
                "fgsm": ("fgsm-examples", {"fgsm-examples.eps": 0.1})}
    rows = json.loads(out_json.read_text()) if args.resume and out_json.exists() else []
    done = {(r["model"], r["method"], r["setting"], r["seed"]) for r in rows}
    for model in args.models.split(","):
        for base in args.methods.split(","):
            for setting, (comp, params) in settings.items():
                for seed in map(int, args.seeds.split(",")):
                    if (model, base, setting, seed) in done:
                        continue
                    method = "+".join(c for c in (comp, base) if c and c != "erm") or "erm"
                    params = dict(params)
                    if comp and bounds is not None:
                        params.update({f"{comp}.lo": bounds[0], f"{comp}.hi": bounds[1]})
                    cfg = TrainConfig(data=args.data, model=model, method=method, epochs=args.epochs, batch_size=100,
                                      seed=seed, optimizer="adam",
                                      lr=args.lr or (1e-2 if "cnn" in model else 3e-3),
                                      method_params=params, progress="none")
                    t = time.perf_counter()
                    res = train(cfg, dataset=ds)
                    r = evaluate_robustness(res.model, ds, eps=EPS, n_examples=args.n, seed=seed)
                    if "dipnet" in base and args.eot > 0:
                        r["noise_eval"] = evaluate_robustness(
                            res.model, ds, eps=EPS, n_examples=args.n, seed=seed, mode="noise",
                            eot_samples=args.eot, corruptions=[], shifted=False)
                    row = {"model": model, "method": base, "setting": setting, "seed": seed,
                           "example_grads": res.final["example_grads"], "train_s": res.final.get("wall_s"),
                           "wall_s": time.perf_counter() - t, **r}
                    rows.append(row)
                    print(f"{model} {base} {setting} s{seed}: clean {r['clean_acc']:.3f} "
                          f"pgd {['%.3f' % a for a in r['adversarial']['pgd']['acc']]} "
                          f"mCA {r['mean_corruption_acc']:.3f} shifted {r['shifted']}", flush=True)
                    out_json.write_text(json.dumps(rows, indent=1))
    plot(rows, args.data)
    print(summary(rows))


def plot(rows: list[dict], data: str = "mnist1d") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (HERE / "figures").mkdir(exist_ok=True)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"], r["setting"]), []).append(r)
    models = sorted({k[0] for k in groups})
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 7), squeeze=False)
    for j, model in enumerate(models):
        for (m, method, setting), rs in groups.items():
            if m != model:
                continue
            label = f"{method}, train: {setting}"
            pgd = np.array([r["adversarial"]["pgd"]["acc"] for r in rs]).mean(0)
            axes[0, j].plot(rs[0]["adversarial"]["pgd"]["eps"], pgd, marker="o", label=label)
            sev = np.array([r["per_severity_acc"] for r in rs]).mean(0)
            axes[1, j].plot([0, 1, 2, 3, 4, 5], [np.mean([r["clean_acc"] for r in rs]), *sev], marker="o", label=label)
        axes[0, j].set(title=f"{data} {model}: PGD-20 (L-inf)", xlabel="eps (data units)", ylabel="accuracy", ylim=(0, 1))
        axes[1, j].set(title=f"{data} {model}: mean over corruptions", xlabel="severity", ylabel="accuracy", ylim=(0, 1))
        axes[0, j].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "figures" / f"robust_{data}.png", dpi=110)
    plt.close(fig)



def summary(rows: list[dict]) -> str:
    """Markdown table: mean +- std over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"], r["setting"]), []).append(r)
    eps = rows[0]["adversarial"]["pgd"]["eps"]
    head = (["model", "train perturbation", "seeds", "clean"] + [f"FGSM {e:g}" for e in eps[1:]]
            + [f"PGD {e:g}" for e in eps[1:]] + ["mean corr.", "shift (mean)", "example-grads"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ms = lambda v: f"{100 * np.mean(v):.1f} ± {100 * np.std(v):.1f}"
    for (model, method, setting), rs in groups.items():
        cells = [model, setting if method == "erm" else f"{method}+{setting}", str(len(rs)), ms([r["clean_acc"] for r in rs])]
        for attack in ("fgsm", "pgd"):
            cells += [ms([r["adversarial"][attack]["acc"][i] for r in rs]) for i in range(1, len(eps))]
        cells.append(ms([r["mean_corruption_acc"] for r in rs]))
        shifted = [[v for k, v in r["shifted"].items() if k not in ("control", "skipped")] for r in rs]
        cells.append(ms([np.mean(v) for v in shifted]) if all(shifted) else "n/a")
        cells.append(f"{np.mean([r['example_grads'] for r in rs]):.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
