"""Fuzzers (issues 18 and 26), seeded and bounded in time: the command line over random arguments,
the file readers over mutated bytes (IDX, CIFAR pickles, the SQLite run store, safetensors
checkpoints), sizes on train and finetune, suite TOML shapes and the public API's argument types.
Every outcome must be a result or one clear error: never a traceback or a hang."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import pickle
import random
import sqlite3
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dipnet.cli import build_parser, main
from dipnet.data import load_dataset
from dipnet.engine.checkpoint import load_checkpoint, save_checkpoint
from dipnet.errors import DipnetError
from dipnet.experiments import RunStore, parse_suite, run_suite
from dipnet.methods import METHODS

BUDGET_S = 25.0
VALUES = ["0", "-1", "1", "2", "0.5", "-0.5", "1e300", "-1e300", "1e-300", "nan", "inf", "-inf", "abc", "",
          "1180591620717411303424", "relative", "absolute", "cuda", "cpu", "none", "true", "false", "1,2,3",
          "a,b", "/", "/etc/passwd", "x=1", "seed=abc", "widths=0", "depth=-1", "--", "é", "0x10", "[1]", "{}"]
SUBCOMMANDS = ["train", "eval", "measure", "robust", "compare", "report", "methods", "datasets", "models"]


def _options(command: str) -> list[str]:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    flags = [s for a in sub._actions for s in a.option_strings if s.startswith("--") and s not in ("--help",)]
    if command == "train":
        for name in METHODS.names():
            if name != "erm":
                flags += [f"--{name}.{f}" for f in METHODS.get(name).__dataclass_fields__]
                flags += [f"--{f.replace('_', '-')}" for f in METHODS.get(name).__dataclass_fields__]
    return flags + ["--no-such-flag"]


def _no_traceback(argv: list[str], capsys) -> int:
    """Run one command line: exit 0/1/2/130 with no traceback, else the test fails."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except Exception as exc:  # noqa: BLE001 - this is what the fuzzer hunts
            pytest.fail(f"dipnet {' '.join(argv)!r} raised {type(exc).__name__}: {exc}")
    text = err.getvalue() + capsys.readouterr().err
    assert "Traceback" not in text and code in (0, 1, 2, 130), (argv, code, text)
    return code


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("fuzz") / "run"
    assert main(["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--out", str(run),
                 "--progress", "none", "--threads", "1"]) == 0
    return run


def test_cli_fuzzer_finds_no_traceback(tiny_run, tmp_path, monkeypatch, capsys):
    """Random command lines (seeded): each ends in exit 0/1/2 with one line, or trains a tiny run.
    It runs in a temporary folder: relative paths the fuzzer makes up land there."""
    monkeypatch.chdir(tmp_path)
    import dipnet.experiments
    from dipnet.engine import Trainer

    def stop(*args, **kwargs):  # a valid command got through every check: stop before any training
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", stop)
    monkeypatch.setattr(dipnet.experiments, "run_suite", stop)
    monkeypatch.setattr("dipnet.cli.train.launch_processes", stop)  # train --nproc N: before the processes start
    rng = random.Random(18)
    options = {c: _options(c) for c in SUBCOMMANDS}
    positional = {"eval": str(tiny_run), "measure": str(tiny_run), "robust": str(tiny_run), "compare": "default",
                  "report": str(tmp_path / "none.sqlite")}
    deadline, cases = time.time() + BUDGET_S, 0
    while time.time() < deadline and cases < 600:
        command = rng.choice(SUBCOMMANDS)
        argv = [command]
        if command in positional and rng.random() < 0.8:
            argv.append(rng.choice([positional[command], rng.choice(VALUES)]))
        for _ in range(rng.randint(0, 5)):
            argv.append(rng.choice(options[command]))
            if rng.random() < 0.85:
                argv.append(rng.choice(VALUES + [str(tmp_path / "out")]))
        if command in ("measure", "robust"):
            argv += ["--n", "8", "--threads", "1"]
            if command == "robust":
                argv += ["--steps", "1", "--corruptions", "none", "--no-shift"]
            else:
                argv += ["--what", "jacobian,lipschitz"]
        _no_traceback(argv, capsys)
        cases += 1
    assert cases >= 50


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    kind = rng.random()
    if kind < 0.3 and data:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind < 0.5:
        data = data[: rng.randrange(len(data) + 1)]
    elif kind < 0.7:
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind < 0.85 and len(data) > 8:
        i = rng.randrange(len(data) - 4)
        data[i:i + 4] = struct.pack(">i", rng.choice([-1, 0, 2**31 - 1, 7, 2051, 2049]))
    else:
        data = bytearray(rng.randbytes(rng.randint(0, 200)))
    return bytes(data)


