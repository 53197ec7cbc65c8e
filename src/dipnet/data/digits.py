"""scikit-learn's bundled 8x8 digits (1797 images), a fixed stratified 1437/360 split."""
from __future__ import annotations

import numpy as np

from .base import Dataset, DatasetInfo, register_dataset
from .base import stratified_split
from ._util import strict_options, to_tensors

SPLIT_SEED = 0
TEST_SIZE = 360


@register_dataset("digits", "scikit-learn 8x8 digits (1437/360 stratified split, pixels in [0, 1]), bundled")
@strict_options("digits")
def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    tr, te = stratified_split(y, TEST_SIZE, SPLIT_SEED)
    info = DatasetInfo(
        name="digits",
        input_shape=(1, 8, 8),
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        bounds=(0.0, 1.0),
        normalization={"kind": "scale", "divide_by": 16.0},
        extra={"source": "sklearn.datasets.load_digits", "split_seed": SPLIT_SEED},
    )
    return Dataset(*to_tensors(x[tr], y[tr]), *to_tensors(x[te], y[te]), info)
