"""Comparison methods on MNIST-1D (reference MLP / CNN recipe: AdamW lr 1e-2, batch 100, cosine,
80 epochs; CNN weight decay 0.05), at equal epochs and at equal example-gradient evaluations.

    OMP_NUM_THREADS=1 python docs/methods_mnist1d.py mnist1d-mlp 0,1,2 docs/methods_mnist1d.jsonl

Appends one JSON line per run (model, method, budget, seed, test_acc, example_grads, wall_s);
runs already in the file are skipped. ``python docs/methods_mnist1d.py report FILE...`` prints the
markdown table (mean test accuracy ± 95% t-interval over seeds; paired difference to ERM).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from dipnet.engine import TrainConfig, train

EPOCHS = 80
# (label, spec, params, epochs at equal example-gradients)
METHODS = [
    ("ERM", "erm", {}, EPOCHS),
    ("SAM", "sam", {"rho": 0.05}, EPOCHS // 2),
    ("ASAM", "asam", {"rho": 0.5}, EPOCHS // 2),
    ("RWP", "rwp", {"sigma": 0.015}, EPOCHS),
    ("m-RWP", "mrwp", {"sigma": 0.015}, EPOCHS),
    ("ARWP", "arwp", {}, EPOCHS),
    ("m-ARWP", "marwp", {"sigma": 0.015}, EPOCHS),
    ("ICP", "icp", {"steps": 5, "step_size": 0.01}, 15),  # W + 7 (E - W) = 80 with W = E/4
    ("input noise", "input-noise", {"sigma": 0.25}, EPOCHS),
    ("DIPNet", "dipnet", {"sigma": 0.1}, EPOCHS),
    ("DIPNet + m-RWP", "dipnet+mrwp", {"dipnet.sigma": 0.1, "mrwp.sigma": 0.015}, EPOCHS),
]

# m-RWP updates once per two mini-batches: the released recipe counts epochs of *updates*
UPDATES_EPOCHS = {"m-RWP": 2 * EPOCHS, "m-ARWP": 2 * EPOCHS, "DIPNet + m-RWP": 2 * EPOCHS}


def main(model: str, seeds: list[int], out: Path, only: set[str] | None = None) -> None:
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["model"], r["method"], r["budget"], r["seed"]))
    wd = 0.05 if model == "mnist1d-cnn" else 0.0
    for seed in seeds:
        for label, spec, params, eq_epochs in METHODS:
            budgets = [("epochs", EPOCHS)] + ([("grads", eq_epochs)] if eq_epochs != EPOCHS else [])
            if label in UPDATES_EPOCHS:
                budgets.append(("updates", UPDATES_EPOCHS[label]))
            budgets = [b for b in budgets if only is None or b[0] in only]
            for budget, epochs in budgets:
                if (model, label, budget, seed) in done:
                    continue
                cfg = TrainConfig(data="mnist1d", model=model, method=spec, method_params=params, epochs=epochs,
                                  batch_size=100, optimizer="adamw", lr=1e-2, weight_decay=wd, seed=seed,
                                  progress="none")
                res = train(cfg)
                row = {"model": model, "method": label, "spec": spec, "budget": budget, "epochs": epochs, "seed": seed,
                       "test_acc": res.final["test_acc"], "train_acc": res.final["train_acc"],
                       "example_grads": res.final["example_grads"], "wall_s": res.final["wall_s"]}
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


def report(paths: list[Path]) -> str:
    from dipnet.experiments.stats import paired_compare, summarize

    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    models = sorted({r["model"] for r in rows}, key=lambda m: [r["model"] for r in rows].index(m))
    out = []
    for model in models:
        rs = [r for r in rows if r["model"] == model]

        def acc(label: str, budget: str) -> dict[int, float]:
            got = {r["seed"]: r["test_acc"] for r in rs if r["method"] == label and r["budget"] == budget}
            if budget == "grads" and not got:  # methods costing B per batch: the same runs
                got = acc(label, "epochs")
            return got

        erm = acc("ERM", "epochs")
        out += [f"\n**{model}** (test accuracy %, mean ± 95% CI over seeds; Δ = paired difference to ERM)\n",
                "| method | seeds | equal epochs (80) | Δ vs ERM | equal example-grads | Δ vs ERM | wall s/run |",
                "|---|---|---|---|---|---|---|"]
        extra = []
        for label, *_ in METHODS:
            e, g = acc(label, "epochs"), acc(label, "grads")
            if not e:
                continue
            wall = summarize([r["wall_s"] for r in rs if r["method"] == label and r["budget"] == "epochs"]).mean
            de, dg = paired_compare(e, erm).diff, paired_compare(g, erm).diff
            if label == "ERM":
                de = dg = summarize([])
            out.append(f"| {label} | {len(e)} | {summarize(e.values()).format(100, 1)} | {de.format(100, 1)} | "
                       f"{summarize(g.values()).format(100, 1)} | {dg.format(100, 1)} | {wall:.0f} |")
            u = {r["seed"]: r["test_acc"] for r in rs if r["method"] == label and r["budget"] == "updates"}
            if u:
                extra.append(f"| {label}, {UPDATES_EPOCHS[label]} epochs (= ERM's updates, 2x example-grads) | {len(u)} | "
                             f"{summarize(u.values()).format(100, 1)} | {paired_compare(u, erm).diff.format(100, 1)} |")
        if extra:
            out += ["", "| equal updates | seeds | test acc % | Δ vs ERM |", "|---|---|---|---|", *extra]
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1] == "report":
        print(report([Path(p) for p in sys.argv[2:]]))
        sys.exit(0)
    main(sys.argv[1], [int(s) for s in sys.argv[2].split(",")], Path(sys.argv[3]),
         set(sys.argv[4].split(",")) if len(sys.argv) > 4 else None)
