"""Helpers shared by the loaders: argument checks, stratified splits, the data root."""
from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar, cast

import numpy as np
import torch

from ..errors import ConfigError, DataError


def check_kwargs(dataset: str, given: dict[str, Any], allowed: Iterable[str]) -> None:
    allowed = sorted(allowed)
    bad = sorted(set(given) - set(allowed))
    if bad:
        raise ConfigError(f"dataset {dataset!r} has no option {', '.join(map(repr, bad))}; allowed: {', '.join(allowed) or 'none'}")


F = TypeVar("F", bound=Callable[..., Any])


def strict_options(dataset: str) -> Callable[[F], F]:
    """Make a loader reject unknown keyword arguments with a :class:`ConfigError` listing the
    allowed ones (instead of Python's ``TypeError``)."""

    def deco(fn: F) -> F:
        allowed = list(inspect.signature(fn).parameters)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check_kwargs(dataset, kwargs, allowed)
            return fn(*args, **kwargs)

        return cast(F, wrapper)

    return deco


SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"  # the project's offline data, beside the repo


def data_root(root: str | os.PathLike | None, sub: str) -> Path:
    """Where a dataset folder lives: ``root``, else ``$DIPNET_DATA/sub``, else ``../shared/data/sub``
    beside the repository (the shared offline data of this project)."""
    tried = []
    if root is not None:
        path = Path(root).expanduser()
        if path.is_dir():
            return path
        raise DataError(f"data folder {path} does not exist; pass root= the folder holding the {sub} files")
    env = os.environ.get("DIPNET_DATA")
    if env:
        path = Path(env).expanduser() / sub
        if path.is_dir():
            return path
        tried.append(str(path))
    shared = SHARED_DATA / sub
    if shared.is_dir():
        return shared
    tried.append(str(shared))
    raise DataError(
        f"no {sub} data found (looked in {', '.join(tried)}); nothing is downloaded: pass root=FOLDER "
        f"(CLI: --data-arg root=FOLDER) or set DIPNET_DATA to a folder containing {sub}/"
    )


def to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.array(x, dtype=np.float32, order="C")), torch.from_numpy(np.array(y, dtype=np.int64))
