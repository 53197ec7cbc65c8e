"""Data: registry, determinism, oracles (the mnist1d package itself, hand-written IDX/CIFAR files),
malformed-file errors that name the file, the shared MNIST split."""
from __future__ import annotations

import gzip
import os
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dipnet.data import DATASETS, load_dataset, mnist1d_shifted, read_idx, stratified_split
from dipnet.errors import ConfigError, DataError

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def test_registry_lists_every_loader():
    assert {"mnist1d", "digits", "mnist", "fashion-mnist", "kmnist", "emnist", "cifar10", "cifar100", "synthetic"} <= set(DATASETS.names())
    with pytest.raises(ConfigError, match="unknown dataset 'nope'; choose one of: .*mnist1d"):
        load_dataset("nope")


def test_mnist1d_equals_the_package_generator_and_keeps_global_rng():
    from mnist1d.data import get_dataset_args, make_dataset

    random.seed(123)
    np.random.seed(123)
    before = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    ds = load_dataset("mnist1d", val_size=0)
    assert (random.random(), np.random.rand()) == before, "loading must not reseed global RNGs"
    ref = make_dataset(get_dataset_args())
    assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
    assert np.allclose(ds.x_train.numpy(), ref["x"]) and np.array_equal(ds.y_train.numpy(), ref["y"])
    assert np.allclose(ds.x_test.numpy(), ref["x_test"]) and np.array_equal(ds.y_test.numpy(), ref["y_test"])
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.info.input_shape == (40,) and ds.info.num_classes == 10 and ds.info.bounds is None
    other = load_dataset("mnist1d", val_size=0, seed=0)
    assert not torch.equal(other.x_train, ds.x_train)
    assert torch.equal(load_dataset("mnist1d", val_size=0, seed=0).x_train, other.x_train)


def _roughness(x: torch.Tensor) -> float:
    """Mean squared first difference: grows with the generator's iid noise."""
    return float((x[:, 1:] - x[:, :-1]).pow(2).mean())


def test_mnist1d_shifts_turn_the_knob_monotonically():
    clean = load_dataset("mnist1d", val_size=0)
    x0, y0 = mnist1d_shifted("noise", 0, n=1000)
    # severity 0 is a fresh draw from the clean distribution: same roughness within sampling error
    assert abs(_roughness(x0) - _roughness(clean.x_test)) / _roughness(clean.x_test) < 0.1
    assert torch.bincount(y0, minlength=10).tolist() == [100] * 10
    rough = [_roughness(mnist1d_shifted("noise", s, n=500)[0]) for s in (1, 3, 5)]
    assert rough[0] < rough[1] < rough[2]
    shifted = load_dataset("mnist1d", val_size=0, shift="shear", severity=2)
    assert torch.equal(shifted.x_train, clean.x_train) and not torch.equal(shifted.x_test, clean.x_test)
    assert shifted.info.extra["shift"]["knobs"] == {"shear_scale": 0.75 * 2}
    with pytest.raises(ConfigError, match="unknown MNIST-1D shift 'blur'"):
        mnist1d_shifted("blur", 1)
    with pytest.raises(ConfigError, match="severity"):
        mnist1d_shifted("noise", 9)
    with pytest.raises(ConfigError, match="no option 'colour'"):
        load_dataset("mnist1d", val_size=0, colour=3)


def test_digits_split_is_fixed_and_stratified():
    from sklearn.datasets import load_digits

    a, b = load_dataset("digits", val_size=0), load_dataset("digits", val_size=0)
    assert torch.equal(a.x_test, b.x_test)
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert float(a.x_train.min()) == 0.0 and float(a.x_train.max()) == 1.0
    full = np.bincount(load_digits().target) / 1797
    assert np.abs(np.bincount(a.y_test.numpy()) / 360 - full).max() < 0.01


@pytest.mark.parametrize("seed", [0, 1])
def test_stratified_split_keeps_proportions(seed):
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    tr, te = stratified_split(y, 20, seed)
    assert len(te) == 20 and len(set(tr) | set(te)) == 100 and not set(tr) & set(te)
    assert np.bincount(y[te]).tolist() == [10, 6, 3, 1]


