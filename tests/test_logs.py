"""Run logs (dipnet.engine.logs): the TensorBoard events and the MLflow store, read back with their
own readers, hold exactly the run's record (run.json: history rows at their global steps, final
metrics, config, status), also after a crash and a resume; nothing is logged twice."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dipnet.data import Dataset, DatasetInfo
from dipnet.engine import Callback, RunDirectory, TrainConfig, Trainer, TensorBoardLog
from dipnet.errors import ConfigError

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

STEPS_PER_EPOCH, EPOCHS, CRASH_STEP = 4, 3, 6


def toy_dataset() -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS_PER_EPOCH * 64 + 200, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    return Dataset(x[:256], y[:256], x[256:356], y[256:356], DatasetInfo("toy", (8,), 3, ("0", "1", "2"), (-10.0, 10.0)),
                   x_val=x[356:], y_val=y[356:])


def toy_model(info=None) -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


class CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, loop, state, loss) -> None:
        if state.step == self.step:
            raise RuntimeError("crash for the test")


def expected_series(record: dict) -> dict[str, list[tuple[int, float]]]:
    """The documented log names and values of a run record: each numeric row field at the row's
    step (not ``step`` itself), ``logs/NAME``, numeric ``method/NAME``, and ``final/NAME`` at the last step."""
    out: dict[str, list[tuple[int, float]]] = {}

    def add(name, step, v):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.setdefault(name, []).append((step, float(v)))

    for row in record["history"]:
        for k, v in row.items():
            if k in ("logs", "method"):
                for kk, vv in v.items():
                    add(f"{k}/{kk}", row["step"], vv)
            elif k != "step":
                add(k, row["step"], v)
    for k, v in (record["final"] or {}).items():
        add(f"final/{k}", record["history"][-1]["step"], v)
    return out


def tensorboard_series(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def float32(series: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    return {k: [(s, float(np.float32(v))) for s, v in pts] for k, pts in series.items()}


def mlflow_run(store: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store.resolve().as_posix()}")
    runs = client.search_runs([client.get_experiment_by_name("dipnet").experiment_id])
    assert len(runs) == 1  # a resume continues the run of its run directory
    return client, runs[0]


def mlflow_series(client, run) -> dict[str, list[tuple[int, float]]]:
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
            for k in run.data.metrics}


def test_tensorboard_and_mlflow_hold_the_run_record_through_a_crash_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # this test only; dipnet imports MLflow without it
    out = tmp_path / "run"
    cfg = TrainConfig(epochs=EPOCHS, batch_size=64, method="dipnet", lr=1e-2, out=str(out),
                      log_to=("tensorboard", "mlflow"), progress="none")
    threads = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="crash for the test"):
        Trainer(cfg, dataset=toy_dataset(), model=toy_model, callbacks=[CrashAt(CRASH_STEP)]).fit()

    # the crashed run closed its logs (no writer thread left) and left them readable: its steps'
    # losses and its one finished period
    assert set(threading.enumerate()) <= threads
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and len(record["history"]) == 1
    tb = tensorboard_series(out / "tensorboard")
    assert [s for s, _ in tb.pop("step_loss")] == list(range(1, CRASH_STEP))
    assert tb == float32(expected_series(record))
    client, run = mlflow_run(out / "mlflow.db")
    assert (run.info.status, run.data.tags["dipnet.status"]) == ("FAILED", "failed")

    Trainer(cfg, dataset=toy_dataset(), model=toy_model).fit()  # resumes from the end of epoch 1
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "done" and len(record["history"]) == EPOCHS
    want = expected_series(record)
    assert {"objective", "lr", "val_loss", "test_acc", "example_grads", "wall_s", "logs/dip_prior",
            "method/sigma_mean", "method/sigma_relative_mean", "final/test_acc"} <= set(want)

    tb = tensorboard_series(out / "tensorboard")
    steps = tb.pop("step_loss")
    assert [s for s, _ in steps] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))  # the crashed attempt's later steps purged
    assert tb == float32(want)
    for row in record["history"]:  # equal batches: the period's objective is the mean of its step losses
        period = [v for s, v in steps if row["step"] - STEPS_PER_EPOCH < s <= row["step"]]
        assert np.mean(period) == pytest.approx(row["objective"], rel=1e-6)

    client, run = mlflow_run(out / "mlflow.db")
    assert mlflow_series(client, run) == want  # doubles, exact, each step once
    assert run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("method", "task", "dipnet.status", "dipnet.run_dir")} == \
        {"method": record["method"]["name"], "task": "toy", "dipnet.status": "done", "dipnet.run_dir": str(out.resolve())}
    params = {}
    for k, v in record["config"].items():
        if isinstance(v, dict):
            params.update({f"{k}.{kk}": str(vv) for kk, vv in v.items()})
        else:
            params[k] = ",".join(map(str, v)) if isinstance(v, list) else str(v)
    assert run.data.params == params


def test_finetune_writes_val_loss_each_log_period(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("reasoning_gym")
    from test_llm import tiny_config

    from dipnet.llm import Finetuner

    out = tmp_path / "llm"
    result = Finetuner(tiny_config(out=str(out), log_to=("tensorboard",))).fit()
    record = json.loads((out / "run.json").read_text())
    tb = tensorboard_series(out / "tensorboard")
    assert tb["val_loss"] == [(row["step"], float(np.float32(row["val_loss"]))) for row in result.history]
    assert [s for s, _ in tb["val_loss"]] == [2, 4]
    assert [s for s, _ in tb["step_loss"]] == [1, 2, 3, 4]
    assert tb["final/test_acc"] == [(4, float(np.float32(record["final"]["test_acc"])))]
    assert not (out / "mlflow.db").exists()


def test_log_to_needs_a_run_directory_and_a_known_name():
    with pytest.raises(ConfigError, match=r"log_to tensorboard writes under the run directory: set out"):
        Trainer(TrainConfig(log_to=("tensorboard",), progress="none"), dataset=toy_dataset(), model=toy_model)
    with pytest.raises(ConfigError, match="log_to must be .*tensorboard, mlflow.*'wandb'"):
        TrainConfig(log_to="wandb")


def test_a_missing_package_names_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"TensorBoard logging needs tensorboard: pip install 'dipnet\[logs\]'"):
        TensorBoardLog(tmp_path)


def test_overwrite_deletes_the_logs_and_nothing_else(tmp_path):
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x")
    for name in ("mlflow.db", "run.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    RunDirectory(tmp_path, TrainConfig()).clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_importing_dipnet_imports_no_log_package():
    code = ("import sys, dipnet, dipnet.engine, dipnet.engine.logs, dipnet.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorboard', 'mlflow', 'sqlalchemy'}))")
    src = Path(__file__).resolve().parents[1] / "src"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(src)})
    assert done.stdout.strip() == "[]"
