"""Comparison methods on MNIST-1D (reference MLP / CNN recipe: AdamW lr 1e-2, batch 100, cosine,
80 epochs; CNN weight decay 0.05), at equal epochs and at equal example-gradient evaluations.

    OMP_NUM_THREADS=1 python docs/methods_mnist1d.py mnist1d-mlp 0,1,2 docs/methods_mnist1d.jsonl

Appends one JSON line per run (model, method, budget, seed, test_acc, example_grads, wall_s);
runs already in the file are skipped.
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


def main(model: str, seeds: list[int], out: Path) -> None:
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["model"], r["method"], r["budget"], r["seed"]))
    wd = 0.05 if model == "mnist1d-cnn" else 0.0
    for seed in seeds:
        for label, spec, params, eq_epochs in METHODS:
            budgets = [("epochs", EPOCHS)] + ([("grads", eq_epochs)] if eq_epochs != EPOCHS else [])
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


if __name__ == "__main__":
    main(sys.argv[1], [int(s) for s in sys.argv[2].split(",")], Path(sys.argv[3]))
