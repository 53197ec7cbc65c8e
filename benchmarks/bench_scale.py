"""Scale-out on this machine: training examples/s of `dipnet train --nproc 2` (DDP, 2 gloo
processes of 1 thread) over one process (all cores' threads), and the wall time per run of a
suite of short runs on Ray (`--executor ray`, 1 CPU a run) over the local process pool (2
workers of 1 thread), Ray's start-up measured apart (a fixed cost per suite, not per run)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
name = "bench-scale"
seeds = {seeds}
[train]
epochs = 2
batch_size = 64
lr = 1e-2
data_kwargs = {{ n_train = 512, n_test = 128 }}
[tasks.t]
data = "synthetic"
model = "mlp"
[methods.erm]
[methods.dipnet]
"""


def _train_examples_per_s(model: str, nproc: int, out: Path, epochs: int, threads: int | None = None) -> float:
    """Examples/s of the training steps (evaluation excluded) after the first epoch (warm-up)."""
    cmd = [sys.executable, "-m", "dipnet", "train", "--data", "mnist1d", "--model", model, "--epochs", str(epochs),
           "--batch-size", "128", "--progress", "none", "--train-eval-max", "500", "--out", str(out),
           "--overwrite", "--nproc", str(nproc)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=600)
    hist = json.loads((out / "run.json").read_text())["history"]
    per_epoch = hist[1]["example_grads"] - hist[0]["example_grads"]  # ERM: one gradient per example
    return per_epoch / statistics.median(h["train_s"] for h in hist[1:])


def _ddp(quick: bool) -> list[dict]:
    rows = []
    reps, epochs = (1, 3) if quick else (3, 4)
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("mnist1d-mlp", "mnist1d-cnn"):
            one, single, two = [], [], []
            for _ in range(reps):  # interleaved, so that load on the shared machine hits all alike
                one.append(_train_examples_per_s(model, 1, Path(tmp) / "one", epochs))
                single.append(_train_examples_per_s(model, 1, Path(tmp) / "one", epochs, threads=1))
                two.append(_train_examples_per_s(model, 2, Path(tmp) / "two", epochs))
            base, base1, value = statistics.median(one), statistics.median(single), statistics.median(two)
            rows.append({"area": "scale", "name": f"{model} ERM examples/s, 1 process ({os.cpu_count()} threads)",
                         "value": base, "unit": "examples/s"})
            rows.append({"area": "scale", "name": f"{model} ERM examples/s, 1 process (1 thread)",
                         "value": base1, "unit": "examples/s"})
            rows.append({"area": "scale", "name": f"{model} ERM examples/s, DDP 2 processes (gloo, 1 thread each)",
                         "value": value, "unit": "examples/s", "baseline_name": "1 process, all threads",
                         "ratio": value / base})
            rows.append({"area": "scale", "name": f"{model} DDP 2 processes over 1 process of 1 thread",
                         "value": value / base1, "unit": "x", "baseline_name": "1 process, 1 thread",
                         "ratio": value / base1})
    return rows


def _ray(quick: bool) -> list[dict]:
    import ray

    from dipnet.experiments import RayExecutor, parse_suite, run_suite

    seeds = 2 if quick else 4
    suite = parse_suite(SUITE.format(seeds=seeds), "bench-scale.toml")
    n = len(suite.expand())
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    start_s = time.perf_counter() - t
    pool_s, ray_s = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for rep in range(1 if quick else 2):
                t = time.perf_counter()
                run_suite(suite, Path(tmp) / f"pool{rep}.sqlite", workers=2, threads=1)
                pool_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                run_suite(suite, Path(tmp) / f"ray{rep}.sqlite", executor=RayExecutor(cpus_per_run=1))
                ray_s.append(time.perf_counter() - t)
    finally:
        ray.shutdown()
    pool, on_ray = statistics.median(pool_s) / n, statistics.median(ray_s) / n
    ratio = on_ray / pool
    return [
        {"area": "scale", "name": f"suite of {n} short runs, local pool (2 workers): wall per run",
         "value": pool, "unit": "s"},
        {"area": "scale", "name": f"suite of {n} short runs, Ray (1 CPU a run): wall per run",
         "value": on_ray, "unit": "s", "baseline_name": "local pool", "ratio": ratio, "target": "<= 1.10x",
         "ok": ratio <= 1.10},
        {"area": "scale", "name": "local Ray start-up (ray.init, 2 CPUs; once per suite)", "value": start_s, "unit": "s"},
        {"area": "scale", "name": f"suite of {n} short runs, Ray with its start-up spread over the runs: wall per run",
         "value": on_ray + start_s / n, "unit": "s", "baseline_name": "local pool", "ratio": (on_ray + start_s / n) / pool},
    ]


def bench(quick: bool = False) -> list[dict]:
    return _ddp(quick) + _ray(quick)


if __name__ == "__main__":
    for row in bench(quick="--quick" in sys.argv):
        print(row)
