"""Issue 3 experiment: ERM vs DIPNet (learnable sigma) vs fixed-sigma noise at every layer vs
input-only noise; clean test accuracy (mean, 95% CI over seeds) and the learned sigma per layer.
Appends one JSON line per run to docs/dipnet_runs.jsonl (finished runs are skipped on re-run).

    OMP_NUM_THREADS=1 python docs/dipnet_experiment.py --tasks mnist1d-mlp,mnist1d-cnn,mnist-mlp --seeds 0,1,2,3,4
    OMP_NUM_THREADS=1 python docs/dipnet_experiment.py --summary
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from dipnet.engine import TrainConfig, train

HERE = Path(__file__).resolve().parent
RUNS = HERE / "dipnet_runs.jsonl"

# the reference settings of tests/test_accuracy.py
TASKS = {
    "mnist1d-mlp": dict(data="mnist1d", model="mnist1d-mlp", epochs=80, batch_size=100, lr=1e-2),
    "mnist1d-cnn": dict(data="mnist1d", model="mnist1d-cnn", epochs=80, batch_size=100, lr=1e-2, weight_decay=0.05),
    "mnist-mlp": dict(data="mnist", model="mlp", epochs=8, batch_size=64, lr=1e-3, weight_decay=0.01,
                      model_kwargs={"widths": (512, 256)}),
}
METHODS = {
    "erm": ("erm", {}),
    "dipnet": ("dipnet", {"sigma": 0.1}),
    "noise-layers": ("noise-layers", {"sigma": 0.1}),
    "input-noise": ("gaussian-examples", {"sigma": 0.1}),
}


def t95(n: int) -> float:
    return {1: float("nan"), 2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571}.get(n, 1.96)


def done() -> set[tuple[str, str, int]]:
    if not RUNS.exists():
        return set()
    return {(r["task"], r["method"], r["seed"]) for r in map(json.loads, RUNS.read_text().splitlines())}


def run(tasks: list[str], methods: list[str], seeds: list[int], extra: dict[str, dict]) -> None:
    have = done()
    for task in tasks:
        for label in methods:
            spec, params = METHODS.get(label, extra.get(label, (None, None)))
            for seed in seeds:
                if (task, label, seed) in have:
                    continue
                cfg = TrainConfig(**TASKS[task], method=spec, method_params=dict(params), seed=seed, progress="none")
                t = time.time()
                res = train(cfg)
                row = {"task": task, "method": label, "spec": spec, "params": params, "seed": seed,
                       "test_acc": res.final["test_acc"], "train_acc": res.final["train_acc"],
                       "sigma": res.history[-1].get("method", {}).get("sigma"), "wall_s": time.time() - t}
                with RUNS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(task, label, seed, f"{row['test_acc']:.4f}", f"{row['wall_s']:.1f}s", flush=True)


def summary() -> str:
    rows = [json.loads(line) for line in RUNS.read_text().splitlines()]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    lines = ["| task | method | seeds | test acc % (mean +- 95% CI) | learned sigma per layer (mean over seeds) |",
             "| --- | --- | --- | --- | --- |"]
    for (task, method), rs in sorted(groups.items()):
        accs = [100 * r["test_acc"] for r in rs]
        mean = statistics.mean(accs)
        ci = t95(len(accs)) * statistics.stdev(accs) / math.sqrt(len(accs)) if len(accs) > 1 else float("nan")
        sig = ""
        if rs[0].get("sigma") and method.startswith("dipnet"):
            names = list(rs[0]["sigma"])
            sig = ", ".join(f"{n}: {statistics.mean(r['sigma'][n] for r in rs):.3g}" for n in names)
        lines.append(f"| {task} | {method} | {len(accs)} | {mean:.2f} +- {ci:.2f} | {sig} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="mnist1d-mlp,mnist1d-cnn,mnist-mlp")
    ap.add_argument("--methods", default="erm,dipnet,noise-layers,input-noise")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--extra", default="{}", help='JSON {label: [spec, params]} for sweeps')
    ap.add_argument("--summary", action="store_true")
    args = ap.parse_args()
    if args.summary:
        print(summary())
        return
    run(args.tasks.split(","), args.methods.split(","), [int(s) for s in args.seeds.split(",")],
        {k: tuple(v) for k, v in json.loads(args.extra).items()})


if __name__ == "__main__":
    main()
