"""IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), ``.gz`` or raw, validated before use.

The format (LeCun et al.): a 4-byte magic (two zero bytes, a type code, the number of
dimensions), one big-endian int32 per dimension, then the data. We check the magic (2051 for
images, 2049 for labels), that the file holds exactly the bytes its header announces, and that
images and labels agree in count. A folder with only the test files (as ``../shared/data/mnist``)
is split into train and test, stratified by class, by seed.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .base import Dataset, DatasetInfo, register_dataset
from .base import stratified_split
from ._util import data_root, strict_options, to_tensors

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
CLASS_NAMES = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
}


def read_idx(path: str | Path, expect_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a uint8 array, validating header and size."""
    path = Path(path)
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read or decompressed ({exc}); the file is damaged, fetch it again") from None
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    magic = struct.unpack(">i", raw[:4])[0]
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise DataError(f"{path}: bad IDX magic number {magic} (expected {expect_magic or '2051 or 2049'} for unsigned-byte data)")
    if expect_magic is not None and magic != expect_magic:
        kind = "images" if expect_magic == IMAGES_MAGIC else "labels"
        raise DataError(f"{path}: magic number {magic}, expected {expect_magic} for an IDX {kind} file")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes, needs {header})")
    dims = struct.unpack(f">{ndim}i", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path}: file is {what}: {len(raw)} bytes, header {dims} implies {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder: Path, split: str, kind: str, subset: str = "") -> Path | None:
    """``train``/``t10k`` (or ``test``) ``images``/``labels`` files, e.g. ``t10k-images-idx3-ubyte.gz``,
    ``train-images.idx3-ubyte``, ``emnist-balanced-test-labels-idx1-ubyte``."""
    idx = "idx3" if kind == "images" else "idx1"
    names = ("t10k", "test") if split == "test" else ("train",)
    found = sorted(
        p for p in folder.iterdir()
        if p.is_file() and idx in p.name and kind in p.name and subset in p.name and any(n in p.name for n in names)
    )
    if len(found) > 1:
        raw = [p for p in found if p.suffix != ".gz"]
        found = raw or found
    return found[0] if found else None


def load_idx_pair(folder: Path, split: str, subset: str = "") -> tuple[np.ndarray, np.ndarray] | None:
    images, labels = _find(folder, split, "images", subset), _find(folder, split, "labels", subset)
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        missing = "images" if images is None else "labels"
        raise DataError(f"{folder}: the {split} {missing} file is missing (found {(images or labels).name})")
    x, y = read_idx(images, IMAGES_MAGIC), read_idx(labels, LABELS_MAGIC)
    if x.ndim != 3 or y.ndim != 1:
        raise DataError(f"{images}: expected images of shape (N, H, W) and labels (N,), got {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{images} holds {x.shape[0]} images but {labels} holds {y.shape[0]} labels")
    return x, y


def load_idx_folder(name: str, root: Any = None, n_test: int = 2000, split_seed: int = 0,
                    class_names: tuple[str, ...] | None = None, transpose: bool = False, subset: str = "") -> Dataset:
    """Images scaled to [0, 1] with shape (1, H, W). Without train files, the test files are split."""
    folder = data_root(root, name)
    train = load_idx_pair(folder, "train", subset)
    test = load_idx_pair(folder, "test", subset)
    if test is None and train is None:
        raise DataError(f"{folder}: no IDX files (expected e.g. t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz)")
    extra: dict[str, Any] = {"folder": str(folder)}
    if train is None or test is None:
        source = "test files" if train is None else "train files"
        x, y = test if train is None else train
        tr, te = stratified_split(y, n_test, split_seed)
        train, test = (x[tr], y[tr]), (x[te], y[te])
        extra["split"] = {"from": source, "n_test": n_test, "seed": split_seed}
    (xtr, ytr), (xte, yte) = train, test
    if transpose:
        xtr, xte = xtr.transpose(0, 2, 1), xte.transpose(0, 2, 1)
    k = int(max(ytr.max(), yte.max())) + 1
    info = DatasetInfo(
        name=name,
        input_shape=(1, *xtr.shape[1:]),
        num_classes=k,
        class_names=class_names or tuple(str(i) for i in range(k)),
        bounds=(0.0, 1.0),
        normalization={"kind": "scale", "divide_by": 255.0},
        extra=extra,
    )
    scale = lambda a: a[:, None].astype(np.float32) / 255.0  # noqa: E731
    return Dataset(*to_tensors(scale(xtr), ytr), *to_tensors(scale(xte), yte), info)


@register_dataset("mnist", "MNIST from IDX files (root=, $DIPNET_DATA/mnist or ../shared/data/mnist); a test-only folder is split 8000/2000")
@strict_options("mnist")
def load_mnist(root: Any = None, n_test: int = 2000, split_seed: int = 0) -> Dataset:
    return load_idx_folder("mnist", root, n_test, split_seed, CLASS_NAMES["mnist"])


@register_dataset("fashion-mnist", "Fashion-MNIST from IDX files (root= or $DIPNET_DATA/fashion-mnist)")
@strict_options("fashion-mnist")
def load_fashion_mnist(root: Any = None, n_test: int = 2000, split_seed: int = 0) -> Dataset:
    return load_idx_folder("fashion-mnist", root, n_test, split_seed, CLASS_NAMES["fashion-mnist"])


@register_dataset("kmnist", "Kuzushiji-MNIST from IDX files (root= or $DIPNET_DATA/kmnist)")
@strict_options("kmnist")
def load_kmnist(root: Any = None, n_test: int = 2000, split_seed: int = 0) -> Dataset:
    return load_idx_folder("kmnist", root, n_test, split_seed, CLASS_NAMES["kmnist"])


@register_dataset("emnist", "EMNIST from IDX files of one split (root= or $DIPNET_DATA/emnist); images transposed upright")
@strict_options("emnist")
def load_emnist(root: Any = None, subset: str = "balanced", n_test: int = 2000, split_seed: int = 0) -> Dataset:
    return load_idx_folder("emnist", root, n_test, split_seed, transpose=True, subset=f"-{subset}-")
