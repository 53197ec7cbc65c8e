"""DIPNet and the weight-perturbation methods under torch.compile (issue 25): one training step of
compiled DIPNet (m = 1 and 4) against compiled ERM, eager ERM and eager DIPNet beside them, on
the MNIST MLP, ResNet-20 and the ViT at batch 64 and 128; compiled SAM and m-RWP against compiled
ERM; and the compile time of each (the first two steps over a steady step, inductor's FX-graph
cache off, so a cold compile). Torch on 2 threads, wall clock, paired timings (each runner right
after its baseline) so a shared machine's drift cancels in the ratios.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from dipnet.compiling import compile_model

from _timing import paired
from bench_methods import _runner as methods_runner

CASES = [("mlp", (1, 28, 28)), ("resnet20", (3, 32, 32)), ("vit", (3, 32, 32))]
# Targets on the ratio to compiled ERM (issue 25): m = 1 per model, m = 4 everywhere, SAM.
DIPNET_TARGET = {"mlp": 1.25, "resnet20": 1.10, "vit": 1.10}
M4_TARGET, SAM_TARGET = 4.0, 2.05


def _runner(spec: str, params: dict, model_name: str, shape: tuple[int, ...], batch: int, compiled: bool,
            per_update: int = 1, device: torch.device | str = "cpu") -> tuple[Callable[[], None], float]:
    """One weight update of ``spec`` on a fixed batch (bench_methods.py's), through
    :func:`~dipnet.compiling.compile_model` when ``compiled``, and then the compile time: the
    first two updates' time over two steady ones."""
    wrap = (lambda model: compile_model(model, fresh=False, dynamic=False)) if compiled else None
    update = methods_runner(spec, params, model_name, tuple(shape), batch, per_update, device, wrap=wrap)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    t = time.perf_counter()
    update()
    update()
    sync()
    first = time.perf_counter() - t
    t = time.perf_counter()
    update()
    update()
    sync()
    return update, max(first - (time.perf_counter() - t), 0.0) if compiled else 0.0


def _rows(model_name: str, batch: int, runners: dict, t: dict, ratio: dict, targets: dict) -> list[dict]:
    rows = []
    for label, (_, compile_s) in runners.items():
        row = {"area": "compile", "name": f"{label} step {model_name} batch {batch}", "value": t[label] * 1e3,
               "unit": "ms"}
        if label != "compiled erm":
            row.update(baseline_name=f"compiled erm step {model_name} batch {batch}", ratio=ratio[label])
        if label in targets:
            row.update(target=f"<= {targets[label]}x", ok=ratio[label] <= targets[label])
        rows.append(row)
        if compile_s:
            rows.append({"area": "compile", "name": f"{label} compile time {model_name} batch {batch}",
                         "value": compile_s, "unit": "s"})
    return rows


def bench(quick: bool = False) -> list[dict]:
    import torch._inductor.config as inductor

    torch.set_num_threads(2)
    reps, n = (3, 3) if quick else (7, 10)
    rows = []
    with inductor.patch(fx_graph_cache=False):
        for model_name, shape in CASES[:1] if quick else CASES:
            for batch in (64,) if quick else (64, 128):
                torch.compiler.reset()
                runners = {
                    "compiled erm": _runner("erm", {}, model_name, shape, batch, True),
                    "compiled dipnet m=1": _runner("dipnet", {}, model_name, shape, batch, True),
                    "compiled dipnet m=4": _runner("dipnet", {"trajectories": 4}, model_name, shape, batch, True),
                    "eager erm": _runner("erm", {}, model_name, shape, batch, False),
                    "eager dipnet m=1": _runner("dipnet", {}, model_name, shape, batch, False),
                }
                if batch == 64 and model_name != "vit":
                    runners["compiled sam"] = _runner("sam", {}, model_name, shape, batch, True)
                    runners["compiled mrwp"] = _runner("mrwp", {}, model_name, shape, batch, True, per_update=2)
                t, ratio = paired({k: fn for k, (fn, _) in runners.items()}, "compiled erm", reps, n, warmup=1)
                targets = {"compiled dipnet m=1": DIPNET_TARGET[model_name], "compiled dipnet m=4": M4_TARGET,
                           "compiled sam": SAM_TARGET}
                rows += _rows(model_name, batch, runners, t, ratio, targets)
    torch.compiler.reset()
    return rows


if __name__ == "__main__":
    import sys

    for r in bench(quick="--quick" in sys.argv):
        extra = f"  ratio {r['ratio']:.2f} {r.get('target', '')} {'ok' if r.get('ok', True) else 'FAIL'}" if "ratio" in r else ""
        print(f"{r['name']:55s} {r['value']:9.3f} {r['unit']}{extra}", flush=True)
