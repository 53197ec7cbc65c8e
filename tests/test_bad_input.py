"""Issue 18's catalogue of bad inputs, each one now one line and exit 2 (a failed run: exit 1),
never a traceback. Destructive cases run in temporary folders."""
from __future__ import annotations

import gzip
import json
import pickle
import sqlite3
import struct

import numpy as np
import pytest

from clirun import cli

FAST = ["--model", "mlp", "--epochs", "1", "--progress", "none", "--threads", "1"]


def one_line(code: int, err: str, needle: str, expected: int = 2) -> None:
    assert code == expected, (code, err)
    assert needle in err, err
    assert len(err.splitlines()) == 1, err


@pytest.mark.parametrize("arg, needle", [
    ("seed=abc", "mnist1d.seed must be"), ("seed=-5", "mnist1d.seed must be"),
    ("num_samples=0", "mnist1d.num_samples must be"), ("num_samples=-10", "mnist1d.num_samples must be"),
    ("num_samples=nan", "mnist1d.num_samples must be"),
])
def test_mnist1d_generator_options(capsys, tmp_path, arg, needle):
    one_line(*cli(capsys, "train", "--data", "mnist1d", "--data-arg", arg, *FAST, "--out", str(tmp_path / "r")), needle)


@pytest.mark.parametrize("flag, value, needle", [
    ("--seed", "1180591620717411303424", "seed must be an integer"), ("--lr", "1e300", "lr must be a number in"),
    ("--lr", "nan", "lr must be"), ("--epochs", "1.5", "epochs must be an integer"),
])
def test_training_options_out_of_range(capsys, tmp_path, flag, value, needle):
    one_line(*cli(capsys, "train", "--data", "synthetic", *FAST, flag, value, "--out", str(tmp_path / "r")), needle)


@pytest.mark.parametrize("threads", ["0", "-3", "x"])
def test_compare_threads(capsys, tmp_path, threads):
    one_line(*cli(capsys, "compare", "default", "--threads", threads, "--store", str(tmp_path / "s.sqlite")),
             "--threads must be")


def _store(tmp_path):
    from dipnet.experiments import parse_suite, run_suite

    def fake(config, run_dir):
        return {"final": {"test_acc": 0.5, "val_acc": 0.5}, "history": []}

    path = tmp_path / "s.sqlite"
    run_suite(parse_suite('name = "s"\n[tasks.t]\ndata = "synthetic"\nmodel = "mlp"\n[methods.erm]\n'
                          '[methods.input-noise]\n', "s.toml"), path, train_fn=fake)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def test_store_with_a_corrupted_json_field(capsys, tmp_path):
    path = _store(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET results = '{broken' WHERE rowid = 1")
    one_line(*cli(capsys, "report", "--store", str(path), "-o", str(tmp_path / "rep")), "damaged record")


def test_store_with_a_corrupted_page(capsys, tmp_path):
    path = _store(tmp_path)
    raw = bytearray(path.read_bytes())
    for i in range(4096, min(len(raw), 4096 * 3)):  # the second and third pages
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    (path.with_name(path.name + "-wal")).unlink(missing_ok=True)
    code, err = cli(capsys, "report", "--store", str(path), "-o", str(tmp_path / "rep"))
    one_line(code, err, "damaged")


def test_report_destinations_and_contents(capsys, tmp_path):
    path = _store(tmp_path)
    (tmp_path / "file").write_text("x")
    one_line(*cli(capsys, "report", "--store", str(path), "-o", str(tmp_path / "file")), "is a file")
    one_line(*cli(capsys, "report", "--store", str(path), "--suite", "nosuch", "-o", str(tmp_path / "r")),
             "no suite 'nosuch'")
    empty = tmp_path / "empty.sqlite"
    from dipnet.experiments import RunStore

    RunStore(empty).close()
    one_line(*cli(capsys, "report", "--store", str(empty), "-o", str(tmp_path / "r2")), "holds no runs yet")


def _idx(path, array, magic):
    path.write_bytes(struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.astype(np.uint8).tobytes())


def test_idx_files_that_disagree(capsys, tmp_path):
    _idx(tmp_path / "train-images-idx3-ubyte", np.zeros((20, 4, 4)), 2051)
    _idx(tmp_path / "train-labels-idx1-ubyte", np.arange(20) % 10, 2049)
    _idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 5, 5)), 2051)
    _idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(10) % 10, 2049)
    args = ["train", "--data", "mnist", "--data-arg", f"root={tmp_path}", *FAST, "--out", str(tmp_path / "r")]
    one_line(*cli(capsys, *args), "4x4 but test images 5x5")
    _idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 4, 4)), 2051)
    _idx(tmp_path / "train-labels-idx1-ubyte", np.full(20, 255), 2049)
    one_line(*cli(capsys, *args), "outside [0, 10)")
    _idx(tmp_path / "train-images-idx3-ubyte", np.zeros((0, 4, 4)), 2051)
    _idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(0), 2049)
    one_line(*cli(capsys, *args), "holds no images")
    _idx(tmp_path / "train-images-idx3-ubyte", np.zeros((20, 4, 4)), 2051)
    _idx(tmp_path / "train-labels-idx1-ubyte", np.arange(20) % 10, 2049)
    raw = bytearray((tmp_path / "t10k-images-idx3-ubyte").read_bytes())
    raw[4:8] = struct.pack(">i", -10)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(bytes(raw))
    one_line(*cli(capsys, *args), "negative dimensions")


