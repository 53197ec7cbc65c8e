"""Model registry (:data:`MODELS`): ``build_model(name, info, **kwargs)`` returns a plain ``nn.Module``.

Before a model is built, it is built on PyTorch's ``meta`` device (shapes only, no memory) and its
size estimated: weights, gradients and two optimizer moments in float32. A model whose estimate
exceeds the memory this machine has available is refused with the estimate, instead of taking
the machine's memory until the kernel kills the process.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..data.base import DatasetInfo
from ..errors import ConfigError
from ..registry import Registry
from ..schema import available_memory

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and the training recipe ``dipnet train`` follows for the
    options not given (optimizer, lr, schedule, batch size, epochs, weight decay)."""

    builder: Builder
    recipe: dict[str, Any] = field(default_factory=dict)


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(name: str, description: str, recipe: dict[str, Any] | None = None) -> Callable[[Builder], Builder]:
    """Register ``builder(info: DatasetInfo, **kwargs) -> nn.Module`` under ``name``, with its
    training ``recipe``."""

    def deco(fn: Builder) -> Builder:
        MODELS.add(name, ModelEntry(fn, dict(recipe or {})), description)
        return fn

    return deco


def model_recipe(name: str) -> dict[str, Any]:
    """The documented training recipe of a registered model (docs/models.md, "Recipes")."""
    return dict(MODELS.get(name).recipe)


def model_options(name: str) -> list[str]:
    """The options ``build_model(name, info, ...)`` takes."""
    params = inspect.signature(MODELS.get(name).builder).parameters.values()
    return [p.name for p in params if p.name != "info" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def build_model(name: str, info: DatasetInfo, **kwargs: Any) -> nn.Module:
    """Build a registered model with defaults fitted to ``info`` (input shape, classes)."""
    builder = MODELS.get(name).builder
    try:
        with torch.device("meta"):
            probe = builder(info, **kwargs)
        need = estimated_bytes(probe)
        available = available_memory()
        if available is not None and need > available:
            params = sum(p.numel() for p in probe.parameters())
            raise ConfigError(f"model {name!r} with {kwargs or 'its defaults'} has {params:,} parameters: about "
                              f"{need / 2**30:.1f} GiB for weights, gradients and optimizer state, more than the "
                              f"{available / 2**30:.1f} GiB this machine has free; choose a smaller model")
        del probe
        return builder(info, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None


def estimated_bytes(model: nn.Module) -> int:
    """Bytes to train ``model``: 4 float32 copies of its parameters (weights, gradients, two
    optimizer moments) and its buffers (activations come on top and depend on the batch)."""
    return 16 * sum(p.numel() for p in model.parameters()) + 4 * sum(b.numel() for b in model.buffers())
