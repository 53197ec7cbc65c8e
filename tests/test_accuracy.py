"""Accuracy floors on real data, with few enough steps to stay fast (issue 2's acceptance).

Each floor is checked on the mean over seeds, since a 1000-example test set moves by about
+-1 point from seed to seed. Published: MNIST-1D reference CNN 94%, reference MLP 68%
(Greydanus & Kobak 2024, with 6000 Adam steps).
"""
from __future__ import annotations

from pathlib import Path
from statistics import mean

import pytest

from dipnet.engine import TrainConfig, train

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def accuracy(seeds, **cfg) -> float:
    return mean(train(TrainConfig(**cfg, seed=s, progress="none")).final["test_acc"] for s in seeds)


@pytest.mark.slow
def test_mnist1d_reference_cnn_reaches_90_percent():
    acc = accuracy((0, 1, 2), data="mnist1d", model="mnist1d-cnn", epochs=80, batch_size=100, lr=1e-2, weight_decay=0.05)
    assert acc >= 0.90, acc


@pytest.mark.slow
def test_mnist1d_reference_mlp_reaches_62_percent():
    acc = accuracy((0, 1), data="mnist1d", model="mnist1d-mlp", epochs=80, batch_size=100, lr=1e-2)
    assert acc >= 0.62, acc


def test_mlp_on_digits_reaches_95_percent():
    acc = accuracy((0,), data="digits", model="mlp", epochs=30, batch_size=64, lr=3e-3)
    assert acc >= 0.95, acc


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="../shared/data/mnist (the real MNIST test set) is not present")
def test_mlp_on_shared_mnist_split_reaches_94_percent():
    acc = accuracy((0,), data="mnist", model="mlp", epochs=8, batch_size=64, lr=1e-3, weight_decay=0.01,
                   model_kwargs={"widths": (512, 256)})
    assert acc >= 0.94, acc
