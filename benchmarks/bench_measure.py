"""Speed of the instruments: jacobian_norm on the MNIST MLP against a per-sample
torch.autograd.functional.jacobian loop and against torch.func vmap(jacrev), points per second,
and the forward-mode estimator's speed/accuracy trade-off; region transitions and Lipschitz
bounds throughput."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from dipnet.measure import jacobian_norm, lipschitz_bounds, random_anchors, region_transitions

from _timing import interleaved


def mnist_mlp() -> nn.Module:
    try:
        from dipnet.data import DatasetInfo
        from dipnet.models import build_model

        info = DatasetInfo("mnist", (1, 28, 28), 10, tuple(map(str, range(10))), (0.0, 1.0))
        torch.manual_seed(0)
        return build_model("mlp", info).eval(), "zoo mlp"
    except Exception:  # the model zoo is not there: the same shape by hand
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                             nn.Linear(256, 10)).eval(), "784-256-256-10 ReLU MLP"


def loop_jacobian_norm(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    f = lambda z: torch.softmax(model(z.unsqueeze(0)), -1)[0]
    return torch.stack([torch.autograd.functional.jacobian(f, xi).flatten().norm() for xi in x])


def vmap_jacobian_norm(model: nn.Module, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    f = lambda z: torch.softmax(model(z.unsqueeze(0)), -1)[0]
    jac = torch.func.vmap(torch.func.jacrev(f), chunk_size=chunk)(x)
    return jac.flatten(1).norm(dim=1)


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    model, desc = mnist_mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    n = 128 if quick else 512
    n_loop = 16 if quick else 64
    reps = 3 if quick else 7
    x = torch.rand(n, 1, 28, 28)
    ours = jacobian_norm(model, x)
    assert torch.allclose(ours[:8], loop_jacobian_norm(model, x[:8]), rtol=1e-4)
    assert torch.allclose(ours, vmap_jacobian_norm(model, x), rtol=1e-4)
    t = interleaved({
        "ours": lambda: jacobian_norm(model, x),
        "vmap": lambda: vmap_jacobian_norm(model, x),
        "loop": lambda: loop_jacobian_norm(model, x[:n_loop]),
    }, reps)
    ours_pp, vmap_pp, loop_pp = t["ours"] / n, t["vmap"] / n, t["loop"] / n_loop
    rows = [
        {"area": "measure", "name": f"vmap(jacrev), {desc}, {n} points", "value": 1 / vmap_pp, "unit": "points/s"},
        {"area": "measure", "name": f"per-sample autograd.functional.jacobian loop, {desc}", "value": 1 / loop_pp,
         "unit": "points/s"},
        {"area": "measure", "name": f"jacobian_norm exact, {desc}, {n} points", "value": 1 / ours_pp, "unit": "points/s"},
        {"area": "measure", "name": "jacobian_norm exact vs per-sample autograd.functional.jacobian loop",
         "value": ours_pp * 1e3, "unit": "ms/point", "baseline_name": "per-sample jacobian loop",
         "ratio": ours_pp / loop_pp, "target": "<= 0.10x", "ok": ours_pp / loop_pp <= 0.10},
        {"area": "measure", "name": "jacobian_norm exact vs torch.func vmap(jacrev)",
         "value": ours_pp * 1e3, "unit": "ms/point", "baseline_name": "vmap(jacrev)",
         "ratio": ours_pp / vmap_pp, "target": "<= 1.00x", "ok": ours_pp / vmap_pp <= 1.0},
    ]
    exact = ours
    for samples in (1, 4, 16, 64):
        jacobian_norm(model, x[:8], method="estimate", samples=samples)  # warm-up
        est_t = _median_time(lambda: jacobian_norm(model, x, method="estimate", samples=samples), max(1, reps // 2))
        est = jacobian_norm(model, x, method="estimate", samples=samples)
        rel = float(((est - exact).abs() / exact).mean())
        rows.append({"area": "measure", "name": f"jacobian_norm estimate, {samples} probes: mean relative error {rel:.3f}",
                     "value": n / est_t, "unit": "points/s"})
    anchors = random_anchors(x, 2 if quick else 4, seed=0)
    points = 1000
    rt = _median_time(lambda: region_transitions(model, anchors, points), max(1, reps // 2))
    rows.append({"area": "measure", "name": f"region_transitions, {points} points per circle",
                 "value": anchors.shape[0] * points / rt, "unit": "points/s"})
    lt = _median_time(lambda: lipschitz_bounds(model, x[:64]), 1)
    rows.append({"area": "measure", "name": "lipschitz_bounds (100 power iterations per layer, 64 points)",
                 "value": lt, "unit": "s"})
    return rows


if __name__ == "__main__":
    for row in bench(quick=True):
        print(row)
