"""Small synthetic tasks for fast tests: two interleaved spirals, or labels of a random teacher MLP."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from ..schema import Limits, check, check_memory
from .base import Dataset, DatasetInfo, register_dataset
from ._util import strict_options


def two_spirals(n: int, noise: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(n) % 2
    t = torch.rand(n, generator=gen) * 3 * np.pi + 0.5
    sign = 1 - 2 * y.float()
    x = torch.stack([sign * t * torch.cos(t), sign * t * torch.sin(t)], 1) / (3 * np.pi + 0.5)
    return x + noise * torch.randn(n, 2, generator=gen), y


def teacher(n: int, dim: int, classes: int, gen: torch.Generator, weights: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    w1, w2 = weights
    x = torch.randn(n, dim, generator=gen)
    return x, (torch.tanh(x @ w1) @ w2).argmax(1)


@register_dataset("synthetic", "tiny synthetic task for tests: task=spirals (2-D, 2 classes) or teacher (random teacher MLP labels)")
@strict_options("synthetic")
def load_synthetic(task: str = "teacher", n_train: int = 512, n_test: int = 256, dim: int = 10,
                   classes: int = 3, noise: float = 0.05, seed: int = 0) -> Dataset:
    n_train, n_test, dim, classes = (check(v, int, f"synthetic.{k}", Limits(ge=low)) for k, v, low in
                                      (("n_train", n_train, 1), ("n_test", n_test, 1), ("dim", dim, 1), ("classes", classes, 2)))
    width = 2 if task == "spirals" else dim
    check_memory(4 * (n_train + n_test + 32) * (width + 32), f"synthetic data of {n_train + n_test:,} examples x {width} "
                 "features", "lower n_train, n_test or dim")
    gen = torch.Generator().manual_seed(seed)
    if task == "spirals":
        x, y = two_spirals(n_train + n_test, noise, gen)
        dim, classes = 2, 2
    elif task == "teacher":
        weights = (torch.randn(dim, 32, generator=gen), torch.randn(32, classes, generator=gen))
        x, y = teacher(n_train + n_test, dim, classes, gen, weights)
    else:
        raise ConfigError(f"unknown synthetic task {task!r}; choose spirals or teacher")
    info = DatasetInfo(
        name="synthetic",
        input_shape=(dim,),
        num_classes=classes,
        class_names=tuple(str(i) for i in range(classes)),
        bounds=None,
        normalization={"kind": "none"},
        extra={"task": task, "seed": seed},
    )
    return Dataset(x[:n_train].float(), y[:n_train], x[n_train:].float(), y[n_train:], info)