def write_idx(path: Path, array: np.ndarray, magic: int, gz: bool) -> Path:
    raw = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_and_test_only_split(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (100, 5, 4), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 10).astype(np.uint8)
    ext = ".gz" if gz else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", images, 2051, gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", labels, 2049, gz)
    assert np.array_equal(read_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}"), images)
    ds = load_dataset("mnist", val_size=0, root=tmp_path, n_test=20, split_seed=3)
    assert ds.x_train.shape == (80, 1, 5, 4) and ds.x_test.shape == (20, 1, 5, 4)
    assert torch.bincount(ds.y_test).tolist() == [2] * 10
    # every image lands in exactly one split, scaled by 1/255
    together = torch.cat([ds.x_train, ds.x_test]).flatten(1).mul(255).round().to(torch.uint8)
    assert sorted(map(bytes, together.numpy())) == sorted(map(bytes, images.reshape(100, -1)))


def test_idx_with_train_and_test_files(tmp_path):
    write_idx(tmp_path / "train-images.idx3-ubyte", np.zeros((6, 2, 2)), 2051, False)
    write_idx(tmp_path / "train-labels.idx1-ubyte", np.arange(6) % 3, 2049, False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.ones((3, 2, 2)), 2051, False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(3), 2049, False)
    ds = load_dataset("fashion-mnist", val_size=0, root=tmp_path)
    assert ds.x_train.shape == (6, 1, 2, 2) and float(ds.x_test.max()) == pytest.approx(1 / 255)
    assert ds.info.class_names[0] == "T-shirt/top"


def test_malformed_idx_files_name_the_file_and_the_problem(tmp_path):
    imgs = write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 3, 3)), 2051, False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(10), 2049, False)
    imgs.write_bytes(imgs.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: file is truncated: 101 bytes, header \(10, 3, 3\) implies 106"):
        load_dataset("mnist", val_size=0, root=tmp_path, n_test=2)
    write_idx(imgs, np.zeros((10, 3, 3)), 2049, False)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: magic number 2049, expected 2051"):
        load_dataset("mnist", val_size=0, root=tmp_path, n_test=2)
    write_idx(imgs, np.zeros((9, 3, 3)), 2051, False)
    with pytest.raises(DataError, match="holds 9 images but .* holds 10 labels"):
        load_dataset("mnist", val_size=0, root=tmp_path, n_test=2)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="labels file is missing"):
        load_dataset("mnist", val_size=0, root=tmp_path, n_test=2)
    bad_gz = tmp_path / "g" / "t10k-images-idx3-ubyte.gz"
    bad_gz.parent.mkdir()
    bad_gz.write_bytes(b"not gzip at all")
    write_idx(tmp_path / "g" / "t10k-labels-idx1-ubyte", np.zeros(3), 2049, False)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: cannot be read or decompressed"):
        load_dataset("mnist", val_size=0, root=tmp_path / "g")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", val_size=0, root=tmp_path / "missing")


def test_missing_data_points_to_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("DIPNET_DATA", str(tmp_path))
    with pytest.raises(DataError, match="nothing is downloaded: pass root=FOLDER"):
        load_dataset("kmnist", val_size=0)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="../shared/data/mnist (the real MNIST test set) is not present")
def test_shared_mnist_split_8000_2000():
    ds = load_dataset("mnist", val_size=0)
    assert ds.x_train.shape == (8000, 1, 28, 28) and ds.x_test.shape == (2000, 1, 28, 28)
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    full = torch.bincount(torch.cat([ds.y_train, ds.y_test]), minlength=10).float() / 10000
    assert (torch.bincount(ds.y_test, minlength=10).float() / 2000 - full).abs().max() < 0.01
    assert torch.equal(load_dataset("mnist", val_size=0).y_test, ds.y_test)


def write_cifar(folder: Path, n: int = 4, classes: int = 10) -> np.ndarray:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        first = data if first is None else first
        batch = {b"batch_label": name.encode(), b"labels": list(rng.integers(0, classes, n)), b"data": data,
                 b"filenames": [b"x.png"] * n}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(classes)], b"num_vis": 3072}, fh, protocol=2)
    return first


def test_cifar_official_format_round_trip(tmp_path):
    first = write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", val_size=0, root=tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert torch.allclose(ds.x_train[0], torch.from_numpy(first[0].reshape(3, 32, 32)).float() / 255)
    assert ds.info.class_names[:2] == ("c0", "c1") and ds.info.bounds == (0.0, 1.0)
    std = load_dataset("cifar10", val_size=0, root=tmp_path, standardize=True)
    lo, hi = std.info.bounds
    assert float(std.x_train.min()) >= lo - 1e-5 and float(std.x_train.max()) <= hi + 1e-5


