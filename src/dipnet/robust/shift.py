"""Distribution-shifted test sets for MNIST-1D from its own generator (Greydanus & Kobak 2024):
the same ten templates with one knob turned up (noise, shear, translation, time scale) and a
fresh seed, plus an unshifted resample as the control."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..data import DatasetInfo

# Each set changes the generator's defaults (get_dataset_args) as stated; "resample" changes only the seed.
MNIST1D_SHIFTS: dict[str, dict[str, float]] = {
    "resample": {},
    "noise": {"iid_noise_scale": 0.08, "corr_noise_scale": 0.5},
    "shear": {"shear_scale": 1.5},
    "translation": {"max_translation": 72},  # the whole padded length (default 48)
    "scale": {"scale_coeff": 0.8},
}


def is_mnist1d(info: DatasetInfo) -> bool:
    return info.name.lower().replace("_", "-").startswith("mnist1d") and int(np.prod(info.input_shape)) == 40


def _normalize(x: np.ndarray, info: DatasetInfo) -> np.ndarray:
    norm = info.normalization or {}
    if "mean" in norm and "std" in norm:
        return (x - np.asarray(norm["mean"], dtype=np.float32)) / np.asarray(norm["std"], dtype=np.float32)
    return x


def mnist1d_shifted_sets(
    info: DatasetInfo, n: int = 1000, seed: int = 0, shifts: dict[str, dict[str, float]] | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{name: (x, y)}``: ``n`` fresh MNIST-1D examples per shift, standardized like the original
    (the generator standardizes each set; ``info.normalization`` ``mean``/``std`` apply on top)."""
    from mnist1d.data import get_dataset_args, make_dataset

    base: dict[str, Any] = dict(get_dataset_args(as_dict=True))
    base.update(info.extra.get("generator", {}) if isinstance(info.extra, dict) else {})
    out = {}
    for i, (name, change) in enumerate((shifts or MNIST1D_SHIFTS).items()):
        args = dict(base, **change)
        args.update(num_samples=10 * max(1, -(-n // 10)), train_split=0.0, seed=10_000 + 97 * seed + i)

        class _Args(dict):
            __getattr__ = dict.__getitem__

        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            d = make_dataset(_Args(args))
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        x = _normalize(np.asarray(d["x_test"], dtype=np.float32), info)[:n]
        y = np.asarray(d["y_test"], dtype=np.int64)[:n]
        out[name] = (torch.from_numpy(x).reshape(len(x), *info.input_shape), torch.from_numpy(y))
    return out


def shifted_sets(
    info: DatasetInfo, n: int = 1000, seed: int = 0, severities: tuple[int, ...] = (1, 3, 5)
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], str | None]:
    """The shifted test sets known for a dataset and, when there are none, the reason.

    For MNIST-1D: the data package's ``mnist1d_shifted`` (``"control"``: fresh clean examples;
    ``"noise@3"``: the noise knob at severity 3, ...); without it, :func:`mnist1d_shifted_sets`.
    """
    if not is_mnist1d(info):
        return {}, f"no generator-based shifted sets for dataset {info.name!r} (only MNIST-1D has them)"
    try:
        from ..data.mnist1d import SHIFTS, mnist1d_shifted
    except ImportError:
        try:
            return mnist1d_shifted_sets(info, n, seed), None
        except ImportError:
            return {}, "the mnist1d package is not installed"
    shape = lambda xy: (xy[0].reshape(len(xy[0]), *info.input_shape), xy[1])
    out = {"control": shape(mnist1d_shifted(next(iter(SHIFTS)), 0, n, seed))}
    for kind in SHIFTS:
        for s in severities:
            out[f"{kind}@{s}"] = shape(mnist1d_shifted(kind, s, n, seed))
    return out, None
