"""Accuracy floors on real data, on the validation split (nothing here looks at test accuracy).

Each floor is the mean validation accuracy over seeds measured for these configs (2026-11-29,
after the validation split took 1/8 of the training set) minus a margin of about 2.5 points,
since a 500-example validation set moves by about +-1.5 points from seed to seed. Published
(test, full training set): MNIST-1D reference CNN 94%, reference MLP 68% (Greydanus & Kobak 2024).
Measured: CNN 88.8%, MLP 61.0% (mean of 3 and 2 seeds), digits MLP 98.3%, shared-MNIST MLP 94.6%.
"""
from __future__ import annotations

from pathlib import Path
from statistics import mean

import pytest

from dipnet.engine import TrainConfig, train

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def accuracy(seeds, **cfg) -> float:
    return mean(train(TrainConfig(**cfg, seed=s, progress="none")).final["val_acc"] for s in seeds)


@pytest.mark.slow
def test_mnist1d_reference_cnn_reaches_86_percent():
    acc = accuracy((0, 1, 2), data="mnist1d", model="mnist1d-cnn", epochs=80, batch_size=100, lr=1e-2, weight_decay=0.05)
    assert acc >= 0.86, acc


@pytest.mark.slow
def test_mnist1d_reference_mlp_reaches_58_percent():
    acc = accuracy((0, 1), data="mnist1d", model="mnist1d-mlp", epochs=80, batch_size=100, lr=1e-2)
    assert acc >= 0.58, acc


def test_mlp_on_digits_reaches_95_percent():
    acc = accuracy((0,), data="digits", model="mlp", epochs=30, batch_size=64, lr=3e-3)
    assert acc >= 0.95, acc


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="../shared/data/mnist (the real MNIST test set) is not present")
def test_mlp_on_shared_mnist_split_reaches_92_percent():
    acc = accuracy((0,), data="mnist", model="mlp", epochs=8, batch_size=64, lr=1e-3, weight_decay=0.01,
                   model_kwargs={"widths": (512, 256)})
    assert acc >= 0.92, acc


# ---------------------------------------------------------------- every method at its defaults

FLOORS = Path(__file__).resolve().parents[1] / "docs" / "results" / "floors" / "runs.jsonl.gz"
MARGIN_POINTS = 4.0  # at least this far below the measured mean, and at least 3 seed sds


def _floors() -> dict[str, tuple[dict, float, float]]:
    """Per method of suites/floors.toml: its config, the measured mean validation accuracy over
    seeds 0-2 and the floor (mean minus max(4 points, 3 sd))."""
    import gzip
    import json
    from statistics import stdev

    if not FLOORS.exists():
        return {}
    rows = [json.loads(line) for line in gzip.open(FLOORS, "rt") if line.strip()][1:]
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        runs = [r for r in rows if r["method"] == method and r["status"] == "done"]
        vals = [r["results"]["final"]["val_acc"] for r in runs]
        m = mean(vals)
        out[method] = (runs[0]["spec"]["config"], m, m - max(MARGIN_POINTS / 100, 3 * stdev(vals)))
    return out


@pytest.mark.parametrize("method", list(_floors()) or ["(floors suite not exported)"])
def test_every_method_at_its_defaults_reaches_its_floor_on_validation(method):
    """A seed the floors suite did not use (3) must reach the measured level minus the margin."""
    floors = _floors()
    if not floors:
        pytest.fail(f"{FLOORS} is missing: run suites/floors.toml and export it")
    config, measured, floor = floors[method]
    cfg = {k: v for k, v in config.items() if k not in ("seed", "out", "progress")}
    acc = train(TrainConfig(**cfg, seed=3, progress="none")).final["val_acc"]
    assert acc >= floor, f"{method}: validation {100 * acc:.1f}% < floor {100 * floor:.1f}% (measured {100 * measured:.1f}%)"