class _Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_or_malformed_pickles_are_refused(tmp_path):
    write_cifar(tmp_path)
    evil = _Evil()
    evil.marker = str(tmp_path / "pwned")
    with open(tmp_path / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": evil, b"labels": []}, fh, protocol=2)
    with pytest.raises(DataError, match="data_batch_3: refused to load: global posix.system is not allowed"):
        load_dataset("cifar10", val_size=0, root=tmp_path)
    assert not (tmp_path / "pwned").exists(), "the payload must never run"
    write_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh, protocol=2)
    with pytest.raises(DataError, match=r"test_batch: b'data' must be a uint8 array of shape \(N, 3072\)"):
        load_dataset("cifar10", val_size=0, root=tmp_path)
    write_cifar(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"\x80\x02}q")
    with pytest.raises(DataError, match="data_batch_2: (not a valid CIFAR batch pickle|refused to load: pickle data was truncated)"):
        load_dataset("cifar10", val_size=0, root=tmp_path)
    write_cifar(tmp_path, classes=12)
    with pytest.raises(DataError, match=r"labels must lie in \[0, 10\)"):
        load_dataset("cifar10", val_size=0, root=tmp_path)


def test_synthetic_tasks_are_seeded():
    a, b = load_dataset("synthetic", val_size=0, seed=1), load_dataset("synthetic", val_size=0, seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    s = load_dataset("synthetic", val_size=0, task="spirals", n_train=100, n_test=50)
    assert s.x_train.shape == (100, 2) and set(s.y_train.tolist()) == {0, 1}
    with pytest.raises(ConfigError, match="unknown synthetic task"):
        load_dataset("synthetic", val_size=0, task="moons")


@pytest.mark.parametrize("name, option", [("digits", "foo"), ("mnist", "n_tset"), ("cifar10", "mean"),
                                          ("synthetic", "n_trian"), ("mnist1d", "colour"), ("emnist", "seed")])
def test_unknown_options_are_config_errors_listing_the_allowed_ones(name, option):
    with pytest.raises(ConfigError, match=f"dataset {name!r} has no option {option!r}; allowed: "):
        load_dataset(name, **{option: 1})


@pytest.mark.parametrize("shift", ["noise", "shear", "translation", "scale"])
def test_every_shift_turns_its_knobs_up_monotonically_from_the_package_defaults(shift):
    from mnist1d.data import get_dataset_args

    from dipnet.data.mnist1d import shift_knobs

    defaults = get_dataset_args(as_dict=True)
    levels = [shift_knobs(shift, s) for s in range(6)]
    for key in levels[0]:
        assert levels[0][key] == pytest.approx(defaults[key]), "severity 0 must be the clean generator"
        assert all(a[key] < b[key] for a, b in zip(levels, levels[1:]))


def test_data_root_precedence_on_a_built_folder_layout(tmp_path, monkeypatch):
    """root= beats $DIPNET_DATA/<name>, which beats ../shared/data/<name> beside the repository;
    every expected folder is written out by hand for a layout built here."""
    from dipnet.data._util import data_root

    repo = Path(__file__).resolve().parents[1]
    assert (repo / "pyproject.toml").is_file() and (repo / "src" / "dipnet").is_dir()
    shared = repo.parent / "shared" / "data"
    own, env = tmp_path / "own", tmp_path / "env"
    own.mkdir()
    (env / "fashion-mnist").mkdir(parents=True)
    monkeypatch.setenv("DIPNET_DATA", str(env))
    assert data_root(own, "fashion-mnist") == own
    assert data_root(str(own), "no-such-set") == own
    assert data_root(None, "fashion-mnist") == env / "fashion-mnist"
    with pytest.raises(DataError, match="does not exist"):  # a root that is missing never falls back
        data_root(tmp_path / "missing", "fashion-mnist")
    with pytest.raises(DataError) as err:
        data_root(None, "no-such-set")
    assert f"(looked in {env / 'no-such-set'}, {shared / 'no-such-set'})" in str(err.value)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DIPNET_DATA", "~/env")
    assert data_root(None, "fashion-mnist") == env / "fashion-mnist"
    assert data_root("~/own", "fashion-mnist") == own
    monkeypatch.setenv("DIPNET_DATA", "")
    with pytest.raises(DataError) as err:
        data_root(None, "fashion-mnist")
    assert f"(looked in {shared / 'fashion-mnist'})" in str(err.value)
    if (shared / "mnist").is_dir():
        monkeypatch.delenv("DIPNET_DATA")
        assert data_root(None, "mnist") == shared / "mnist"
        (env / "mnist").mkdir()
        monkeypatch.setenv("DIPNET_DATA", str(env))
        assert data_root(None, "mnist") == env / "mnist"
    # end to end: a loader given no root reads the files under $DIPNET_DATA/<name>
    images = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2) * 20
    write_idx(env / "fashion-mnist" / "train-images-idx3-ubyte", images, 2051, False)
    write_idx(env / "fashion-mnist" / "train-labels-idx1-ubyte", np.array([2, 0, 1]), 2049, False)
    write_idx(env / "fashion-mnist" / "t10k-images-idx3-ubyte", images[:1], 2051, False)
    write_idx(env / "fashion-mnist" / "t10k-labels-idx1-ubyte", np.array([2]), 2049, False)
    ds = load_dataset("fashion-mnist", val_size=0)
    assert ds.info.extra["folder"] == str(env / "fashion-mnist")
    assert ds.y_train.tolist() == [2, 0, 1] and torch.equal((ds.x_train[:, 0] * 255).round(), torch.from_numpy(images).float())