def test_idx_subsets(tmp_path):
    from dipnet.data import load_dataset

    _idx(tmp_path / "train-images-idx3-ubyte", np.zeros((100, 4, 4)), 2051)
    _idx(tmp_path / "train-labels-idx1-ubyte", np.arange(100) % 10, 2049)
    _idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((50, 4, 4)), 2051)
    _idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(50) % 10, 2049)
    ds = load_dataset("mnist", root=tmp_path, n_train=40, n_test=20, val_size=0)
    assert ds.x_train.shape[0] == 40 and ds.x_test.shape[0] == 20
    assert np.bincount(ds.y_train.numpy()).tolist() == [4] * 10  # stratified
    with pytest.raises(Exception, match="n_train=200 asks for more"):
        load_dataset("mnist", root=tmp_path, n_train=200)


def _cifar(folder, labels=None, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"labels": labels if labels is not None else [1, 2], b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names if names is not None
                                                        else [b"c%d" % i for i in range(10)]}, protocol=2))


@pytest.mark.parametrize("labels, names, needle", [
    (["cat", "dog"], None, "list of integer class indices"),
    (None, "airplane", "must be a list of 10 names"),
])
def test_cifar_with_wrong_labels(capsys, tmp_path, labels, names, needle):
    _cifar(tmp_path / "c", labels, names)
    one_line(*cli(capsys, "train", "--data", "cifar10", "--data-arg", f"root={tmp_path / 'c'}", *FAST,
                  "--out", str(tmp_path / "r")), needle)


def test_cifar_nested_shared_lists_are_refused_small(capsys, tmp_path):
    """A few hundred bytes of nested lists sharing one another expand without bound in np.asarray."""
    folder = tmp_path / "c"
    _cifar(folder)
    nested: list = [0]
    for _ in range(40):
        nested = [nested, nested]
    assert len(pickle.dumps(nested, protocol=2)) < 400  # 2^40 leaves behind a few hundred bytes
    raw = pickle.dumps({b"labels": nested, b"data": np.zeros((2, 3072), np.uint8)}, protocol=2)
    (folder / "test_batch").write_bytes(raw)
    one_line(*cli(capsys, "train", "--data", "cifar10", "--data-arg", f"root={folder}", *FAST,
                  "--out", str(tmp_path / "r")), "integer class indices")


def test_huge_models_and_suites_are_refused_before_they_start(capsys, tmp_path):
    one_line(*cli(capsys, "train", "--data", "synthetic", *FAST, "--model-arg", "depth=1000000000",
                  "--out", str(tmp_path / "r")), "MLP.depth must be an integer in")
    one_line(*cli(capsys, "train", "--data", "synthetic", *FAST, "--model-arg", "width=100000",
                  "--out", str(tmp_path / "r")), "GiB for weights, gradients and optimizer state")
    suite = tmp_path / "big.toml"
    suite.write_text("seeds = 100\n[tasks.t]\ndata = \"synthetic\"\nmodel = \"mlp\"\n[methods.sam]\n"
                     "sweep = { rho = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.11] }\n")
    one_line(*cli(capsys, "compare", str(suite), "--store", str(tmp_path / "s.sqlite")), "pass --yes")
    suite.write_text("seeds = 100000000\n[tasks.t]\ndata = \"synthetic\"\nmodel = \"mlp\"\n[methods.erm]\n")
    one_line(*cli(capsys, "compare", str(suite), "--store", str(tmp_path / "s.sqlite")), "seeds (a count) must be")


@pytest.mark.parametrize("line, needle", [
    ('data_kwargs = { colour = 1 }', "has no option 'colour'"),
    ('model_kwargs = { widht = 4 }', "has no option 'widht'"),
    ('device = "tpu9"', "unknown device 'tpu9'"),
])
def test_suite_keys_are_checked_when_the_suite_loads(capsys, tmp_path, line, needle):
    suite = tmp_path / "s.toml"
    suite.write_text(f'[tasks.t]\ndata = "synthetic"\nmodel = "mlp"\n{line}\n[methods.erm]\n')
    one_line(*cli(capsys, "compare", str(suite), "--store", str(tmp_path / "s.sqlite")), needle)
