"""The projection fused into one kernel on CUDA: noise, scale and add in one pass, sigma's gradient
reduced in the backward kernel, nothing saved but a seed.

Eager PyTorch spends several kernels and full-size tensors per projected layer: draw ``eps``
(one write), ``x + sigma * eps`` (three reads or writes), and in backward ``eps`` again and the
product with the output gradient. On a GPU those are launch- and bandwidth-bound (issue 17:
DIPNet m=1 cost 1.96x ERM on the MNIST MLP at B=128 on an H100). Here ``eps`` never exists in
memory: ``u = x + sigma * eps`` computes ``eps_i = randn(seed, i)`` from Triton's counter-based
Philox generator (the generator of torch's own fused dropout) for element ``i`` of ``x``, and the
backward recomputes the same ``eps_i`` while it reduces ``sum_i dL/du_i * eps_i`` per feature.
The reduction writes one partial sum per program and adds them with ``torch.sum``: no atomics,
so gradients are reproducible run to run.

Why by hand: no library fuses a noise draw with its use; ``torch.compile`` would have to be
applied to the user's model, and draws its own random numbers unless told otherwise.

It applies where :func:`draw_like` says so: a CUDA tensor (float32, float16 or bfloat16,
contiguous) with fresh noise (``noise="auto"`` or ``"fresh"``), Triton importable (it ships with
CUDA builds of torch), outside ``torch.func`` transforms and ``torch.compile``. Everything else
takes the eager path of :mod:`dipnet.noise_table`. ``enabled = False`` turns it off. The kernels
run under Triton's interpreter on a CPU (``TRITON_INTERPRET=1``, then fresh noise on CPU tensors
takes this path too): that is how CI, which has no GPU, tests them.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any

import torch

from ..noise_table import Draw, redraw
from ..noise_table import draw_like as _table_or_fresh

__all__ = ["applies", "available", "draw_like", "enabled", "normal", "sample", "sigma_grad", "values"]

enabled = True  # False: every projection takes the eager path
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SEEDS = 2**31 - 1  # Triton's Philox takes a 32-bit seed here
_BLOCK = 1024  # elements per program in the elementwise kernels
_PLANE = 4096  # elements a program reduces when sigma is shared


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=1)
def _kernels() -> Any:
    """The Triton kernels (sample, normal, planes, rows), compiled or, under TRITON_INTERPRET=1
    (read by Triton when imported), interpreted; None without Triton."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def sample_kernel(x_ptr, sigma_ptr, u_ptr, seed, n, channels, inner, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(sigma_ptr + (offs // inner) % channels, mask=mask, other=0.0).to(tl.float32)
        tl.store(u_ptr + offs, x + s * tl.randn(seed, offs), mask=mask)

    @triton.jit
    def normal_kernel(out_ptr, seed, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.randn(seed, offs), mask=offs < n)

    @triton.jit
    def planes_kernel(g_ptr, part_ptr, seed, n, inner, BLOCK: tl.constexpr):
        """Partial ``sum g * eps`` of plane ``p``: elements ``p * inner ... (p + 1) * inner - 1``."""
        base = tl.program_id(0) * inner
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(0, inner, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            offs = base + idx
            mask = (idx < inner) & (offs < n)
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            acc += tl.where(mask, g * tl.randn(seed, offs), 0.0)
        tl.store(part_ptr + tl.program_id(0), tl.sum(acc, axis=0))

    @triton.jit
    def rows_kernel(g_ptr, part_ptr, seed, rows, channels, rows_per_program,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        """Partial per-column ``sum g * eps`` over a program's rows of a (rows, channels) tensor."""
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < channels
        first = tl.program_id(0) * rows_per_program
        acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for start in range(0, rows_per_program, BLOCK_R):
            r = first + start + tl.arange(0, BLOCK_R)
            rmask = (r < rows) & (start + tl.arange(0, BLOCK_R) < rows_per_program)
            offs = r[:, None] * channels + cols[None, :]
            mask = rmask[:, None] & cmask[None, :]
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            acc += tl.sum(tl.where(mask, g * tl.randn(seed, offs), 0.0), axis=0)
        tl.store(part_ptr + tl.program_id(0) * channels + cols, acc, mask=cmask)

    return sample_kernel, normal_kernel, planes_kernel, rows_kernel


def available() -> bool:
    """Whether the kernels can run here: Triton importable and :data:`enabled`."""
    return enabled and _kernels() is not None


def applies(x: torch.Tensor, source: str) -> bool:
    """Whether a projection of ``x`` with noise ``source`` takes the fused path."""
    if not enabled:
        return False
    if x.is_cuda:
        if source not in ("auto", "fresh"):
            return False
    elif not (source == "fresh" and x.is_cpu and _interpreting()):  # the CPU's hot path leaves here
        return False
    if not (x.dtype in _DTYPES and 0 < x.numel() < 2**31 and x.is_contiguous()):
        return False
    if torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling():
        return False
    return _kernels() is not None


def draw_like(x: torch.Tensor, source: str = "auto") -> tuple[torch.Tensor | None, Draw]:
    """:func:`dipnet.noise_table.draw_like`, or for the fused path no values and a kernel draw
    (a seed from torch's global generator, so ``torch.manual_seed`` reproduces it)."""
    if applies(x, source):
        seed = int(torch.randint(0, _SEEDS, ()))
        return None, Draw(None, seed, None, x.shape, x.device, x.dtype, kernel=True)
    return _table_or_fresh(x, source)


def _layout(x_shape: torch.Size, sigma_shape: torch.Size) -> tuple[int, int] | None:
    """(channels, inner) when sigma is shared or one value per entry of one dimension of ``x``
    (broadcast over the dimensions after it), else None."""
    if math.prod(sigma_shape) == 1:
        return 1, 1
    shape = list(sigma_shape)
    while shape and shape[0] == 1:
        shape.pop(0)
    if not shape or len(shape) > len(x_shape) or any(s != 1 for s in shape[1:]):
        return None
    dim = len(x_shape) - len(shape)
    if x_shape[dim] != shape[0]:
        return None
    return shape[0], math.prod(x_shape[dim + 1:])


def _grid(n: int) -> tuple[int]:
    return ((n + _BLOCK - 1) // _BLOCK,)


def normal(draw: Draw, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The draw's N(0, 1) values in ``dtype`` (default the draw's; the kernels use them in float32)."""
    out = torch.empty(draw.shape, device=draw.device, dtype=dtype or draw.dtype)
    _, normal_kernel, _, _ = _kernels()
    normal_kernel[_grid(out.numel())](out, draw.seed, out.numel(), BLOCK=_BLOCK)
    return out


def values(draw: Draw) -> torch.Tensor:
    """Any draw's values: :func:`normal` for a kernel draw, else :func:`dipnet.noise_table.redraw`."""
    return normal(draw) if draw.kernel else redraw(draw)


def sample(x: torch.Tensor, sigma: torch.Tensor | float, draw: Draw) -> torch.Tensor:
    """``x + sigma * eps`` for the kernel draw ``draw`` (no autograd: see
    :class:`~dipnet.projection.regenerate.Sample`); the same values each call."""
    sigma = torch.as_tensor(sigma, device=x.device)
    layout = _layout(x.shape, sigma.shape)
    if layout is None or not x.is_contiguous():
        return torch.addcmul(x, sigma, normal(draw, torch.float32)).to(torch.result_type(x, sigma))
    channels, inner = layout
    u = torch.empty(x.shape, device=x.device, dtype=torch.result_type(x, sigma))
    sample_kernel, _, _, _ = _kernels()
    sample_kernel[_grid(x.numel())](x, sigma.detach().contiguous(), u, draw.seed, x.numel(), channels, inner, BLOCK=_BLOCK)
    return u


def sigma_grad(grad: torch.Tensor, draw: Draw, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """``(grad * eps).sum_to_size(shape)`` in ``dtype``, ``eps`` recomputed inside the reduction."""
    layout = _layout(grad.shape, shape)
    if layout is None:
        return (grad.float() * normal(draw, torch.float32)).sum_to_size(shape).to(dtype)
    grad = grad.contiguous()
    channels, inner = layout
    n = grad.numel()
    _, _, planes_kernel, rows_kernel = _kernels()
    if channels == 1 or inner > 1:
        plane = _PLANE if channels == 1 else inner
        planes = (n + plane - 1) // plane
        parts = torch.empty(planes, device=grad.device, dtype=torch.float32)
        planes_kernel[(planes,)](grad, parts, draw.seed, n, plane, BLOCK=min(_BLOCK, _pow2(plane)))
        total = parts.sum() if channels == 1 else parts.view(-1, channels).sum(0)
    else:
        rows = n // channels
        block_c = min(_pow2(channels), 128)
        block_r = max(1, 2048 // block_c)
        per_program = block_r * max(1, math.ceil(rows / (block_r * 256)))
        programs = (rows + per_program - 1) // per_program
        parts = torch.empty(programs, channels, device=grad.device, dtype=torch.float32)
        grid = (programs, (channels + block_c - 1) // block_c)
        rows_kernel[grid](grad, parts, draw.seed, rows, channels, per_program, BLOCK_R=block_r, BLOCK_C=block_c)
        total = parts.sum(0)
    return total.to(dtype).reshape(shape)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
