"""Hardening (issue 18): dipnet deletes only what it wrote, refuses a second writer, detects a
corrupted checkpoint, stops a diverging run, and treats SIGTERM like Ctrl-C."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dipnet.data import Dataset, load_dataset
from dipnet.engine import RunDirectory, TrainConfig, train
from dipnet.errors import ConfigError, DataError

from clirun import cli

FAST = ["--data", "synthetic", "--model", "mlp", "--epochs", "2", "--batch-size", "64", "--progress", "none"]


@pytest.fixture
def no_deletion(monkeypatch):
    """Record every deletion call instead of letting any happen outside the run files."""
    calls = []
    real_unlink = Path.unlink

    def unlink(self, *a, **k):
        calls.append(("unlink", str(self)))
        return real_unlink(self, *a, **k)

    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: calls.append(("rmtree", a)))
    monkeypatch.setattr(Path, "unlink", unlink)
    return calls


def test_overwrite_refuses_a_folder_that_is_not_a_dipnet_run(capsys, tmp_path, no_deletion):
    folder = tmp_path / "u"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    code, err = cli(capsys, "train", *FAST, "--out", str(folder), "--overwrite")
    assert code == 2 and "not a dipnet run directory" in err and len(err.strip().splitlines()) == 1
    assert (folder / "thesis.tex").read_text() == "years of work" and not no_deletion


@pytest.mark.parametrize("target", ["/", str(Path.home())])
def test_overwrite_of_root_or_home_deletes_nothing(capsys, target, no_deletion):
    if (Path(target) / "run.json").exists():
        pytest.skip(f"{target} holds a run.json")
    code, err = cli(capsys, "train", *FAST, "--out", target, "--overwrite")
    assert code == 2 and "dipnet will not delete it" in err and not no_deletion


def test_a_good_run_survives_a_command_that_fails_before_training(capsys, tmp_path):
    run = tmp_path / "good"
    assert cli(capsys, "train", *FAST, "--out", str(run))[0] == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, err = cli(capsys, "train", "--data", "mnist", "--data-arg", f"root={tmp_path / 'nope'}", "--model", "mlp",
                    "--out", str(run), "--overwrite", "--progress", "none")
    assert code == 2 and "does not exist" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_overwrite_deletes_only_dipnets_files(capsys, tmp_path):
    run = tmp_path / "r"
    assert cli(capsys, "train", *FAST, "--out", str(run))[0] == 0
    (run / "notes.txt").write_text("mine")
    assert cli(capsys, "train", *FAST, "--out", str(run), "--overwrite", "--seed", "1")[0] == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert json.loads((run / "run.json").read_text())["config"]["seed"] == 1


def test_foreign_run_json_and_a_file_as_out_are_refused(capsys, tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "run.json").write_text('{"experiment": "someone else"}')
    code, err = cli(capsys, "train", *FAST, "--out", str(tmp_path / "f"))
    assert code == 2 and "did not write" in err
    assert json.loads((tmp_path / "f" / "run.json").read_text()) == {"experiment": "someone else"}
    (tmp_path / "file").write_text("x")
    code, err = cli(capsys, "train", *FAST, "--out", str(tmp_path / "file"))
    assert code == 2 and "is a file" in err


def test_a_second_writer_is_refused(capsys, tmp_path):
    run = tmp_path / "r"
    holder = RunDirectory(run, TrainConfig())
    with holder.locked():
        code, err = cli(capsys, "train", *FAST, "--out", str(run))
    assert code == 2 and f"being written by process {os.getpid()}" in err
    assert cli(capsys, "train", *FAST, "--out", str(run))[0] == 0  # the lock went with its holder


def _flip_mantissa_bits(path: Path, n: int = 3) -> None:
    """Flip the lowest bit of ``n`` float32 values in the safetensors data section (not the header)."""
    raw = bytearray(path.read_bytes())
    header = int.from_bytes(raw[:8], "little")
    start = 8 + header
    for i in range(n):
        raw[start + 4 * (7 + 13 * i)] ^= 1
    path.write_bytes(bytes(raw))


def test_corrupted_checkpoint_is_refused_not_resumed(capsys, tmp_path):
    run = tmp_path / "r"
    cfg = TrainConfig(data="synthetic", model="mlp", epochs=3, batch_size=64, out=str(run), progress="none")

    def stop(row):  # after epoch 1's record, before its checkpoint: epoch 0's checkpoint stays
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[stop])
    _flip_mantissa_bits(run / "checkpoint.safetensors")
    with pytest.raises(DataError, match="corrupted"):
        train(cfg)
    code, err = cli(capsys, "train", *FAST[:4], "--epochs", "3", "--batch-size", "64", "--out", str(run),
                    "--progress", "none")
    assert code == 2 and "corrupted" in err


def test_corrupted_or_truncated_final_weights_are_one_line(capsys, tmp_path):
    run = tmp_path / "r"
    assert cli(capsys, "train", *FAST, "--out", str(run))[0] == 0
    weights = run / "model.safetensors"
    good = weights.read_bytes()
    _flip_mantissa_bits(weights, 1)
    code, err = cli(capsys, "eval", str(run))
    assert code == 2 and "corrupted" in err
    weights.write_bytes(good[: len(good) // 2])
    for command in ("eval", "measure"):
        code, err = cli(capsys, command, str(run))
        assert code == 2 and "damaged" in err


def test_resume_on_other_data_is_refused(tmp_path):
    ds = load_dataset("synthetic")
    cfg = TrainConfig(data="synthetic", model="mlp", epochs=2, batch_size=64, out=str(tmp_path / "r"), progress="none")

    def stop(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, dataset=ds, callbacks=[stop])
    other = Dataset(ds.x_train + 1.0, ds.y_train, ds.x_test, ds.y_test, ds.info)
    with pytest.raises(ConfigError, match="other data"):
        train(cfg, dataset=other)
    assert train(cfg, dataset=ds).final["epochs"] == 2


@pytest.mark.parametrize("method", ["erm", "sam", "mrwp", "icp", "dipnet"])
def test_divergence_stops_every_method_with_its_step(capsys, tmp_path, method):
    run = tmp_path / "r"
    code, err = cli(capsys, "train", "--data", "synthetic", "--model", "mlp", "--method", method, "--lr", "1e6",
                    "--epochs", "30", "--batch-size", "32", "--out", str(run), "--progress", "none")
    assert code == 1 and "at step" in err and ("diverged" in err or "non-finite" in err), err
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed" and "step" in record["error"]


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    run = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "dipnet", "train", "--data", "synthetic", "--model", "mlp",
                             "--epochs", "1000", "--batch-size", "8", "--out", str(run), "--progress", "none",
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (run / "run.json").exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"


def test_run_files_follow_the_umask(capsys, tmp_path):
    old = os.umask(0o022)
    try:
        assert cli(capsys, "train", *FAST, "--out", str(tmp_path / "r"))[0] == 0
    finally:
        os.umask(old)
    for name in ("run.json", "checkpoint.safetensors", "model.safetensors"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o644, name
