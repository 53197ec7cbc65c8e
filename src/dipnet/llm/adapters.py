"""What fine-tuning changes, saved and loaded on its own: the LoRA adapters and DIPNet's sigmas.

A GGUF-loaded model cannot ``save_pretrained`` ("quantized with gguf and is not serializable"),
and the frozen base weights need no saving anyway: the state here is every trainable parameter
plus the projections' buffers (the running input RMS of a relative sigma), as plain safetensors.
Loading rebuilds the same base model, the same LoRA wrapping and placement, then this state.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..engine.checkpoint import save_weights
from ..errors import DataError
from ..projection import GaussianProjection

__all__ = ["TrainableState", "load_adapters", "save_adapters", "trainable_state"]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and projection buffers, by their names in ``model``."""
    state = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    for name, module in model.named_modules():
        if isinstance(module, GaussianProjection):
            state.update({n: b.detach() for n, b in module.named_buffers(prefix=name)})
    return state


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], where: str = "the state") -> None:
    """Copy ``state`` into ``model``; every key must exist and every trainable tensor be given."""
    expected = set(trainable_state(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise DataError(
            f"{where} does not fit this model ({len(missing)} missing, e.g. {missing[:2]}; {len(unexpected)} "
            f"unexpected, e.g. {unexpected[:2]}): load it into the same model, LoRA settings and placement"
        )
    model.load_state_dict(state, strict=False)


class TrainableState:
    """The ``state_dict``/``load_state_dict`` view of a model's trainable part (what a run
    directory checkpoints for fine-tuning)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.model)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_trainable_state(self.model, state, "the checkpoint")


def save_adapters(model: nn.Module, path: str | Path) -> Path:
    """Write the adapters and sigmas of ``model`` to a safetensors file (atomically)."""
    path = Path(path)
    save_weights(path, trainable_state(model), {"format": "dipnet-adapters-1"})
    return path


def load_adapters(model: nn.Module, path: str | Path) -> nn.Module:
    """Load what :func:`save_adapters` wrote into a model built the same way; returns ``model``."""
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise DataError(f"no adapters file {path}") from None
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise DataError(f"{path} is not a safetensors adapters file ({exc})") from None
    load_trainable_state(model, state, str(path))
    return model
