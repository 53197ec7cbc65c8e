"""Model registry: ``build_model(name, info, **kwargs)`` returns a plain ``nn.Module``."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..data.base import DatasetInfo
from ..errors import ConfigError, unknown_name

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, tuple[Builder, str]] = {}


def register_model(name: str, description: str) -> Callable[[Builder], Builder]:
    """Register ``builder(info: DatasetInfo, **kwargs) -> nn.Module`` under ``name``."""

    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = (fn, description)
        return fn

    return deco


def list_models() -> dict[str, str]:
    return {name: desc for name, (_, desc) in sorted(_REGISTRY.items())}


def build_model(name: str, info: DatasetInfo, **kwargs: Any) -> nn.Module:
    """Build a registered model with defaults fitted to ``info`` (input shape, classes)."""
    if name not in _REGISTRY:
        raise unknown_name("model", name, list(_REGISTRY))
    try:
        return _REGISTRY[name][0](info, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None
