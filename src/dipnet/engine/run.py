"""Reading a finished (or interrupted) run directory back: config, history and the model."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..data import Dataset
from ..errors import DataError
from ..schema import check_type
from .checkpoint import load_checkpoint, load_weights
from ..methods import Method
from .config import TrainConfig
from .rundir import check_training_record, read_record
from .setup import ModelArg, prepare


@dataclass
class LoadedRun:
    run_dir: Path
    config: TrainConfig
    record: dict[str, Any]
    model: nn.Module
    method: Method
    dataset: Dataset

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.record.get("history") or []

    @property
    def final(self) -> dict[str, Any] | None:
        return self.record.get("final")

    @property
    def status(self) -> str:
        return self.record.get("status", "unknown")


def load_run(run_dir: str | Path, *, dataset: Dataset | None = None, model: ModelArg = None) -> LoadedRun:
    """Rebuild a run's dataset and model and load its weights (final, else the last checkpoint).

    The model is returned in eval mode. Pass ``dataset``/``model`` for runs trained on a user's
    own data or network, which the registries cannot rebuild.
    """
    run_dir = Path(check_type(run_dir, (str, os.PathLike), "run_dir", "give the folder that dipnet train wrote"))
    record = read_record(run_dir)
    check_training_record(record, run_dir)
    cfg = TrainConfig.from_dict(record["config"])
    dataset, model, method = prepare(cfg, dataset, model)
    weights = run_dir / "model.safetensors"
    if weights.exists():
        state = load_weights(weights)
    elif (run_dir / "checkpoint.safetensors").exists():
        state, _ = load_checkpoint(run_dir / "checkpoint.safetensors")
    else:
        raise DataError(f"{run_dir} has no weights yet (neither model.safetensors nor checkpoint.safetensors)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DataError(f"weights in {run_dir} do not fit the model {cfg.model!r}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return LoadedRun(run_dir, cfg, record, model, method, dataset)
