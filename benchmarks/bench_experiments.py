"""Suite runner overhead: `run_suite` (store, run records, checkpoints dir bookkeeping) against
calling the engine's `train` directly on the same runs; store bookkeeping per run; report time."""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from dipnet.data import DATASETS, Dataset, DatasetInfo, register_dataset
from dipnet.engine import TrainConfig, train
from dipnet.experiments import RunStore, parse_suite, run_suite, write_report
from dipnet.models import MODELS, register_model

SUITE = """
name = "bench"
seeds = {seeds}
[train]
epochs = 8
batch_size = 64
lr = 0.01
[tasks.toy]
data = "bench-exp-toy"
model = "bench-exp-mlp"
[methods.erm]
[methods.erm-wd]
method = "erm"
weight_decay = 0.01
"""


def _toy() -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 20, generator=g)
    y = (x[:, :5].sum(1) > 0).long() + (x[:, 5] > 0.5).long()
    info = DatasetInfo("bench-exp-toy", (20,), 3, ("a", "b", "c"), (-10.0, 10.0))
    return Dataset(x[:2000], y[:2000], x[2000:], y[2000:], info)


def _register() -> None:
    if "bench-exp-toy" not in DATASETS:
        register_dataset("bench-exp-toy", "benchmark only")(_toy)
    if "bench-exp-mlp" not in MODELS:
        register_model("bench-exp-mlp", "benchmark only")(
            lambda info: nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, info.num_classes)))


def bench(quick: bool = False) -> list[dict]:
    _register()
    seeds = 2 if quick else 3
    reps = 1 if quick else 3
    suite_text = SUITE.format(seeds=seeds)
    direct, suite_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):  # interleaved: direct engine calls, then the same runs through run_suite
            suite = parse_suite(suite_text, "bench.toml")
            specs = suite.expand()
            t = time.perf_counter()
            for i, spec in enumerate(specs):
                train(TrainConfig.from_dict({**spec.config, "out": f"{tmp}/direct{rep}/{i}", "progress": "none"}))
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            run_suite(suite, Path(tmp) / f"runs{rep}.sqlite")
            suite_times.append(time.perf_counter() - t)
        n = len(specs)
        d, s = statistics.median(direct), statistics.median(suite_times)

        store_path = Path(tmp) / "book.sqlite"
        big = parse_suite(SUITE.format(seeds=15), "bench.toml").expand()
        history = [{"epoch": e, "test_acc": 0.5, "train_loss": 1.0, "method": {"sigma": [0.1] * 4}} for e in range(30)]
        with RunStore(store_path) as store:
            store.add(big)
            t = time.perf_counter()
            for spec in big:
                store.claim(spec.key)
                store.finish(spec.key, {"final": {"test_acc": 0.5, "example_grads": 1000, "gap": 0.1}, "history": history})
            book = (time.perf_counter() - t) / len(big)
        t = time.perf_counter()
        write_report(store_path, Path(tmp) / "report")
        report_s = time.perf_counter() - t

    return [
        {"area": "experiments", "name": f"engine train, {n} tiny runs called directly", "value": d, "unit": "s"},
        {"area": "experiments", "name": f"run_suite, same {n} runs (store, records)", "value": s, "unit": "s",
         "baseline_name": "engine train called directly", "ratio": s / d, "target": "<= 1.25x", "ok": s / d <= 1.25},
        {"area": "experiments", "name": "store bookkeeping per run (claim + finish, 30-epoch history)",
         "value": book * 1e3, "unit": "ms"},
        {"area": "experiments", "name": f"write_report for {len(big)} runs (2 methods, figures)", "value": report_s,
         "unit": "s"},
    ]


if __name__ == "__main__":
    for row in bench():
        print(row)
