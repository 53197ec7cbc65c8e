"""Input validation and mode handling shared by the instruments (private)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..errors import ConfigError
from ..schema import Limits, check
from ..schema import choice as schema_choice

_POSITIVE = Limits(gt=0)


def positive_int(value: object, name: str) -> int:
    return check(value, int, name, _POSITIVE)


def positive_float(value: object, name: str) -> float:
    return check(value, float, name, _POSITIVE)


def choice(value: object, name: str, allowed: tuple[str, ...]) -> str:
    return schema_choice(value, name, allowed)


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def check_inputs(model: nn.Module, x: object, name: str = "x") -> torch.Tensor:
    """A floating batch (B, *input_shape) on the model's device that the model accepts."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor batch of shape (B, *input_shape), not {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ConfigError(
            f"{name} must be a non-empty batch of shape (B, *input_shape), got shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0)"
        )
    if not x.is_floating_point():
        raise ConfigError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    x = x.detach().to(device=model_device(model), dtype=model_dtype(model))
    with torch.no_grad(), eval_mode(model):
        try:
            out = model(x[:1])
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(
                f"the model cannot take {name} of per-example shape {tuple(x.shape[1:])} ({first}); "
                "pass inputs shaped like the training data"
            ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"the model must return logits of shape (B, classes); it returned {shape}")
    return x


def check_labels(y: object, n: int, num_classes: int | None = None) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != n:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ConfigError(f"labels must be an integer tensor of shape ({n},), got {shape}")
    if y.is_floating_point():
        raise ConfigError("labels must be integer class indices, not floats")
    if num_classes is not None and y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ConfigError(f"labels must lie in [0, {num_classes - 1}], got range [{int(y.min())}, {int(y.max())}]")
    return y.long()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate in eval mode; every submodule's training flag is restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def frozen_params(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters do not require grad (input-space derivatives only); flags restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def chunks(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def unit_modules(model: nn.Module, atomic: tuple[type, ...]) -> list[nn.Module]:
    """Modules a trace treats as units: instances of ``atomic`` (with whatever children they carry,
    e.g. a DIPNet projection attached to a Linear) and leaves that are not inside one of them."""
    units: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        children = list(m.children())
        if isinstance(m, atomic) or not children:
            units.append(m)
            return
        for c in children:
            visit(c)

    visit(model)
    return units
