"""Noise regenerated in the backward pass instead of saved for it.

A training forward through a projection computes ``u = x + sigma * eps``. Saved the plain way it
costs twice: the projection's op keeps ``eps`` for sigma's gradient, and the layer it feeds keeps
``u`` for its weight gradient, while ``x`` is usually kept already by the layer before (a ReLU
keeps its output). Both can be made again from where ``eps`` was drawn (a table offset or a
generator seed, :class:`dipnet.noise_table.Draw`): the recompute-instead-of-store trade of
gradient checkpointing (Chen et al., arXiv 1604.06174), here for the one op whose recompute is
a single multiply-add.

- :class:`Sample` is the projection as an autograd Function that saves only the draw.
- :class:`RegeneratedInput` is a saved-tensor hook (``torch.autograd.graph.saved_tensors_hooks``)
  active while the projected layer runs: what the layer saves that is ``u`` (or a view of it) is
  kept as ``(x, sigma, draw)`` and rebuilt bit for bit when backward needs it. Everything else,
  and ``x`` itself, goes to the hooks that were active before (a user's ``save_on_cpu``,
  activation checkpointing), so those keep working.
- :func:`repeated` marks DIPNetLoss's batch stacked m times: a ``u`` built from it keeps the
  batch once and m.

Why by hand: torch's checkpointing re-runs whole modules and keeps their inputs; no library
regenerates one op's random input.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch

from ..noise_table import Draw, redraw
from . import fused

__all__ = ["RegeneratedInput", "Sample", "plain", "repeated", "sample", "sigma_grad"]

_top_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
_DOT_DTYPES = (torch.float32, torch.float64)
_repeats: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # (stacked batch, batch, m) while DIPNetLoss runs


class Sample(torch.autograd.Function):
    """``x + sigma * eps`` whose backward regenerates ``eps`` from its draw: nothing but the draw
    is kept. ``sigma`` broadcasts over ``x``; its gradient is ``sum(dL/du * eps)`` over the
    broadcast dimensions, the same reduction autograd applies to ``addcmul``. A kernel draw
    (``eps`` None) runs the fused kernels (:mod:`.fused`) both ways."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor | None, draw: Draw) -> torch.Tensor:
        ctx.draw, ctx.sigma_shape, ctx.sigma_dtype = draw, sigma.shape, sigma.dtype
        return plain(x, sigma, eps, draw)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        g_sigma = None
        if ctx.needs_input_grad[1]:
            if ctx.draw.kernel:
                g_sigma = fused.sigma_grad(grad, ctx.draw, ctx.sigma_shape, ctx.sigma_dtype)
            else:
                g_sigma = sigma_grad(grad, redraw(ctx.draw), ctx.sigma_shape)
        return (grad if ctx.needs_input_grad[0] else None), g_sigma, None, None


def plain(x: torch.Tensor, sigma: torch.Tensor | float, eps: torch.Tensor | None, draw: Draw) -> torch.Tensor:
    """``x + sigma * eps`` without autograd's involvement: ``eps`` None is a kernel draw."""
    if eps is None:
        return fused.sample(x, sigma, draw)
    return torch.addcmul(x, sigma, eps) if isinstance(sigma, torch.Tensor) else x + sigma * eps