def test_cifar100_official_format_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 3)):
        batch = {b"filenames": [b"a.png"] * n, b"batch_label": name.encode(), b"fine_labels": [99, 0, 5, 7, 1, 2][:n],
                 b"coarse_labels": [19, 0, 1, 2, 3, 4][:n], b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"k{i}".encode() for i in range(20)]}, fh, protocol=2)
    ds = load_dataset("cifar100", val_size=0, root=tmp_path)
    assert ds.y_train.tolist() == [99, 0, 5, 7, 1, 2] and ds.y_test.tolist() == [99, 0, 5]
    assert ds.info.num_classes == 100 and ds.info.class_names[99] == "f99" and ds.y_train.dtype == torch.int64


@pytest.mark.parametrize("name,kwargs", [("mnist1d", {}), ("digits", {}), ("synthetic", {"n_train": 300})])
def test_validation_split_is_carved_from_train_stratified_and_fixed(name, kwargs):
    whole = load_dataset(name, val_size=0, **kwargs)
    ds = load_dataset(name, **kwargs)
    n = whole.x_train.shape[0]
    assert ds.x_val.shape[0] == round(n / 8) and ds.x_train.shape[0] + ds.x_val.shape[0] == n
    assert torch.equal(ds.x_test, whole.x_test)
    # oracle: the two parts, matched row by row against the original training set, partition it
    rows = {tuple(r.tolist()): i for i, r in enumerate(whole.x_train.flatten(1))}
    part = [rows[tuple(r.tolist())] for r in torch.cat([ds.x_train, ds.x_val]).flatten(1)]
    assert sorted(part) == list(range(n))
    labels = torch.cat([ds.y_train, ds.y_val])
    assert torch.equal(labels.sort().values, whole.y_train.sort().values)
    # stratified: every class's share in validation within one example of its share in train
    for c in whole.y_train.unique():
        expected = (whole.y_train == c).sum().item() * ds.x_val.shape[0] / n
        assert abs((ds.y_val == c).sum().item() - expected) <= 1
    again = load_dataset(name, **kwargs)
    assert torch.equal(again.x_val, ds.x_val) and ds.info.extra["val"] == {"size": ds.x_val.shape[0], "seed": 0, "from": "train"}
    other = load_dataset(name, val_seed=1, **kwargs)
    assert not torch.equal(other.x_val, ds.x_val)


def test_validation_size_as_count_or_fraction_and_bad_values():
    assert load_dataset("synthetic", val_size=100).x_val.shape[0] == 100
    assert load_dataset("synthetic", val_size=0.25).x_val.shape[0] == 128
    assert load_dataset("synthetic", val_size="0.25").x_val.shape[0] == 128
    assert not load_dataset("synthetic", val_size=0).has_val
    for bad in (-1, 512, 1.5, "many"):
        with pytest.raises(ConfigError, match="val_size"):
            load_dataset("synthetic", val_size=bad)
