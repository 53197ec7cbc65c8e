"""Training throughput (examples/s) of the reference models through the engine, and the
engine's overhead against a bare hand-written loop on the same model and data."""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from dipnet.data import Dataset, DatasetInfo
from dipnet.engine import TrainConfig, train
from dipnet.models import build_model

CASES = [
    ("mnist1d-mlp", (40,), 4000, 100),
    ("mnist1d-cnn", (40,), 4000, 100),
    ("mlp", (1, 28, 28), 4000, 128),
    ("cnn2d", (1, 28, 28), 2000, 128),
    ("resnet20", (3, 32, 32), 256, 64),
]


def _dataset(shape, n) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, *shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    info = DatasetInfo("bench", tuple(shape), 10, tuple(map(str, range(10))), (0.0, 1.0))
    return Dataset(x, y, x[:10], y[:10], info)


def _engine_epoch(name, ds, batch) -> float:
    """Seconds the engine spends in the step loop of one epoch (setup and evaluation excluded)."""
    cfg = TrainConfig(data="bench", model=name, epochs=1, batch_size=batch, optimizer="sgd", lr=0.01,
                      schedule="constant", progress="none", train_eval_max=1,
                      threads=torch.get_num_threads())  # the bare loop's threads, not the policy's choice
    return train(cfg, dataset=ds).history[0]["train_s"]


def _bare_epoch(name, ds, batch) -> float:
    torch.manual_seed(0)
    model = build_model(name, ds.info)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    perm = torch.randperm(ds.x_train.shape[0])
    t = time.perf_counter()
    model.train()
    for i in range(0, len(perm), batch):
        idx = perm[i : i + batch]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx]).backward()
        opt.step()
    return time.perf_counter() - t


def bench(quick: bool = False) -> list[dict]:
    reps = 2 if quick else 5
    rows = []
    for name, shape, n, batch in CASES:
        if quick:
            n = max(batch * 4, n // 8)
        ds = _dataset(shape, n)
        _bare_epoch(name, ds, batch)
        engine, bare = [], []
        for _ in range(reps):  # interleaved, medians
            engine.append(_engine_epoch(name, ds, batch))
            bare.append(_bare_epoch(name, ds, batch))
        e, b = statistics.median(engine), statistics.median(bare)
        rows.append({"area": "engine", "name": f"train {name} {tuple(shape)} batch {batch}", "value": n / e,
                     "unit": "examples/s"})
        rows.append({"area": "engine", "name": f"loop overhead {name}", "value": e, "unit": "s/epoch",
                     "baseline_name": "bare PyTorch loop", "ratio": e / b, "target": "<= 1.10x", "ok": e / b <= 1.10})
    return rows
