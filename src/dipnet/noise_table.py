"""Standard-normal noise read from a shared table at random offsets.

The shared noise table of Salimans et al., "Evolution Strategies as a Scalable Alternative to
Reinforcement Learning" (arXiv 1703.03864, sec. 2.1): one fixed block of N(0, 1) values; a draw
of n values is the window ``table[o : o + n]`` at a uniformly random offset ``o``. A window holds
n distinct table entries, so the values of one draw are exactly i.i.d. N(0, 1); what is
approximate is independence *between* draws, which reuse entries at random alignments (a table
of ``TABLE_SIZE`` values and draws of at most ``TABLE_SIZE // 4``, so at least 3M offsets).

Why by hand: on a CPU ``torch.randn`` costs about 2.7 ns a value (mt19937 and Box-Muller, one
thread), which is most of what DIPNet adds to a small model's training step; a window costs one
random integer. No library offers this. The offset comes from torch's global generator, so
``torch.manual_seed`` and a checkpoint's saved RNG state reproduce the draws; the table itself is
fixed (its own seed), so it needs no saving.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence, get_args

import torch

from .schema import check

__all__ = ["NOISE_SOURCES", "NoiseSource", "TABLE_SIZE", "standard_normal", "standard_normal_like"]

NoiseSource = Literal["auto", "table", "fresh"]
NOISE_SOURCES: tuple[str, ...] = get_args(NoiseSource)
TABLE_SIZE = 1 << 22
_MAX_DRAW = TABLE_SIZE // 4
_TABLE_SEED = 20250605
_tables: dict[tuple[torch.device | str, torch.dtype], torch.Tensor] = {}


def _table(device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    table = _tables.get((device, dtype))
    if table is None:
        gen = torch.Generator().manual_seed(_TABLE_SEED)
        table = torch.randn(TABLE_SIZE, generator=gen).to(device=torch.device(device), dtype=dtype)
        _tables[(device, dtype)] = table
    return table


def _window(n: int, shape: Sequence[int], device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """n table values at a uniformly random offset from torch's global generator, as ``shape``."""
    table = _table(device, dtype)
    offset = int(torch.randint(0, TABLE_SIZE - n + 1, ()))
    return table[offset:offset + n].view(shape)


def check_source(source: str, what: str = "noise") -> None:
    check(source, NoiseSource, what)


def standard_normal(
    shape: Sequence[int], *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    source: str = "auto",
) -> torch.Tensor:
    """A tensor of N(0, 1) values: ``source="fresh"`` is ``torch.randn``; ``"table"`` a window of
    the shared table (a read-only view: do not modify it in place), or fresh values when the draw
    is larger than ``TABLE_SIZE // 4`` or the dtype is not floating point; ``"auto"`` is the table
    on a CPU and fresh values on an accelerator, whose generator is fast (docs/dipnet.md, "Speed")."""
    n = math.prod(shape)
    if source == "auto":
        source = "table" if (device.type if isinstance(device, torch.device) else torch.device(device).type) == "cpu" else "fresh"
    if source != "table" or n > _MAX_DRAW or not dtype.is_floating_point:
        check_source(source)
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    return _window(n, shape, device, dtype)


def standard_normal_like(x: torch.Tensor, source: str = "auto") -> torch.Tensor:
    """``standard_normal(x.shape, device=x.device, dtype=x.dtype, source=source)``, the same draws,
    in fewer Python steps: DIPNet calls it once per projected layer and training step."""
    if source == "table" or (source == "auto" and x.is_cpu):
        n = x.numel()
        if n <= _MAX_DRAW and x.dtype.is_floating_point:
            return _window(n, x.shape, x.device, x.dtype)
    elif source not in NOISE_SOURCES:
        check_source(source)
    return torch.randn(x.shape, device=x.device, dtype=x.dtype)
