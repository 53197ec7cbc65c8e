"""CIFAR-10/100 from the official "python version" batches in a local folder (never downloaded).

Those batches are pickles, and unpickling can run arbitrary code. We load them with an
unpickler that refuses every global except the NumPy reconstructors an ndarray needs (and
``_codecs.encode``, which protocol 2 uses for bytes), so
a file can only yield dicts, lists, strings, bytes, numbers and uint8 arrays; anything else is a
:class:`~dipnet.errors.DataError`. The arrays are then validated (shape (N, 3072), labels in range).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from ..errors import DataError
from .base import Dataset, DatasetInfo, register_dataset
from ._util import data_root, strict_options, to_tensors

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2; it only turns str into bytes
}


class _Layout(TypedDict):
    """Where a CIFAR variant's pickled batches are and what their keys are called."""

    folder: str
    train: list[str]
    test: list[str]
    meta: str
    names_key: bytes
    label_key: bytes
    classes: int


LAYOUT: dict[str, _Layout] = {
    "cifar10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "meta": "batches.meta", "names_key": b"label_names", "label_key": b"labels", "classes": 10},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"],
                 "meta": "meta", "names_key": b"fine_label_names", "label_key": b"fine_labels", "classes": 100},
}
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


MAX_BATCH_BYTES = 256 * 2**20  # the official batches are ~31 MB (CIFAR-10) and ~155 MB (CIFAR-100 train)
MAX_LABELS = 1_000_000


def safe_unpickle(path: Path) -> Any:
    """Load a CIFAR batch pickle, allowing only plain data and NumPy arrays, of bounded size."""
    try:
        if path.stat().st_size > MAX_BATCH_BYTES:
            raise DataError(f"{path}: {path.stat().st_size} bytes is larger than any CIFAR batch "
                            f"({MAX_BATCH_BYTES} at most); not loading it")
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected the official CIFAR python batches)") from None
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: refused to load: {exc}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, RecursionError, MemoryError) as exc:
        raise DataError(f"{path}: not a valid CIFAR batch pickle ({type(exc).__name__}: {exc}); the file is damaged") from None


def _batch(path: Path, label_key: bytes, classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = safe_unpickle(path)
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise DataError(f"{path}: expected a dict with b'data' and {label_key!r}, found {keys}")
    x, labels = d[b"data"], d[label_key]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got {got}")
    # a flat list of integers, checked before NumPy sees it (nested or shared lists could expand without bound)
    if not isinstance(labels, (list, np.ndarray)) or len(labels) > MAX_LABELS or \
            any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in labels):
        raise DataError(f"{path}: {label_key!r} must be a list of integer class indices")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (x.shape[0],):
        raise DataError(f"{path}: {x.shape[0]} images but {y.shape} labels")
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise DataError(f"{path}: labels must lie in [0, {classes}), found range [{y.min()}, {y.max()}]")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def load_cifar(name: str, root: Any = None, standardize: bool = False) -> Dataset:
    spec = LAYOUT[name]
    folder = data_root(root, name)
    if (folder / spec["folder"]).is_dir():
        folder = folder / spec["folder"]
    parts = {s: [_batch(folder / f, spec["label_key"], spec["classes"]) for f in files]
             for s, files in (("train", spec["train"]), ("test", spec["test"]))}
    x_train = np.concatenate([p[0] for p in parts["train"]])
    y_train = np.concatenate([p[1] for p in parts["train"]])
    x_test = np.concatenate([p[0] for p in parts["test"]])
    y_test = np.concatenate([p[1] for p in parts["test"]])
    names = tuple(str(i) for i in range(spec["classes"]))
    if (folder / spec["meta"]).exists():
        meta = safe_unpickle(folder / spec["meta"])
        raw = meta.get(spec["names_key"]) if isinstance(meta, dict) else None
        if raw is not None:
            if not isinstance(raw, list) or len(raw) != spec["classes"] or not all(isinstance(n, (bytes, str)) for n in raw):
                raise DataError(f"{folder / spec['meta']}: {spec['names_key']!r} must be a list of {spec['classes']} names")
            names = tuple(n.decode(errors="replace") if isinstance(n, bytes) else n for n in raw)
    xs = [x_train.astype(np.float32) / 255.0, x_test.astype(np.float32) / 255.0]
    bounds: tuple[float, float] = (0.0, 1.0)
    norm: dict[str, Any] = {"kind": "scale", "divide_by": 255.0}
    if standardize:
        mean, std = (np.asarray(v, np.float32).reshape(1, 3, 1, 1) for v in MEAN_STD[name])
        xs = [(x - mean) / std for x in xs]
        bounds = (float((0 - mean / std).min()), float(((1 - mean) / std).max()))
        norm = {"kind": "standardize", "divide_by": 255.0, "mean": list(MEAN_STD[name][0]), "std": list(MEAN_STD[name][1])}
    info = DatasetInfo(name=name, input_shape=(3, 32, 32), num_classes=spec["classes"], class_names=names,
                       bounds=bounds, normalization=norm, extra={"folder": str(folder)})
    return Dataset(*to_tensors(xs[0], y_train), *to_tensors(xs[1], y_test), info)


@register_dataset("cifar10", "CIFAR-10 from the official python batches (root= or $DIPNET_DATA/cifar10); standardize=true for per-channel standardization")
@strict_options("cifar10")
def load_cifar10(root: Any = None, standardize: bool = False) -> Dataset:
    return load_cifar("cifar10", root, standardize)


@register_dataset("cifar100", "CIFAR-100 (fine labels) from the official python batches (root= or $DIPNET_DATA/cifar100)")
@strict_options("cifar100")
def load_cifar100(root: Any = None, standardize: bool = False) -> Dataset:
    return load_cifar("cifar100", root, standardize)
