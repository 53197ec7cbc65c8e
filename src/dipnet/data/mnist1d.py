"""MNIST-1D (Greydanus & Kobak 2024), generated locally with the package's ``make_dataset``.

The package's ``get_dataset`` downloads a pickle; we never call it. Generation takes ~2 s, so
results are cached per argument set. ``make_dataset`` reseeds Python's and NumPy's global RNGs;
we restore them afterwards so that loading data never changes a training run's randomness.

Shifted test sets turn one generator knob up (noise, shear, translation, scale) by a severity
1-5 and draw fresh examples of the same ten templates, for out-of-distribution evaluation.
Like the package, every generated set is standardized by its own mean and std.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import random
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError
from ..schema import Validated, param
from .base import Dataset, DatasetInfo, register_dataset
from ._util import check_kwargs, to_tensors

CLASS_NAMES = tuple(str(i) for i in range(10))
# Generator knobs at severity s (0 = the package's defaults).
SHIFTS: dict[str, Any] = {
    "noise": lambda s: {"iid_noise_scale": 0.02 * (1 + s), "corr_noise_scale": 0.25 * (1 + 0.5 * s)},
    "shear": lambda s: {"shear_scale": 0.75 * (1 + 0.5 * s)},
    "translation": lambda s: {"max_translation": 48 + 12 * s},
    "scale": lambda s: {"scale_coeff": 0.4 * (1 + 0.5 * s)},
}
MAX_SEVERITY = 5


def generator_defaults() -> dict[str, Any]:
    from mnist1d.data import get_dataset_args

    args = dict(get_dataset_args(as_dict=True))
    args.pop("url", None)
    return args


@functools.lru_cache(maxsize=16)
def _generate(args_json: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    args = json.loads(args_json)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(ObjectView(args))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x, y, x_test, y_test = (np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test"))
    for a in (x, y, x_test, y_test):
        a.setflags(write=False)
    return x, y, x_test, y_test


def generate(**knobs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``make_dataset`` with the package defaults overridden by ``knobs`` (cached)."""
    args = generator_defaults()
    unknown = sorted(set(knobs) - set(args))
    if unknown:
        raise ConfigError(f"unknown MNIST-1D generator option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(args))}")
    args.update(knobs)
    return _generate(json.dumps(args, sort_keys=True))


def shift_knobs(shift: str, severity: int) -> dict[str, Any]:
    if shift not in SHIFTS:
        raise ConfigError(f"unknown MNIST-1D shift {shift!r}; choose one of: {', '.join(SHIFTS)}")
    if not (isinstance(severity, int) and 0 <= severity <= MAX_SEVERITY):
        raise ConfigError(f"severity must be an integer from 0 to {MAX_SEVERITY}, not {severity!r}")
    return SHIFTS[shift](severity)


def mnist1d_shifted(shift: str, severity: int = 3, n: int = 1000, seed: int = 0) -> tuple[Any, Any]:
    """``n`` fresh examples (x, y tensors) with one generator knob turned up to ``severity``.

    ``severity=0`` draws from the clean distribution with a fresh seed (the control).
    """
    knobs = shift_knobs(shift, severity)
    if n < 10:
        raise ConfigError(f"n must be at least 10 (one per class), not {n}")
    num = 10 * -(-n // 10)
    x, y, _, _ = generate(**knobs, num_samples=num, train_split=1.0, seed=100_000 + seed)
    return to_tensors(x[:n], y[:n])


@dataclass
class MNIST1DOptions(Validated):
    """The generator's knobs (the package's defaults: ``seed=42`` is the published dataset)."""

    seed: int = param(42, ge=0, le=2**32 - 1, doc="generator seed (42: the published dataset)")
    num_samples: int = param(5000, ge=20, le=1_000_000, doc="examples generated, train and test together")
    train_split: float = param(0.8, gt=0, lt=1, doc="share of the examples in the training set")
    template_len: int = param(12, ge=1)
    padding: tuple[int, ...] = param((36, 60), ge=0)
    scale_coeff: float = param(0.4, ge=0)
    max_translation: int = param(48, ge=0)
    corr_noise_scale: float = param(0.25, ge=0)
    iid_noise_scale: float = param(0.02, ge=0)
    shear_scale: float = param(0.75, ge=0)
    shuffle_seq: bool = param(False)
    final_seq_length: int = param(40, ge=1)
    shift: Literal["noise", "shear", "translation", "scale"] | None = param(None, doc="a shifted test set")
    severity: int = param(3, ge=0, le=MAX_SEVERITY, doc="the shift's severity")

    def _owner(self) -> str:
        return "mnist1d"

    def _check(self) -> None:
        n_test = self.num_samples - int(self.num_samples * self.train_split)
        if n_test < 1 or self.num_samples - n_test < 1:
            raise ConfigError(f"mnist1d: num_samples={self.num_samples} with train_split={self.train_split} leaves an "
                              "empty split; raise num_samples")
        if len(self.padding) != 2 or self.padding[0] > self.padding[1]:
            raise ConfigError(f"mnist1d.padding must be two integers lo <= hi, not {self.padding!r}")

    def knobs(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("shift", "severity")}
        d["padding"] = list(d["padding"])
        return d


@register_dataset("mnist1d", "MNIST-1D (4000/1000, length-40 signals), generated locally; shift=noise|shear|translation|scale, severity=1..5 for a shifted test set")
def load_mnist1d(**options: Any) -> Dataset:
    """``seed=42`` with the defaults is the published dataset (:class:`MNIST1DOptions`). ``shift``
    replaces the test set by a shifted one of the same size; other keywords override generator knobs."""
    check_kwargs("mnist1d", options, [f.name for f in dataclasses.fields(MNIST1DOptions)])
    opts = MNIST1DOptions(**options)
    knobs = opts.knobs()
    x, y, xt, yt = generate(**knobs)
    given = {k: v for k, v in options.items() if k not in ("shift", "severity")}
    extra: dict[str, Any] = {"generator": {"seed": opts.seed, "num_samples": opts.num_samples,
                                           "train_split": opts.train_split, **given}}
    if opts.shift is not None:
        shifted = generate(**{**knobs, **shift_knobs(opts.shift, opts.severity),
                              "num_samples": 10 * -(-len(yt) // 10), "train_split": 1.0, "seed": 100_000 + opts.seed})
        xt, yt = shifted[0][: len(yt)], shifted[1][: len(yt)]
        extra["shift"] = {"kind": opts.shift, "severity": opts.severity, "knobs": shift_knobs(opts.shift, opts.severity)}
    x_train, y_train = to_tensors(x, y)
    x_test, y_test = to_tensors(xt, yt)
    info = DatasetInfo(
        name="mnist1d",
        input_shape=(x.shape[1],),
        num_classes=10,
        class_names=CLASS_NAMES,
        bounds=None,
        normalization={"kind": "standardized by the generator (whole set: mean 0, std 1)"},
        extra=extra,
    )
    return Dataset(x_train, y_train, x_test, y_test, info)


setattr(load_mnist1d, "options", tuple(f.name for f in dataclasses.fields(MNIST1DOptions)))  # read by dataset_options
setattr(load_mnist1d, "generator_seed", "seed")  # data_seed sets it (data/base.py; suites: derived from the run seed)
