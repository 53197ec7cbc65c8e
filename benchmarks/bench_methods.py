"""Cost of one weight update of each comparison method against a plain SGD step (ERM) on the
same model and batch: thread CPU time (torch on one thread, so other processes on a shared
machine do not count), each method timed right after an ERM timing, median of the ratios."""
from __future__ import annotations

import time

import torch

from dipnet.data import DatasetInfo
from dipnet.methods import StepContext, build_method
from dipnet.models import build_model

from _timing import paired

CASES = [("mnist1d-mlp", (40,), 128), ("mnist1d-cnn", (40,), 128), ("mlp", (1, 28, 28), 128)]
# (label, spec, params, batches per update, target on the per-update time ratio to ERM); the RWP
# family draws its noise from the shared table on a CPU (noise="auto"), timed beside torch.randn.
# RWP's target is on a compute-bound model (RWP_CASE); on the small models its figure is reported
# (a weight perturbation is a pass over the parameters, large beside a tiny model's step).
METHODS = [
    ("sam", "sam", {}, 1, 2.2),
    ("asam", "asam", {}, 1, 2.2),
    ("rwp", "rwp", {}, 1, None),
    ("rwp (fresh randn noise)", "rwp", {"noise": "fresh"}, 1, None),
    ("arwp", "arwp", {}, 1, None),
    ("arwp (fresh randn noise)", "arwp", {"noise": "fresh"}, 1, None),
    ("mrwp", "mrwp", {}, 2, 2.2),
    ("marwp", "marwp", {}, 2, 2.2),
    ("icp", "icp", {"steps": 5}, 1, 7.0),
    ("input-noise", "input-noise", {}, 1, None),
    ("mixup", "mixup", {}, 1, None),
    ("cutmix", "cutmix", {}, 1, None),
    ("cutout", "cutout", {}, 1, None),
]
RWP_CASE = ("resnet20", (3, 32, 32), 64)
RWP_METHODS = [("rwp", "rwp", {}, 1, 1.15), ("arwp", "arwp", {}, 1, 1.15)]


def _runner(spec, params, model_name, shape, batch, per_update, device="cpu", wrap=None):
    """One weight update of method ``spec`` on a fixed batch (``per_update`` batches for m-RWP);
    ``wrap(model)``: what the method steps through (a compiled model, bench_compile.py)."""
    info = DatasetInfo("bench", tuple(shape), 10, tuple(map(str, range(10))), (0.0, 1.0))
    torch.manual_seed(0)
    model = build_model(model_name, info).to(device)
    method = build_method(spec, params)
    model = method.transform_model(model)
    opt = method.build_optimizer(model, torch.optim.SGD, lr=0.01, momentum=0.9)
    ctx = StepContext(epoch=3, epochs=4, bounds=(0.0, 1.0), batch_size=batch, progress=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    model.train()
    run = wrap(model) if wrap is not None else model

    def one_update() -> None:
        for _ in range(per_update):
            method.step(run, opt, x, y, ctx)

    return one_update


def bench(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    reps, n = (3, 10) if quick else (7, 30)
    cases = [(c, METHODS, n) for c in (CASES[:2] if quick else CASES)] + [(RWP_CASE, RWP_METHODS, 1 if quick else 3)]
    rows = []
    for (model_name, shape, batch), methods, n in cases:
        erm = _runner("erm", {}, model_name, shape, batch, 1)
        runners = [(label, _runner(spec, p, model_name, shape, batch, k), target) for label, spec, p, k, target in methods]
        fns = {"erm": erm, **{label: fn for label, fn, _ in runners}}
        t, ratio = paired(fns, "erm", reps, n, warmup=2, clock=time.thread_time)
        rows.append({"area": "methods", "name": f"erm update {model_name} batch {batch}", "value": t["erm"] * 1e3, "unit": "ms"})
        for label, _, target in runners:
            row = {"area": "methods", "name": f"{label} update {model_name} batch {batch}", "value": t[label] * 1e3,
                   "unit": "ms", "baseline_name": f"erm update {model_name} batch {batch}", "ratio": ratio[label]}
            if target is not None:
                row.update(target=f"<= {target}x", ok=ratio[label] <= target)
            rows.append(row)
    return rows


if __name__ == "__main__":
    for r in bench(quick=False):
        extra = f"  ratio {r['ratio']:.2f} {r.get('target', '')} {'ok' if r.get('ok', True) else 'FAIL'}" if "ratio" in r else ""
        print(f"{r['name']:45s} {r['value']:8.3f} {r['unit']}{extra}")
