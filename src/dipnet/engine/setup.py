"""Turning a :class:`TrainConfig` into the objects a run needs: device, seeded model, method, optimizer."""
from __future__ import annotations

import random
from typing import Any, Callable, Union

import numpy as np
import torch
from torch import nn

from ..data import Dataset, DatasetInfo, load_for_run
from ..errors import ConfigError
from ..methods import Method, build_method
from ..models import build_model
from ..schema import check_type
from .config import TrainConfig

ModelArg = Union[nn.Module, Callable[[DatasetInfo], nn.Module], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no CUDA GPU is available; use --device cpu")
    return device


def build_optimizer(cfg: TrainConfig, model: nn.Module, method: Method) -> torch.optim.Optimizer:
    """The config's base optimizer, as the method builds it over its parameter groups."""
    if cfg.optimizer == "sgd":
        return method.build_optimizer(model, torch.optim.SGD, lr=cfg.lr, momentum=cfg.momentum,
                                      weight_decay=cfg.weight_decay)
    base = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return method.build_optimizer(model, base, lr=cfg.lr, weight_decay=cfg.weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the training examples in ``epoch`` (-1: the training-evaluation subset)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(n, generator=gen)


def prepare(cfg: TrainConfig, dataset: Dataset | None = None, model: ModelArg = None) -> tuple[Dataset, nn.Module, Method]:
    """Dataset, seeded model (with the method's model transform applied and checked) and method.

    ``model`` may be a ready module or a factory ``info -> module``, called after seeding so that
    its initialization is reproducible.
    """
    check_type(dataset, (Dataset, None), "dataset", "load one with dipnet.load_dataset(name), or name it in the config")
    check_type(model, (nn.Module, callable, None), "model", "pass a module, a function info -> module, or None for cfg.model")
    method = build_method(cfg.method, cfg.method_params)
    if dataset is None:
        dataset = load_for_run(cfg.data, cfg.data_kwargs, cfg.seed)
    else:
        dataset.check_finite()  # a user's tensors may have changed since the Dataset was built
    seed_everything(cfg.seed)
    if model is None:
        model = build_model(cfg.model, dataset.info, **cfg.model_kwargs)
    elif not isinstance(model, nn.Module):
        model = model(dataset.info)
    model = method.transform_model(model)
    return dataset, model, method
