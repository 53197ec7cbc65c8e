"""Standard-normal noise read from a shared table at random offsets.

The shared noise table of Salimans et al., "Evolution Strategies as a Scalable Alternative to
Reinforcement Learning" (arXiv 1703.03864, sec. 2.1): one fixed block of N(0, 1) values; a draw
of n values is the window ``table[o : o + n]`` at a uniformly random offset ``o``. A window holds
n distinct table entries, so the values of one draw are exactly i.i.d. N(0, 1); what is
approximate is independence *between* draws, which reuse entries at random alignments (a table
of ``TABLE_SIZE`` values and windows of at most ``TABLE_SIZE // 2``, so at least 2M offsets). A
larger draw is several windows, each at its own offset, so independence between its pieces is
approximate in the same way.

Why by hand: on a CPU ``torch.randn`` costs about 2.7 ns a value (mt19937 and Box-Muller, one
thread), which is most of what DIPNet adds to a small model's training step; a window costs one
random integer. No library offers this. The offset comes from torch's global generator, so
``torch.manual_seed`` and a checkpoint's saved RNG state reproduce the draws; the table itself is
fixed (its own seed), so it needs no saving.

:func:`draw_like` also returns a :class:`Draw` from which :func:`redraw` makes the same values
again, so that a backward pass need not keep them: the offsets of table windows, or on an
accelerator the seed of a Philox generator (one kernel to regenerate). Fresh values on a CPU
(mt19937, ~2.7 ns a value, too slow to make twice more) are kept in the draw instead.
"""
from __future__ import annotations

import math
import threading
from typing import Literal, NamedTuple, Sequence, get_args

import torch

from .schema import check

__all__ = ["Draw", "NOISE_SOURCES", "NoiseSource", "TABLE_SIZE", "draw_like", "redraw", "standard_normal"]

NoiseSource = Literal["auto", "table", "fresh"]
NOISE_SOURCES: tuple[str, ...] = get_args(NoiseSource)
TABLE_SIZE = 1 << 22
_MAX_DRAW = TABLE_SIZE // 2  # a training batch of ResNet-20 or the ViT at B=64 is one window
_TABLE_SEED = 20250605
_tables: dict[tuple[torch.device | str, torch.dtype], torch.Tensor] = {}


