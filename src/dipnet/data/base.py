"""Dataset containers, metadata, the validation split and the name registry (:data:`DATASETS`).

Every loader returns a :class:`Dataset`: in-memory train and test tensors plus the
:class:`DatasetInfo` that later code relies on (input shape, classes, the valid input range
after preprocessing, which attacks and corruptions must respect, and the normalization used).
:func:`load_dataset` then carves a seeded, stratified validation split out of the training set
(``val_size``: a count, or a fraction of the training set; default :data:`DEFAULT_VAL_FRACTION`;
0 for none), the same for every run of a dataset, so that anything chosen (defaults, sweeps)
is chosen on validation and the test split is only ever reported.

Generated datasets (MNIST-1D) draw their examples with a generator seed, ``data_seed``: an
integer, or ``"run"`` (:data:`RUN`): derived from the seed of the run that loads it
(:func:`run_data_seed`, resolved by :func:`load_for_run`), so that runs with different seeds
train and test on different draws and the sampling of the data is in a suite's interval. Suites
default it to ``"run"`` (:func:`run_seeded`); elsewhere the loader's own default holds.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..registry import Registry
from ..schema import Limits, check, check_type

DEFAULT_VAL_FRACTION = 0.125
VAL_SEED = 0
RUN = "run"  # data_seed: derived from the run's seed
DATA_SEED_TAG = 0x64617461  # "data": keeps a run's data draw apart from its training noise (seeded by the run seed)


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
    """Train/validation/test tensors (x float32 of shape (N, *input_shape), y int64 of shape (N,));
    the validation split may be empty (``x_val`` None)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    info: DatasetInfo
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def has_val(self) -> bool:
        return self.x_val is not None and self.x_val.shape[0] > 0

    def __post_init__(self) -> None:
        check_type(self.info, DatasetInfo, "Dataset's info", "describe the data with DatasetInfo(...)")
        splits = [("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)]
        if self.x_val is not None or self.y_val is not None:
            if self.x_val is None or self.y_val is None:
                raise DataError(f"{self.info.name}: give both x_val and y_val, or neither")
            splits.append(("val", self.x_val, self.y_val))
        for split, x, y in splits:
            check_type(x, torch.Tensor, f"{self.info.name}: x_{split}")
            check_type(y, torch.Tensor, f"{self.info.name}: y_{split}")
            if x.shape[0] != y.shape[0]:
                raise DataError(f"{self.info.name}: {split} has {x.shape[0]} inputs but {y.shape[0]} labels")
            if tuple(x.shape[1:]) != tuple(self.info.input_shape):
                raise DataError(
                    f"{self.info.name}: {split} inputs have shape {tuple(x.shape[1:])}, "
                    f"metadata says {self.info.input_shape}"
                )
        self.check_finite()

    def check_finite(self) -> None:
        """DataError naming the split and the first example with a NaN or infinite input."""
        for split, x in (("train", self.x_train), ("val", self.x_val), ("test", self.x_test)):
            if x is not None:
                _check_finite(self.info.name, split, x)

    def with_info(self, **changes: Any) -> "Dataset":
        return replace(self, info=replace(self.info, **changes))


def _check_finite(name: str, split: str, x: torch.Tensor) -> None:
    if not (x.is_floating_point() or x.is_complex()) or x.numel() == 0:
        return
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1) if x.ndim > 1 else ~torch.isfinite(x)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise DataError(f"{name}: {split} input {first} is not finite (NaN or inf), and {int(bad.sum())} of "
                        f"{x.shape[0]} are not; clean or drop them before training")


Loader = Callable[..., Dataset]
DATASETS: Registry[Loader] = Registry("dataset")
register_dataset = DATASETS.register  # @register_dataset("name", "one line") on a loader


def dataset_options(name: str) -> list[str]:
    """The options ``load_dataset(name, ...)`` takes (the loader's, plus ``val_size``/``val_seed``,
    and ``data_seed`` for a generated dataset)."""
    loader = DATASETS.get(name)
    params = inspect.signature(loader).parameters.values()
    named = [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    seeded = ["data_seed"] if getattr(loader, "generator_seed", None) else []
    return named + list(getattr(loader, "options", ())) + ["val_size", "val_seed"] + seeded


def run_data_seed(run_seed: int) -> int:
    """The generator seed of a run with seed ``run_seed`` under ``data_seed = "run"``: the first
    32-bit word of NumPy's ``SeedSequence([DATA_SEED_TAG, run_seed])``, a hash of the run seed
    (neighbouring run seeds give unrelated draws, none the published dataset's seed by design)."""
    seed = check(run_seed, int, "the run's seed", Limits(ge=0))
    return int(np.random.SeedSequence([DATA_SEED_TAG, seed]).generate_state(1)[0])


def run_seeded(name: str, data_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``data_kwargs`` with ``data_seed = "run"`` added when ``name`` is a generated dataset and
    no generator seed is given (what suites train on); unchanged otherwise."""
    option = getattr(DATASETS.get(name), "generator_seed", None) if name in DATASETS else None
    if option is None or "data_seed" in data_kwargs or option in data_kwargs:
        return data_kwargs
    return {**data_kwargs, "data_seed": RUN}


def load_for_run(name: str, data_kwargs: dict[str, Any], run_seed: int) -> Dataset:
    """The dataset a run with seed ``run_seed`` trains on: ``load_dataset(name, **data_kwargs)``
    with ``data_seed = "run"`` resolved to :func:`run_data_seed` of it."""
    if data_kwargs.get("data_seed") == RUN:
        data_kwargs = {**data_kwargs, "data_seed": run_data_seed(run_seed)}
    return load_dataset(name, **data_kwargs)


def _generator_seed(name: str, loader: Loader, data_seed: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The loader's options with ``data_seed`` given as its generator seed option."""
    option = getattr(loader, "generator_seed", None)
    if option is None:
        raise ConfigError(f"data_seed: {name} is not a generated dataset (it has no generator seed); remove data_seed")
    if option in kwargs:
        raise ConfigError(f"{name}: give data_seed or {option}, not both")
    if data_seed == RUN:
        raise ConfigError(f"{name}: data_seed = \"run\" takes the seed of a run: train a run with it, or load it with "
                          "dipnet.data.base.load_for_run(name, options, run_seed)")
    if isinstance(data_seed, str) and not data_seed.strip().isdigit():
        raise ConfigError(f"data_seed must be \"run\" (derived from the run's seed) or an integer >= 0, not {data_seed!r}")
    return {**kwargs, option: check(data_seed, int, "data_seed", Limits(ge=0))}


def stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with class proportions kept (largest-remainder allocation per class)."""
    y = np.asarray(y)
    n = len(y)
    if not 0 < n_test < n:
        raise ConfigError(f"a split of {n_test} out of {n} examples is impossible; choose between 1 and {n - 1}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * n_test / n
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: n_test - take.sum()]:
        take[i] += 1
    train_idx, test_idx = [], []
    for c, k in zip(classes, take):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def validation_count(val_size: Any, n_train: int) -> int:
    """``val_size`` as a count: an integer count, or a fraction in [0, 1) of ``n_train``."""
    if isinstance(val_size, float) or (isinstance(val_size, str) and "." in val_size):
        fraction = check(val_size, float, "val_size (a fraction)", Limits(ge=0, lt=1))
        return int(round(fraction * n_train))
    return check(val_size, int, "val_size (a count)", Limits(ge=0, lt=max(n_train, 1)))


def with_validation(ds: Dataset, val_size: Any = DEFAULT_VAL_FRACTION, val_seed: int = VAL_SEED) -> Dataset:
    """``ds`` with a stratified validation split of ``val_size`` carved from its training set
    (seeded by ``val_seed``, not by the run: every run of a dataset sees the same split)."""
    n = ds.x_train.shape[0]
    k = validation_count(val_size, n)
    seed = check(val_seed, int, "val_seed", Limits(ge=0))
    info = replace(ds.info, extra={**ds.info.extra, "val": {"size": k, "seed": seed, "from": "train"}})
    if k == 0:
        return Dataset(ds.x_train, ds.y_train, ds.x_test, ds.y_test, info)
    if k >= n:
        raise ConfigError(f"{ds.info.name}: a validation split of {k} leaves no training examples out of {n}; "
                          "lower val_size")
    tr, va = (torch.from_numpy(i) for i in stratified_split(ds.y_train.numpy(), k, seed))
    return Dataset(ds.x_train[tr], ds.y_train[tr], ds.x_test, ds.y_test, info, ds.x_train[va], ds.y_train[va])


def load_dataset(name: str, val_size: Any = DEFAULT_VAL_FRACTION, val_seed: int = VAL_SEED, data_seed: Any = None,
                 **kwargs: Any) -> Dataset:
    """Load a registered dataset by name with a validation split carved from its training set
    (``val_size``, ``val_seed``: see :func:`with_validation`); ``data_seed``: a generated
    dataset's generator seed (an integer; ``"run"`` through :func:`load_for_run`); other
    options go to its loader."""
    loader = DATASETS.get(name)
    if data_seed is not None:
        kwargs = _generator_seed(name, loader, data_seed, kwargs)
    return with_validation(loader(**kwargs), val_size, val_seed)
