"""Turning a :class:`TrainConfig` into the objects a run needs: device, seeded model, method, optimizer."""
from __future__ import annotations

import random
from typing import Any, Callable, Union

import numpy as np
import torch
from torch import nn

from ..data import Dataset, DatasetInfo, load_dataset
from ..errors import ConfigError
from ..methods import Method, build_method
from ..models import build_model
from ..projection import projection_parameters
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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices and kernels only, not on biases, norms or 1-D scales (one
    group when there is no weight decay: each group costs the optimizer its own kernels per step).
    DIPNet's log-sigmas get a group of their own: no weight decay, and ``perturb=False``, so that
    weight-perturbation methods (SAM, RWP) perturb only the model's own weights."""
    sigmas = {id(p) for p in projection_parameters(model)}
    own = [p for p in model.parameters() if p.requires_grad and id(p) not in sigmas]
    if weight_decay == 0:
        groups = [{"params": own, "weight_decay": 0.0}]
    else:
        groups = [{"params": [p for p in own if p.ndim > 1], "weight_decay": weight_decay},
                  {"params": [p for p in own if p.ndim <= 1], "weight_decay": 0.0}]
    groups.append({"params": [p for p in model.parameters() if id(p) in sigmas and p.requires_grad],
                   "weight_decay": 0.0, "perturb": False})
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: TrainConfig, model: nn.Module, method: Method) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    if cfg.optimizer == "sgd":
        return method.build_optimizer(groups, torch.optim.SGD, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    base = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return method.build_optimizer(groups, base, lr=cfg.lr, weight_decay=cfg.weight_decay)


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
        dataset = load_dataset(cfg.data, **cfg.data_kwargs)
    else:
        dataset.check_finite()  # a user's tensors may have changed since the Dataset was built
    seed_everything(cfg.seed)
    if model is None:
        model = build_model(cfg.model, dataset.info, **cfg.model_kwargs)
    elif not isinstance(model, nn.Module):
        model = model(dataset.info)
    model = method.transform_model(model)
    return dataset, model, method
