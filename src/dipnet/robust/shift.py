"""Distribution-shifted test sets for the robustness report: MNIST-1D from its own generator
(Greydanus & Kobak 2024) via :func:`dipnet.data.mnist1d_shifted` (one knob turned up per set, a
fresh seed), plus an unshifted resample as the control. Other datasets have none."""
from __future__ import annotations

import numpy as np
import torch

from ..data import DatasetInfo
from ..data.mnist1d import SHIFTS, mnist1d_shifted


def is_mnist1d(info: DatasetInfo) -> bool:
    return info.name.lower().replace("_", "-").startswith("mnist1d") and int(np.prod(info.input_shape)) == 40


def shifted_sets(
    info: DatasetInfo, n: int = 1000, seed: int = 0, severities: tuple[int, ...] = (1, 3, 5)
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], str | None]:
    """The shifted test sets known for a dataset and, when there are none, the reason.

    For MNIST-1D: ``"control"`` (fresh clean examples), ``"noise@3"`` (the noise knob at severity
    3), ... for every shift kind of :data:`dipnet.data.MNIST1D_SHIFTS` and each severity.
    """
    if not is_mnist1d(info):
        return {}, f"no generator-based shifted sets for dataset {info.name!r} (only MNIST-1D has them)"
    shape = lambda xy: (xy[0].reshape(len(xy[0]), *info.input_shape), xy[1])  # noqa: E731
    out = {"control": shape(mnist1d_shifted(next(iter(SHIFTS)), 0, n, seed))}
    for kind in SHIFTS:
        for s in severities:
            out[f"{kind}@{s}"] = shape(mnist1d_shifted(kind, s, n, seed))
    return out, None
