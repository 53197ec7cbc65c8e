"""Cost of one weight update of each comparison method against a plain SGD step (ERM) on the
same model and batch, measured interleaved in the same run (medians of thread CPU time, with
torch on one thread, so that other processes on a shared machine do not distort the ratios)."""
from __future__ import annotations

import statistics
import time

import torch

from dipnet.data import DatasetInfo
from dipnet.engine.method import StepContext, build_method
from dipnet.models import build_model

CASES = [("mnist1d-mlp", (40,), 128), ("mnist1d-cnn", (40,), 128), ("mlp", (1, 28, 28), 128)]
# (label, spec, params, batches per update, target on the per-update time ratio to ERM); the RWP
# family draws its noise from the shared table on a CPU (noise="auto"), timed beside torch.randn
METHODS = [
    ("sam", "sam", {}, 1, 2.2),
    ("asam", "asam", {}, 1, 2.2),
    ("rwp", "rwp", {}, 1, 1.15),
    ("rwp (fresh randn noise)", "rwp", {"noise": "fresh"}, 1, None),
    ("arwp", "arwp", {}, 1, 1.15),
    ("arwp (fresh randn noise)", "arwp", {"noise": "fresh"}, 1, None),
    ("mrwp", "mrwp", {}, 2, 2.2),
    ("marwp", "marwp", {}, 2, 2.2),
    ("icp", "icp", {"steps": 5}, 1, 7.0),
    ("input-noise", "input-noise", {}, 1, None),
    ("mixup", "mixup", {}, 1, None),
    ("cutmix", "cutmix", {}, 1, None),
    ("cutout", "cutout", {}, 1, None),
]


def _runner(spec, params, model_name, shape, batch, per_update):
    info = DatasetInfo("bench", tuple(shape), 10, tuple(map(str, range(10))), (0.0, 1.0))
    torch.manual_seed(0)
    model = build_model(model_name, info)
    method = build_method(spec, params)
    model = method.transform_model(model)
    opt = method.build_optimizer(model.parameters(), torch.optim.SGD, lr=0.01, momentum=0.9)
    ctx = StepContext(epoch=3, epochs=4, bounds=(0.0, 1.0), batch_size=batch, progress=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *shape, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    model.train()

    def one_update() -> None:
        for _ in range(per_update):
            xb, yb = method.transform_batch(model, x, y, ctx)

            def closure():
                loss = method.loss(model, xb, yb, ctx)
                loss.backward()
                return loss.detach()

            method.update(model, opt, closure, ctx)

    return one_update


def _time(fn, n: int) -> float:
    """CPU seconds of this thread per call (torch runs single-threaded here), robust on a shared machine."""
    t = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t) / n


def bench(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    reps, n = (3, 10) if quick else (7, 30)
    cases = CASES[:2] if quick else CASES
    rows = []
    for model_name, shape, batch in cases:
        erm = _runner("erm", {}, model_name, shape, batch, 1)
        runners = [(label, _runner(spec, p, model_name, shape, batch, k), target) for label, spec, p, k, target in METHODS]
        for fn in [erm] + [r for _, r, _ in runners]:
            _time(fn, 3)
        times = {spec: [] for spec, _, _ in runners}
        base = []
        for _ in range(reps):  # interleaved repetitions, medians
            base.append(_time(erm, n))
            for spec, fn, _ in runners:
                times[spec].append(_time(fn, n))
        b = statistics.median(base)
        rows.append({"area": "methods", "name": f"erm update {model_name} batch {batch}", "value": b * 1e3, "unit": "ms"})
        for spec, _, target in runners:
            v = statistics.median(times[spec])
            row = {"area": "methods", "name": f"{spec} update {model_name} batch {batch}", "value": v * 1e3, "unit": "ms",
                   "baseline_name": f"erm update {model_name} batch {batch}", "ratio": v / b}
            if target is not None:
                row.update(target=f"<= {target}x", ok=v / b <= target)
            rows.append(row)
    return rows


if __name__ == "__main__":
    for r in bench(quick=False):
        extra = f"  ratio {r['ratio']:.2f} {r.get('target', '')} {'ok' if r.get('ok', True) else 'FAIL'}" if "ratio" in r else ""
        print(f"{r['name']:45s} {r['value']:8.3f} {r['unit']}{extra}")
