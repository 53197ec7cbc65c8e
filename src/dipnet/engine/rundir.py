"""A run directory: what makes a run resumable and its results readable.

Layout::

    run.json                  status, config, run info, history, final metrics (JSON)
    checkpoint.safetensors    latest end-of-epoch state (weights + optimizer + RNG), for resuming
    model.safetensors         final weights (plain safetensors)

:class:`RunDirectory` owns these files: it resumes from the checkpoint (refusing one written
for another config), writes the record after every change of status and the checkpoint after
every epoch, each atomically. With no directory (``out=None``) every write is skipped; so is
every write of a data-parallel rank other than 0 (``writer=False``), which only reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .checkpoint import atomic_write_json, load_checkpoint, rng_state, save_checkpoint, save_weights, set_rng_state
from .config import TrainConfig


@dataclass
class TrainState:
    """Where a run stands: the next epoch, the global step, the epoch records, counters."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    example_grads: int = 0
    wall_s: float = 0.0


class RunDirectory:
    """The files of one run (or none, when ``path`` is None)."""

    def __init__(self, path: str | Path | None, cfg: TrainConfig) -> None:
        self.path = Path(path) if path else None
        self.cfg = cfg
        self.header: dict[str, Any] = {}
        self.writer = True  # distributed: ranks other than 0 read the checkpoint, never write
        self.world_size = 1  # distributed: processes training the run; a resume must match it

    @property
    def checkpoint_path(self) -> Path | None:
        return self.path / "checkpoint.safetensors" if self.path else None

    def last_checkpoint(self) -> str | None:
        ck = self.checkpoint_path
        return str(ck) if ck is not None and ck.exists() else None

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainState | None:
        """Load the checkpoint into ``model`` and ``optimizer`` and restore the generators;
        None if there is none. A checkpoint of another config is an error."""
        ck = self.last_checkpoint()
        if ck is None:
            return None
        model_state, state = load_checkpoint(Path(ck))
        saved, now = state["config"], self.cfg.identity()
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise ConfigError(
                f"{self.path} holds a run with a different config (differs in: {', '.join(diff)}); "
                "choose another --out directory or delete that one"
            )
        saved_world = state.get("world_size", 1)  # distributed
        if saved_world != self.world_size:
            raise ConfigError(f"{self.path} holds a run trained on {saved_world} process(es); resume it with "
                              f"--nproc {saved_world} (this is {self.world_size}), or choose another --out")
        model.load_state_dict(model_state)
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        return TrainState(state["epoch"], state["step"], state["history"], state["example_grads"], state["wall_s"])

    def record(self, status: str, state: TrainState, final: dict[str, Any] | None = None,
               error: str | None = None) -> None:
        """Write ``run.json``: ``header`` (method, dataset, run info), the history, the outcome."""
        if self.path is None or not self.writer:
            return
        atomic_write_json(self.path / "run.json", {
            "status": status, "config": self.cfg.to_dict(), **self.header,
            "history": state.history, "final": final, "error": error,
        })

    def checkpoint(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        """The end-of-epoch state everything a resume needs (weights, optimizer, generators)."""
        if self.path is None or not self.writer:
            return
        save_checkpoint(self.checkpoint_path, model.state_dict(), {
            **({"world_size": self.world_size} if self.world_size != 1 else {}),
            "config": self.cfg.identity(), "epoch": state.epoch, "step": state.step, "history": state.history,
            "example_grads": state.example_grads, "wall_s": state.wall_s,
            "optimizer": optimizer.state_dict(), "rng": rng_state(),
        })

    def save_final(self, model: nn.Module, method_name: str) -> None:
        if self.path is not None and self.writer:
            save_weights(self.path / "model.safetensors", model.state_dict(),
                         {"format": "dipnet-weights-1", "method": method_name})