def sigma_grad(grad: torch.Tensor, eps: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``(grad * eps).sum_to_size(shape)`` without the product tensor where a reduction can do it:
    one dot product for a shared sigma, per-channel dot products for a sigma over a channel
    dimension followed by others (a convolution's input). Single and double precision only (a
    half-precision dot would overflow); the sum is the same up to its order."""
    if grad.dtype in _DOT_DTYPES and eps.dtype == grad.dtype and grad.is_contiguous() and eps.is_contiguous():
        if math.prod(shape) == 1:
            return torch.dot(grad.view(-1), eps.view(-1)).reshape(shape)
        lead = grad.ndim - len(shape)
        if len(shape) > 1 and shape[0] == grad.shape[lead] and math.prod(shape) == shape[0]:
            c = shape[0]
            inner = math.prod(grad.shape[lead + 1:])
            return torch.linalg.vecdot(grad.view(-1, c, inner), eps.view(-1, c, inner)).sum(0).view(shape)
    return (grad * eps).sum_to_size(shape)


def sample(x: torch.Tensor, sigma: torch.Tensor | float, eps: torch.Tensor | None, draw: Draw) -> torch.Tensor:
    """``x + sigma * eps`` through :class:`Sample` when autograd needs it, else :func:`plain`."""
    if (isinstance(sigma, torch.Tensor) and torch.is_grad_enabled() and (x.requires_grad or sigma.requires_grad)
            and not torch._C._are_functorch_transforms_active()):  # torch.func: the plain op
        return Sample.apply(x, sigma, eps, draw)
    return plain(x, sigma, eps, draw)


@contextlib.contextmanager
def repeated(stacked: Any, batch: Any, m: int) -> Iterator[None]:
    """While inside, a projection whose input is (a view of) ``stacked`` — ``batch`` stacked m
    times along dimension 0 — keeps ``batch`` and m instead of the stacked copy. Mappings of
    keyword inputs are walked key by key."""
    pairs = []
    if m > 1:
        if isinstance(stacked, torch.Tensor):
            pairs = [(stacked, batch, m)]
        elif isinstance(stacked, dict):
            pairs = [(stacked[k], batch[k], m) for k in stacked
                     if isinstance(stacked[k], torch.Tensor) and stacked[k] is not batch.get(k)]
    _repeats.extend(pairs)
    try:
        yield
    finally:
        del _repeats[len(_repeats) - len(pairs):]


def _within(t: torch.Tensor, base: torch.Tensor) -> bool:
    """Whether ``t``'s memory lies in ``base``'s (a view of a freshly allocated ``base``)."""
    start, ptr = base.data_ptr(), t.data_ptr()
    return (t.device == base.device and start <= ptr < start + base.numel() * base.element_size()
            and t.dtype == base.dtype)


def _layout(t: torch.Tensor, base: torch.Tensor) -> tuple[torch.Size, tuple[int, ...], int]:
    return t.shape, t.stride(), int(t.storage_offset() - base.storage_offset())


class RegeneratedInput:
    """The saved-tensor hooks of one projected layer's forward (enter before, exit after): ``u``
    and its views are packed as a recipe, everything else passes to the hooks active before."""

    __slots__ = ("u", "version", "x", "sigma", "draw", "outer", "pushed", "source")

    def __init__(self, u: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, draw: Draw) -> None:
        self.u: torch.Tensor | None = u
        self.x: torch.Tensor | None = x
        self.version, self.sigma, self.draw = u._version, sigma.detach(), draw
        self.outer = _top_hooks(False) if _top_hooks is not None else None
        self.pushed = False
        self.source: tuple[Any, ...] | None = None  # x (or the batch and m) as kept, once for every view of u

    def __enter__(self) -> "RegeneratedInput":
        torch._C._autograd._push_saved_tensors_default_hooks(self.pack, self.unpack)
        self.pushed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pushed:
            self.pushed = False
            torch._C._autograd._pop_saved_tensors_default_hooks()
            self.u = self.x = None

    def _keep(self, t: torch.Tensor) -> Any:
        return self.outer[0](t) if self.outer is not None else t.detach()

    def pack(self, t: torch.Tensor) -> Any:
        u = self.u
        if u is None or u._version != self.version or not _within(t, u):
            return self._keep(t)
        if self.source is None:
            self.source = self._kept_input()
        return _Recipe(self, _layout(t, u))

    def _kept_input(self) -> tuple[Any, ...]:
        x, check = self.x, self.outer is None
        assert x is not None, "pack keeps the input only while u (and x) are held"
        for stacked, batch, m in _repeats:
            if _within(x, stacked):
                return ("repeat", self._keep(batch), m, _layout(x, stacked), batch._version if check else None)
        return ("x", self._keep(x), x._version if check else None)

    def unpack(self, packed: Any) -> torch.Tensor:
        if type(packed) is _Recipe and packed.maker is self:
            return packed.build()
        return self.outer[1](packed) if self.outer is not None else packed


class _Recipe:
    """How to rebuild a saved ``u`` (or a view of it, ``layout``) from what its maker kept: ``x``
    (or the batch and m), ``sigma`` and the draw."""

    __slots__ = ("maker", "layout")

    def __init__(self, maker: RegeneratedInput, layout: tuple[torch.Size, tuple[int, ...], int]) -> None:
        self.maker, self.layout = maker, layout

    def _input(self) -> torch.Tensor:
        maker = self.maker
        source = maker.source
        assert source is not None, "pack keeps the input before it makes a recipe"
        kept = source[1] if maker.outer is None else maker.outer[1](source[1])
        _check_version(kept, source[-1])
        if source[0] == "x":
            return kept
        _, _, m, (shape, stride, offset), _ = source
        return kept.repeat(m, *([1] * (kept.ndim - 1))).as_strided(shape, stride, offset)

    def build(self) -> torch.Tensor:
        draw = self.maker.draw
        u = plain(self._input().detach(), self.maker.sigma, None if draw.kernel else redraw(draw), draw)
        shape, stride, offset = self.layout
        return u if (u.shape == shape and u.stride() == stride and offset == 0) else u.as_strided(shape, stride, offset)


def _check_version(x: torch.Tensor, version: int | None) -> None:
    if version is not None and x._version != version:
        raise RuntimeError(
            "the input of a DIPNet-projected layer was modified in place after the forward pass, so the "
            "projected input cannot be rebuilt for backward; apply the in-place operation to a copy "
            "(or call the layer on x.clone())"
        )
