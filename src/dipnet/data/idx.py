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

from ..errors import ConfigError, DataError
from ..schema import Limits, check
from .base import Dataset, DatasetInfo, register_dataset
from .base import stratified_split
from ._util import data_root, strict_options, to_tensors

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
DEFAULT_HELD_OUT = 2000  # test examples split off a folder that has only one pair of files
MAX_CLASSES = 1000
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
    if any(d < 0 for d in dims):
        raise DataError(f"{path}: the header gives negative dimensions {dims}; the file is damaged")
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
    if images is None:
        if labels is None:
            return None
        raise DataError(f"{folder}: the {split} images file is missing (found {labels.name})")
    if labels is None:
        raise DataError(f"{folder}: the {split} labels file is missing (found {images.name})")
    x, y = read_idx(images, IMAGES_MAGIC), read_idx(labels, LABELS_MAGIC)
    if x.ndim != 3 or y.ndim != 1:
        raise DataError(f"{images}: expected images of shape (N, H, W) and labels (N,), got {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{images} holds {x.shape[0]} images but {labels} holds {y.shape[0]} labels")
    if x.shape[0] == 0 or min(x.shape[1:]) == 0:
        raise DataError(f"{images} holds no images (shape {x.shape}); the {split} files are empty")
    return x, y


def _subset(x: np.ndarray, y: np.ndarray, n: int | None, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A stratified subset of ``n`` examples (all of them when ``n`` is None)."""
    if n is None or n == len(y):
        return x, y
    if n > len(y):
        raise ConfigError(f"{what}={n} asks for more examples than the {len(y)} there are")
    _, keep = stratified_split(y, n, seed)
    return x[keep], y[keep]


def _classes(ytr: np.ndarray, yte: np.ndarray, num_classes: int | None, where: Path) -> int:
    """The number of classes: ``num_classes``, or one more than the largest label when the labels
    look like class indices (refused when most of that range is missing: a wrong file, or pass
    ``num_classes``)."""
    top = int(max(ytr.max(), yte.max()))
    if num_classes is not None:
        if top >= num_classes:
            raise DataError(f"{where}: labels go up to {top}, outside [0, {num_classes}) for num_classes={num_classes}")
        return num_classes
    present = len(np.union1d(np.unique(ytr), np.unique(yte)))
    if top + 1 > MAX_CLASSES or present < (top + 1) / 2:
        raise DataError(f"{where}: labels go up to {top} but only {present} distinct values occur; these do not look "
                        "like class indices (a wrong labels file?); pass num_classes= if they are")
    return top + 1


def load_idx_folder(name: str, root: Any = None, n_test: int | None = None, split_seed: int = 0,
                    class_names: tuple[str, ...] | None = None, transpose: bool = False, subset: str = "",
                    n_train: int | None = None, num_classes: int | None = None) -> Dataset:
    """Images scaled to [0, 1] with shape (1, H, W). Without train files, the test files are split
    (``n_test`` of them, default 2000, held out as the test set). ``n_train``/``n_test`` take a
    stratified subset (seeded by ``split_seed``) of the training / test set."""
    n_train = check(n_train, int | None, f"{name}.n_train", Limits(ge=1))
    n_test = check(n_test, int | None, f"{name}.n_test", Limits(ge=1))
    num_classes = check(num_classes, int | None, f"{name}.num_classes", Limits(ge=2))
    if num_classes is None and class_names:
        num_classes = len(class_names)
    folder = data_root(root, name)
    train = load_idx_pair(folder, "train", subset)
    test = load_idx_pair(folder, "test", subset)
    extra: dict[str, Any] = {"folder": str(folder)}
    if train is None or test is None:
        pair = test if train is None else train
        if pair is None:
            raise DataError(f"{folder}: no IDX files (expected e.g. t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz)")
        source = "test files" if train is None else "train files"
        x, y = pair
        held = n_test or DEFAULT_HELD_OUT
        tr, te = stratified_split(y, held, split_seed)
        train, test = (x[tr], y[tr]), (x[te], y[te])
        extra["split"] = {"from": source, "n_test": held, "seed": split_seed}
    else:
        test = _subset(*test, n_test, split_seed, "n_test")
    train = _subset(*train, n_train, split_seed, "n_train")
    (xtr, ytr), (xte, yte) = train, test
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{folder}: training images are {xtr.shape[1]}x{xtr.shape[2]} but test images "
                        f"{xte.shape[1]}x{xte.shape[2]}; the files are from different datasets")
    if transpose:
        xtr, xte = xtr.transpose(0, 2, 1), xte.transpose(0, 2, 1)
    k = _classes(ytr, yte, num_classes, folder)
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
def load_mnist(root: Any = None, n_test: int | None = None, split_seed: int = 0, n_train: int | None = None) -> Dataset:
    return load_idx_folder("mnist", root, n_test, split_seed, CLASS_NAMES["mnist"], n_train=n_train)


@register_dataset("fashion-mnist", "Fashion-MNIST from IDX files (root= or $DIPNET_DATA/fashion-mnist)")
@strict_options("fashion-mnist")
def load_fashion_mnist(root: Any = None, n_test: int | None = None, split_seed: int = 0,
                       n_train: int | None = None) -> Dataset:
    return load_idx_folder("fashion-mnist", root, n_test, split_seed, CLASS_NAMES["fashion-mnist"], n_train=n_train)


@register_dataset("kmnist", "Kuzushiji-MNIST from IDX files (root= or $DIPNET_DATA/kmnist)")
@strict_options("kmnist")
def load_kmnist(root: Any = None, n_test: int | None = None, split_seed: int = 0, n_train: int | None = None) -> Dataset:
    return load_idx_folder("kmnist", root, n_test, split_seed, CLASS_NAMES["kmnist"], n_train=n_train)


@register_dataset("emnist", "EMNIST from IDX files of one split (root= or $DIPNET_DATA/emnist); images transposed upright")
@strict_options("emnist")
def load_emnist(root: Any = None, subset: str = "balanced", n_test: int | None = None, split_seed: int = 0,
                n_train: int | None = None, num_classes: int | None = None) -> Dataset:
    return load_idx_folder("emnist", root, n_test, split_seed, transpose=True, subset=f"-{subset}-", n_train=n_train,
                           num_classes=num_classes)
