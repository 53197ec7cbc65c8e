"""Argument checks, input-shape rules and registration shared by the model zoo."""
from __future__ import annotations

import contextvars
import functools
import inspect
import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..data.base import DatasetInfo
from ..errors import ConfigError
from ..schema import Limits, check, choice
from .registry import MODELS, ModelEntry, register_model

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "hardtanh": nn.Hardtanh,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}

_PROBING: contextvars.ContextVar[bool] = contextvars.ContextVar("dipnet_models_probing", default=False)


def make_activation(name: str, owner: str) -> nn.Module:
    """A fresh activation module (never in-place, so hooks see untouched tensors)."""
    return ACTIVATIONS[check_choice(owner, "activation", name, ACTIVATIONS)]()


def check_choice(owner: str, key: str, value: Any, allowed: Sequence[str] | dict[str, Any]) -> str:
    return choice(value, f"{owner}.{key}", allowed)


MAX_SIZE = 100_000  # any one structural option (a width, a channel count): larger ones are typos
MAX_LAYERS = 1000  # layers or blocks of one model (a depth, the entries of widths=): building 10^5 modules takes minutes before any estimate


def check_int(owner: str, key: str, value: Any, minimum: int = 1, maximum: int = MAX_SIZE) -> int:
    return check(value, int, f"{owner}.{key}", Limits(ge=minimum, le=maximum))


def check_float(owner: str, key: str, value: Any, minimum: float = 0.0) -> float:
    return check(value, float, f"{owner}.{key}", Limits(ge=minimum))


def check_bool(owner: str, key: str, value: Any) -> bool:
    return check(value, bool, f"{owner}.{key}")


def check_int_seq(owner: str, key: str, value: Any, minimum: int = 1, allow_empty: bool = False,
                  maximum: int = MAX_SIZE) -> tuple[int, ...]:
    """An int or a sequence of ints (``256`` -> ``(256,)``; CLI ``widths=256,256`` -> ``(256, 256)``),
    one per layer: at most :data:`MAX_LAYERS` of them."""
    items = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    count = len(items.split(",")) if isinstance(items, str) else len(items) if isinstance(items, (list, tuple)) else 0
    if count > MAX_LAYERS:
        raise ConfigError(f"{owner}.{key} lists {count} values; at most {MAX_LAYERS}")
    out = check(items, tuple[int, ...], f"{owner}.{key}", Limits(ge=minimum, le=maximum))
    if not out and not allow_empty:
        raise ConfigError(f"{owner}.{key} must be a list of integers >= {minimum} (e.g. 256,256), not {value!r}")
    return out


def flat_features(input_shape: Sequence[int]) -> int:
    return int(math.prod(input_shape))


def image_shape(name: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` from ``(C, H, W)``, ``(H, W)`` or a flat vector of square length (C = 1)."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3 and min(shape) >= 1:
        return shape
    if len(shape) == 2 and min(shape) >= 1:
        return (1, *shape)
    if len(shape) == 1 and shape[0] >= 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        return (1, side, side)
    raise shape_error(name, "an image input (C, H, W), (H, W) or a flat vector of square length", shape)


def signal_shape(name: str, input_shape: Sequence[int]) -> tuple[int, int]:
    """``(C, L)`` from a 1-D signal ``(L,)`` (C = 1) or ``(C, L)``."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 1 and shape[0] >= 1:
        return (1, shape[0])
    if len(shape) == 2 and min(shape) >= 1:
        return shape
    raise shape_error(name, "a 1-D signal input (L,) or (C, L)", shape)


def shape_error(name: str, need: str, input_shape: Sequence[int]) -> ConfigError:
    """The error for a model that cannot take ``input_shape``, listing the models that can."""
    shape = tuple(input_shape)
    if _PROBING.get():
        return ConfigError(f"model {name!r} needs {need}, got input shape {shape}")
    fits = compatible_models(shape)
    hint = f"models that fit this shape: {', '.join(fits)}" if fits else "no registered model fits this shape"
    return ConfigError(f"model {name!r} needs {need}, but the data has input shape {shape}; {hint}")


def compatible_models(input_shape: Sequence[int], num_classes: int = 10) -> list[str]:
    """Registered models that build with their defaults for inputs of ``input_shape``.

    Each candidate is built on the ``meta`` device (no memory, no random numbers drawn).
    """
    info = DatasetInfo(
        name="probe",
        input_shape=tuple(int(s) for s in input_shape),
        num_classes=num_classes,
        class_names=tuple(str(i) for i in range(num_classes)),
        bounds=(0.0, 1.0),
    )
    def builds(entry: ModelEntry) -> bool:
        try:
            with torch.device("meta"):
                entry.builder(info)
        except (ConfigError, TypeError, RuntimeError, NotImplementedError):
            return False
        return True

    token = _PROBING.set(True)
    try:
        return MODELS.filter(builds)
    finally:
        _PROBING.reset(token)


def zoo_model(name: str, description: str,
              recipe: dict[str, Any] | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``fn(info, **options)`` with its training ``recipe``; an unknown option is a
    ConfigError listing the known ones."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        options = [p for p in inspect.signature(fn).parameters if p != "info"]

        @functools.wraps(fn)
        def builder(info: DatasetInfo, **kwargs: Any) -> nn.Module:
            unknown = sorted(set(kwargs) - set(options))
            if unknown:
                raise ConfigError(
                    f"model {name!r} has no option {unknown[0]!r}; its options are: {', '.join(options) or '(none)'}"
                )
            return fn(info, **kwargs)

        register_model(name, description, recipe)(builder)
        return builder

    return deco


def as_image(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """A batch of flat or (H, W) inputs viewed as ``(B, C, H, W)``; 4-D batches pass through."""
    return x if x.dim() == 4 else x.reshape(x.shape[0], *shape)
