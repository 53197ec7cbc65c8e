"""Dataset containers, metadata and the name registry.

Every loader returns a :class:`Dataset`: in-memory train and test tensors plus the
:class:`DatasetInfo` that later code relies on (input shape, classes, the valid input range
after preprocessing, which attacks and corruptions must respect, and the normalization used).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from ..errors import unknown_name


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    bounds: tuple[float, float] | None  # valid input range after preprocessing; None: unbounded
    normalization: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "bounds": None if self.bounds is None else list(self.bounds),
            "normalization": self.normalization,
            "extra": self.extra,
        }


@dataclass
class Dataset:
    """Train/test tensors (x float32 of shape (N, *input_shape), y int64 of shape (N,))."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    info: DatasetInfo

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"{self.info.name}: {split} has {x.shape[0]} inputs but {y.shape[0]} labels")
            if tuple(x.shape[1:]) != tuple(self.info.input_shape):
                raise ValueError(
                    f"{self.info.name}: {split} inputs have shape {tuple(x.shape[1:])}, "
                    f"metadata says {self.info.input_shape}"
                )

    def with_info(self, **changes: Any) -> "Dataset":
        return replace(self, info=replace(self.info, **changes))


Loader = Callable[..., Dataset]
_REGISTRY: dict[str, tuple[Loader, str]] = {}


def register_dataset(name: str, description: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        _REGISTRY[name] = (fn, description)
        return fn

    return deco


def list_datasets() -> dict[str, str]:
    """Registered dataset names with a one-line description each."""
    return {name: desc for name, (_, desc) in sorted(_REGISTRY.items())}


def load_dataset(name: str, **kwargs: Any) -> Dataset:
    """Load a registered dataset by name; keyword arguments go to its loader."""
    if name not in _REGISTRY:
        raise unknown_name("dataset", name, list(_REGISTRY))
    return _REGISTRY[name][0](**kwargs)