def _fuzz_files(make, load, seconds: float, allowed=(DipnetError,)) -> int:
    rng, n, deadline = random.Random(7), 0, time.time() + seconds
    originals = make()
    while time.time() < deadline and n < 300:
        for path, raw in originals.items():
            path.write_bytes(_mutate(raw, rng) if rng.random() < 0.7 else raw)
        try:
            load()
        except allowed:
            pass
        n += 1
    return n


def test_idx_reader_fuzzed(tmp_path):
    def make():
        rng = np.random.default_rng(0)
        img = rng.integers(0, 256, (30, 4, 4), dtype=np.uint8)
        lab = (np.arange(30) % 10).astype(np.uint8)
        out = {}
        for name, arr, magic in (("t10k-images-idx3-ubyte", img, 2051), ("t10k-labels-idx1-ubyte", lab, 2049)):
            raw = struct.pack(">i", magic) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.tobytes()
            (tmp_path / name).write_bytes(raw)
            out[tmp_path / name] = raw
        return out

    assert _fuzz_files(make, lambda: load_dataset("mnist", root=tmp_path, n_test=10, val_size=0), 4) > 20


def test_cifar_reader_fuzzed(tmp_path):
    folder = tmp_path / "cifar10"

    def make():
        folder.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        out = {}
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"labels": list(rng.integers(0, 10, 3)), b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8)}
            raw = pickle.dumps(batch, protocol=2)
            (folder / name).write_bytes(raw)
            out[folder / name] = raw
        meta = pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol=2)
        (folder / "batches.meta").write_bytes(meta)
        out[folder / "batches.meta"] = meta
        return out

    assert _fuzz_files(make, lambda: load_dataset("cifar10", root=folder, val_size=0), 4) > 10