def _table(device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    table = _tables.get((device, dtype))
    if table is None:
        gen = torch.Generator().manual_seed(_TABLE_SEED)
        table = torch.randn(TABLE_SIZE, generator=gen).to(device=torch.device(device), dtype=dtype)
        _tables[(device, dtype)] = table
    return table


@torch.compiler.assume_constant_result  # under torch.compile: made at trace time, a constant of the graph
def _constant_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _table(device, dtype)


def traced_like(x: torch.Tensor, source: str = "auto") -> torch.Tensor:
    """N(0, 1) values shaped like ``x`` without a Python number in between, what ``torch.compile``
    traces into one graph: table windows (:func:`draw_like`'s law: windows of at most
    ``TABLE_SIZE // 2`` consecutive entries, each at a uniform offset) whose offsets are a tensor
    and whose values a gather the compiler fuses into their use; fresh values are
    ``torch.randn_like``. A draw of one window takes its offset as :func:`draw_like` does (the
    same values under the same seed when the random ops run torch's kernels). A larger draw
    splits ``x``'s first dimension into equal blocks, one window each, so that a compiled kernel
    reads a block's offset once per row (splitting the flat index into windows costs an integer
    division per value: measured 10x slower on ResNet-20 at m=4)."""
    if not ((source == "table" or (source == "auto" and x.is_cpu)) and x.dtype.is_floating_point):
        return torch.randn_like(x)
    n = x.numel()
    table = _constant_table(x.device, x.dtype)
    rows = x.shape[0] if x.ndim else 1
    blocks = 1 if n <= _MAX_DRAW else next((b for b in range(-(-n // _MAX_DRAW), rows + 1) if rows % b == 0), 0)
    if not blocks:  # a first dimension too coarse to split: the flat index into windows
        offsets = torch.randint(0, TABLE_SIZE - _MAX_DRAW + 1, (-(-n // _MAX_DRAW),), device=x.device)
        i = torch.arange(n, device=x.device)
        return table[offsets[i // _MAX_DRAW] + i % _MAX_DRAW].view(x.shape)
    size = n // blocks
    offsets = torch.randint(0, TABLE_SIZE - size + 1, (blocks, 1) if blocks > 1 else (1,), device=x.device)
    return table[offsets + torch.arange(size, device=x.device)].view(x.shape)


def _windows(n: int, device: torch.device | str, dtype: torch.dtype) -> tuple[torch.Tensor, tuple[int, ...]]:
    """n table values from windows of at most ``_MAX_DRAW`` at uniformly random offsets (torch's
    global generator), and the offsets."""
    offsets = tuple(int(torch.randint(0, TABLE_SIZE - k + 1, ())) for k in _sizes(n))
    return _read(_table(device, dtype), offsets, n), offsets


def _sizes(n: int) -> list[int]:
    """The window sizes of a draw of n values: whole windows of ``_MAX_DRAW``, then the rest."""
    return [_MAX_DRAW] * (n // _MAX_DRAW) + ([n % _MAX_DRAW] if n % _MAX_DRAW or not n else [])


def _read(table: torch.Tensor, offsets: Sequence[int], n: int) -> torch.Tensor:
    """The n values at ``offsets``: a view of the table for one window, a copy for several."""
    if len(offsets) == 1:
        return table[offsets[0]:offsets[0] + n]
    return torch.cat([table[o:o + k] for o, k in zip(offsets, _sizes(n))])


def check_source(source: str, what: str = "noise") -> None:
    check(source, NoiseSource, what)


def standard_normal(
    shape: Sequence[int], *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    source: str = "auto",
) -> torch.Tensor:
    """A tensor of N(0, 1) values: ``source="fresh"`` is ``torch.randn``; ``"table"`` a window of
    the shared table (a read-only view: do not modify it in place; a draw larger than
    ``TABLE_SIZE // 2`` is several windows, copied together), or fresh values when the dtype is
    not floating point; ``"auto"`` is the table on a CPU and fresh values on an accelerator, whose
    generator is fast (docs/dipnet.md, "Speed")."""
    n = math.prod(shape)
    if source == "auto":
        source = "table" if (device.type if isinstance(device, torch.device) else torch.device(device).type) == "cpu" else "fresh"
    if source != "table" or not dtype.is_floating_point:
        check_source(source)
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    return _windows(n, device, dtype)[0].view(tuple(shape))


class Draw(NamedTuple):
    """Where a draw of :func:`draw_like` came from, enough for :func:`redraw` to make it again:
    table ``offsets``, or the ``seed`` of an accelerator's generator, or the kept ``values``;
    ``kernel``: the seed of the fused projection's Philox stream
    (:mod:`dipnet.projection.fused`), whose values exist only inside its kernels."""

    offsets: tuple[int, ...] | None
    seed: int | None
    values: torch.Tensor | None
    shape: torch.Size
    device: torch.device
    dtype: torch.dtype
    kernel: bool = False


_local = threading.local()  # one seeded generator per thread and device (forward and backward may differ)


def _seeded(seed: int, device: torch.device) -> torch.Generator:
    gens = _local.__dict__.setdefault("generators", {})
    gen = gens.get(device)
    if gen is None:
        gen = gens[device] = torch.Generator(device=device)
    return gen.manual_seed(seed)


def draw_like(x: torch.Tensor, source: str = "auto") -> tuple[torch.Tensor, Draw]:
    """N(0, 1) values shaped like ``x`` (on a CPU the same draw as :func:`standard_normal` for
    its shape, device and dtype) and the :class:`Draw` that makes them again bit for bit: the
    projections' hot path. Fresh values on an accelerator come from a Philox generator seeded by
    a number drawn from torch's global generator, so ``torch.manual_seed`` reproduces every kind."""
    table = source == "table" or (source == "auto" and x.is_cpu)
    if table and x.dtype.is_floating_point:
        values, offsets = _windows(x.numel(), x.device, x.dtype)
        return values.view(x.shape), Draw(offsets, None, None, x.shape, x.device, x.dtype)
    if source not in NOISE_SOURCES:
        check_source(source)
    if x.is_cpu or not x.dtype.is_floating_point:
        values = torch.randn(x.shape, device=x.device, dtype=x.dtype)
        return values, Draw(None, None, values, x.shape, x.device, x.dtype)
    seed = int(torch.randint(0, 2**62, ()))
    draw = Draw(None, seed, None, x.shape, x.device, x.dtype)
    return redraw(draw), draw


def redraw(draw: Draw) -> torch.Tensor:
    """The values of the draw that :func:`draw_like` returned with ``draw``."""
    if draw.offsets is not None:
        return _read(_table(draw.device, draw.dtype), draw.offsets, math.prod(draw.shape)).view(draw.shape)
    if draw.values is not None:
        return draw.values
    if draw.kernel:
        raise ValueError("a kernel draw's values exist only inside the fused kernels: "
                         "dipnet.projection.fused.values(draw) makes them")
    if draw.seed is None:
        raise ValueError("this Draw holds no offsets, values or seed: only draw_like makes one")
    return torch.randn(draw.shape, generator=_seeded(draw.seed, draw.device), device=draw.device, dtype=draw.dtype)
