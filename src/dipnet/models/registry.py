"""Model registry: ``build_model(name, info, **kwargs)`` returns a plain ``nn.Module``.

Before a model is built, it is built on PyTorch's ``meta`` device (shapes only, no memory) and its
size estimated: weights, gradients and two optimizer moments in float32. A model whose estimate
exceeds the memory this machine has available is refused with the estimate, instead of taking
the machine's memory until the kernel kills the process.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from ..data.base import DatasetInfo
from ..errors import ConfigError, unknown_name
from ..schema import available_memory

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, tuple[Builder, str]] = {}
# The training recipe of each model: the settings ``dipnet train`` uses for the options not given.
_RECIPES: dict[str, dict[str, Any]] = {}


def register_model(name: str, description: str, recipe: dict[str, Any] | None = None) -> Callable[[Builder], Builder]:
    """Register ``builder(info: DatasetInfo, **kwargs) -> nn.Module`` under ``name``, with its
    training ``recipe`` (optimizer, lr, schedule, batch size, epochs, weight decay)."""

    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = (fn, description)
        _RECIPES[name] = dict(recipe or {})
        return fn

    return deco


def model_recipe(name: str) -> dict[str, Any]:
    """The documented training recipe of a registered model (docs/models.md, "Recipes")."""
    if name not in _REGISTRY:
        raise unknown_name("model", name, list(_REGISTRY))
    return dict(_RECIPES.get(name, {}))


def model_options(name: str) -> list[str]:
    """The options ``build_model(name, info, ...)`` takes."""
    if name not in _REGISTRY:
        raise unknown_name("model", name, list(_REGISTRY))
    params = inspect.signature(_REGISTRY[name][0]).parameters.values()
    return [p.name for p in params if p.name != "info" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def list_models() -> dict[str, str]:
    return {name: desc for name, (_, desc) in sorted(_REGISTRY.items())}


def build_model(name: str, info: DatasetInfo, **kwargs: Any) -> nn.Module:
    """Build a registered model with defaults fitted to ``info`` (input shape, classes)."""
    if name not in _REGISTRY:
        raise unknown_name("model", name, list(_REGISTRY))
    builder = _REGISTRY[name][0]
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