def test_run_store_fuzzed(tmp_path):
    store = tmp_path / "s.sqlite"
    suite = parse_suite('[tasks.t]\ndata = "synthetic"\nmodel = "mlp"\n[methods.erm]\n[methods.input-noise]\n',
                        "s.toml")

    def fake(config, run_dir):
        return {"final": {"test_acc": 0.5, "val_acc": 0.5}, "history": []}

    run_suite(suite, store, train_fn=fake)
    with sqlite3.connect(store) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for extra in (store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")):
        extra.unlink(missing_ok=True)

    def load():
        from dipnet.experiments import write_report

        with RunStore(store, create=False) as s:
            s.runs()
            s.suites()
        write_report(store, tmp_path / "rep")

    assert _fuzz_files(lambda: {store: store.read_bytes()}, load, 5) > 10


def test_checkpoint_reader_fuzzed(tmp_path):
    path = tmp_path / "c.safetensors"

    def make():
        save_checkpoint(path, {"w": torch.randn(4, 3)}, {"epoch": 1, "history": [{"a": 1.0}], "t": torch.ones(2)})
        return {path: path.read_bytes()}

    assert _fuzz_files(make, lambda: load_checkpoint(path), 3) > 20
    json.dumps({})  # the reader never needed anything but safetensors and JSON


# ---------------------------------------------------------------- issue 26: sizes, suite shapes, API types

SIZES = ["0", "1", "2", "3", "1000", "100000", "1000000", "1000000000", "1000000000000", "1e12", "1e300", "-1",
         "9223372036854775808", "2.5", "nan", "inf"]
TRAIN_SIZES = ["--epochs", "--batch-size", "--eval-batch-size", "--train-eval-max", "--trajectories", "--warmup-epochs",
               "--data-arg n_train=", "--data-arg n_test=", "--data-arg dim=", "--model-arg width=", "--model-arg depth="]
FINETUNE_SIZES = ["--steps", "--train-size", "--val-size", "--test-size", "--lora-r", "--eval-samples", "--trajectories",
                  "--batch-size", "--max-new-tokens", "--warmup-steps", "--eval-batch-size"]


def _size_args(rng: random.Random, flags: list[str]) -> list[str]:
    out: list[str] = []
    for flag in rng.sample(flags, rng.randint(1, 3)):
        value = rng.choice(SIZES)
        out += flag.split(" ")[:-1] + [flag.split(" ")[-1] + value] if flag.endswith("=") else [flag, value]
    return out


def test_sizes_fuzzer_refuses_or_stops_before_work(tmp_path, monkeypatch, capsys):
    """Random sizes on train and finetune: each is refused in one line before any work, or gets
    through every check (and stops there: training is replaced by Ctrl-C)."""
    from dipnet.engine import Trainer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("dipnet.schema.available_memory", lambda device=None: 2**29)  # a 512 MiB machine: a
    # valid size this machine could hold (3 GiB of data) is refused here instead of being allocated
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    monkeypatch.setattr("dipnet.cli.train.launch_processes", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    rng, deadline, cases = random.Random(26), time.time() + 5, 0
    base = ["train", "--data", "synthetic", "--model", "mlp", "--method", "dipnet", "--progress", "none", "--threads", "1"]
    while time.time() < deadline and cases < 150:
        _no_traceback(base + _size_args(rng, TRAIN_SIZES) + ["--out", str(tmp_path / f"r{cases}")], capsys)
        cases += 1
    assert cases >= 20
    if importlib.util.find_spec("reasoning_gym") is None or importlib.util.find_spec("peft") is None:
        return
    from dipnet.llm import Finetuner

    monkeypatch.setattr(Finetuner, "fit", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    monkeypatch.setattr("dipnet.llm.tasks.MAX_PREPARE_S", 2.0)
    base = ["finetune", "--model", "tiny-llama", "--train-size", "40", "--val-size", "4", "--test-size", "8",
            "--method", "dipnet", "--progress", "none", "--threads", "1"]
    for case in range(2):
        _no_traceback(base + _size_args(rng, FINETUNE_SIZES) + ["--out", str(tmp_path / f"f{case}")], capsys)


SUITE_BASE = 'name = "z"\nseeds = [0, 1]\n[train]\nepochs = 2\n[tasks.t]\ndata = "synthetic"\nmodel = "mlp"\n[methods.erm]\n'


def _suite_text(rng: random.Random) -> str:
    """A suite with one random change of shape: deep nesting, long dotted keys, big sweeps,
    values of the wrong TOML type, tables where values go, huge counts."""
    deep = rng.choice([1, 5, 31, 32, 33, 200, 5000])
    value = rng.choice(['"3"', "3.0", "1e12", "-1", "true", "[]", "{}", '"none"', "inf", "nan", "1e300", '"é"'])
    edits = [
        lambda t: t + "[methods.sam]\nsweep = { " + ", ".join(
            f"k{i} = [{', '.join(map(str, range(rng.randint(1, 60))))}]" for i in range(rng.randint(1, 12))) + " }\n",
        lambda t: t + "[methods.sam]\nsweep = { rho = [" + ", ".join(f"{0.01 * (i + 1):.2f}" for i in range(rng.randint(1, 600))) + "] }\n",
        lambda t: "x = " + "[" * deep + "]" * deep + "\n" + t,
        lambda t: "x = " + "{a = " * deep + "1" + "}" * deep + "\n" + t,
        lambda t: "x" + ".x" * deep + " = 1\n" + t,
        lambda t: t.replace("epochs = 2", f"epochs = {value}"),
        lambda t: t.replace("seeds = [0, 1]", "seeds = " + rng.choice(['[0, "1"]', "1e3", "100000", "[]", "[-1]", value])),
        lambda t: t.replace('model = "mlp"', f"model = {value}"),
        lambda t: t.replace("[methods.erm]", f"[methods.erm]\nparams = {{ x = {value} }}"),
        lambda t: t + f"[methods.sam]\nparams = {{ rho = {value} }}\n",
        lambda t: t.replace("[train]", f"[train]\nbatch_size = {value}\nlr = {value}"),
        lambda t: t.replace("[tasks.t]", "[tasks.t]\ndata_kwargs = { n_train = " + rng.choice(SIZES).replace("nan", "1") + " }"),
        lambda t: t.replace('data = "synthetic"', 'data = [' + ", ".join(['"synthetic"'] * rng.randint(1, 40)) + "]"),
        lambda t: t + "tasks = 5\n",
        lambda t: t[: rng.randrange(len(t))],
    ]
    text = SUITE_BASE
    for _ in range(rng.randint(1, 2)):
        text = rng.choice(edits)(text)
    return text


def test_suite_shapes_fuzzer_parses_or_refuses_in_one_line():
    rng, deadline, cases = random.Random(2626), time.time() + 8, 0
    while time.time() < deadline and cases < 400:
        text = _suite_text(rng)
        try:
            suite = parse_suite(text, "z.toml")
            assert len(suite.expand()) <= 1000
        except DipnetError as exc:
            assert "\n" not in str(exc).strip() or "invalid TOML" in str(exc), (text[:200], exc)
        except Exception as exc:  # noqa: BLE001 - this is what the fuzzer hunts
            pytest.fail(f"{text[:300]!r} raised {type(exc).__name__}: {exc}")
        cases += 1
    assert cases >= 50


def test_api_types_fuzzer_refuses_each_wrong_argument(tmp_path):
    """One argument of a public entry point replaced by a value of a wrong type: a DipnetError in
    one line, before any work (training would be stopped by the fit stub)."""
    from torch import nn

    import dipnet

    cfg = dipnet.TrainConfig(data="synthetic", epochs=1, progress="none")
    model, x, y = nn.Linear(10, 3), torch.zeros(4, 10), torch.zeros(4, dtype=torch.long)
    wrong = {"config": [None, 5, "x", {"data": "synthetic"}, [], model],
             "module": [None, 5, "x", [], {}, x, b"m"],
             "tensor": [None, 5, "x", [[1.0] * 10] * 4, model, (1, 2)],
             "data": [5, "mnist1d", [], {}, x],
             "path": [None, 5, 1.5, [], {}, x]}
    calls = {
        "config": [lambda a: dipnet.train(a), lambda a: dipnet.engine.Trainer(a)],
        "module": [dipnet.strip, dipnet.project, lambda a: dipnet.predict(a, x), lambda a: dipnet.DIPNetLoss()(a, x, y),
                   lambda a: dipnet.projections(a)],
        "tensor": [lambda a: dipnet.predict(model, a), lambda a: dipnet.DIPNetLoss()(model, a, y),
                   lambda a: dipnet.DIPNetLoss()(model, x, a)],
        "data": [lambda a: dipnet.train(cfg, dataset=a), lambda a: dipnet.train(cfg, model=a)],
        "path": [lambda a: dipnet.load_run(a)],
    }
    rng = random.Random(2627)
    for _ in range(200):
        kind = rng.choice(list(calls))
        value, call = rng.choice(wrong[kind]), rng.choice(calls[kind])
        with pytest.raises(DipnetError) as err:
            call(value)
        assert "\n" not in str(err.value), str(err.value)
    for name in ("epochs", "lr", "data", "method_params", "milestones", "grad_clip", "seed"):
        for value in (object(), b"x", {1, 2}):
            with pytest.raises(DipnetError):
                dipnet.TrainConfig(**{name: value})


# ---------------------------------------------------------------- links and Ray addresses (issue 26)

def test_links_fuzzer_never_writes_through_a_link(tiny_run, tmp_path, monkeypatch, capsys):
    """Every output path of train, measure, robust and report (seeded choices), as a link to a decoy
    file or as a folder holding links where dipnet writes its files: refused or written beside, and
    the decoy's bytes never change."""
    monkeypatch.chdir(tmp_path)
    decoy = tmp_path / "decoy.txt"
    decoy.write_bytes(b"someone else's notes\n")
    store = tmp_path / "s.sqlite"
    suite = tmp_path / "z.toml"
    suite.write_text('name = "z"\nseeds = [0]\n[train]\nepochs = 1\n[tasks.t]\ndata = "synthetic"\nmodel = "mlp"\n'
                     '[methods.erm]\n')
    assert main(["compare", str(suite), "--store", str(store), "--threads", "1"]) == 0
    capsys.readouterr()
    commands = {
        "train": lambda out: ["train", "--data", "synthetic", "--model", "mlp", "--epochs", "1", "--progress", "none",
                              "--threads", "1", "--out", out],
        "measure": lambda out: ["measure", str(tiny_run), "--what", "jacobian", "--n", "8", "--threads", "1",
                                "--out", out],
        "robust": lambda out: ["robust", str(tiny_run), "--attacks", "fgsm", "--corruptions", "none", "--no-shift",
                               "--n", "8", "--threads", "1", "--out", out],
        "report": lambda out: ["report", "--store", str(store), "--out", out],
    }
    own = ["run.json", ".dipnet.lock", "checkpoint.safetensors", "model.safetensors", "report.md", "report.html"]
    rng = random.Random(2626)
    for case in range(12):
        name = rng.choice(sorted(commands))
        where = tmp_path / f"c{case}"
        if name in ("train", "report") and rng.random() < 0.5:
            where.mkdir()  # a folder whose dipnet files are links to the decoy
            for f in rng.sample(own, 3):
                (where / f).symlink_to(decoy)
            out = where
        else:
            out = where.with_suffix(".json")
            out.symlink_to(decoy)
        _no_traceback(commands[name](str(out)), capsys)
        assert decoy.read_bytes() == b"someone else's notes\n", (name, out)


def test_ray_address_fuzzer_refuses_in_one_line_without_starting_ray(tmp_path, monkeypatch, capsys):
    """Malformed and unreachable (loopback) Ray addresses: one line each, within seconds, and Ray
    is never started."""
    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "z.toml"
    suite.write_text('name = "z"\nseeds = [0]\n[train]\nepochs = 1\n[tasks.t]\ndata = "synthetic"\nmodel = "mlp"\n'
                     '[methods.erm]\n')
    rng = random.Random(77)
    shapes = ["", " ", ":", "127.0.0.1", "127.0.0.1:", ":6379", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:-1",
              "127.0.0.1:abc", "not an address", "ray://", "ray://127.0.0.1:1", "http://127.0.0.1:1", "127.0.0.1:1:2",
              "[::1]:1", "é:1", "127.0.0.1:99999999999999999999"]
    shapes += [f"127.0.0.1:{rng.randint(1, 1023)}" for _ in range(4)]  # closed loopback ports
    started = []
    monkeypatch.setattr("ray.init", lambda *a, **k: started.append(a) or (_ for _ in ()).throw(AssertionError("ray.init")),
                        raising=False)
    for address in shapes:
        t = time.time()
        code = _no_traceback(["compare", str(suite), "--store", str(tmp_path / "s.sqlite"), "--executor", "ray",
                              "--address", address, "--connect-timeout", "1", "--threads", "1"], capsys)
        assert code == 2 and time.time() - t < 15, (address, code)
    assert not started
