"""MNIST-1D (Greydanus & Kobak 2024), generated locally with the package's ``make_dataset``.

The package's ``get_dataset`` downloads a pickle; we never call it. Generation takes ~2 s, so
results are cached per argument set. ``make_dataset`` reseeds Python's and NumPy's global RNGs;
we restore them afterwards so that loading data never changes a training run's randomness.

Shifted test sets turn one generator knob up (noise, shear, translation, scale) by a severity
1-5 and draw fresh examples of the same ten templates, for out-of-distribution evaluation.
Like the package, every generated set is standardized by its own mean and std.
"""
from __future__ import annotations

import functools
import json
import random
from typing import Any

import numpy as np

from ..errors import ConfigError
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
    out = tuple(np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test"))
    for a in out:
        a.setflags(write=False)
    return out  # type: ignore[return-value]


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


@register_dataset("mnist1d", "MNIST-1D (4000/1000, length-40 signals), generated locally; shift=noise|shear|translation|scale, severity=1..5 for a shifted test set")
def load_mnist1d(
    seed: int = 42,
    num_samples: int = 5000,
    train_split: float = 0.8,
    shift: str | None = None,
    severity: int = 3,
    **knobs: Any,
) -> Dataset:
    """``seed=42`` with the defaults is the published dataset. ``shift`` replaces the test set by
    a shifted one of the same size; other keywords override generator knobs."""
    check_kwargs("mnist1d", knobs, set(generator_defaults()) | {"shift", "severity"})
    if not 0 < train_split < 1:
        raise ConfigError(f"train_split must be in (0, 1), not {train_split}")
    x, y, xt, yt = generate(seed=seed, num_samples=num_samples, train_split=train_split, **knobs)
    extra: dict[str, Any] = {"generator": {"seed": seed, "num_samples": num_samples, "train_split": train_split, **knobs}}
    if shift is not None:
        shifted = generate(**{**knobs, **shift_knobs(shift, severity)}, num_samples=10 * -(-len(yt) // 10),
                           train_split=1.0, seed=100_000 + seed)
        xt, yt = shifted[0][: len(yt)], shifted[1][: len(yt)]
        extra["shift"] = {"kind": shift, "severity": severity, "knobs": shift_knobs(shift, severity)}
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
