"""Input-output Jacobian of a classifier, per point (Novak et al., ICLR 2018, Sec. 4.1).

``||J(x)||_F`` with ``J(x) = d softmax(f(x)) / dx`` (C x d per point, flattened before the norm),
evaluated in eval mode. For many classes an unbiased estimator of ``||J||_F^2`` is
``E_u ||J u||^2`` with ``u ~ N(0, I)`` (forward-mode products, one per sample).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ._checks import check_inputs, choice, chunks, eval_mode, frozen_params, positive_int

OUTPUTS = ("softmax", "logits", "log_softmax")
METHODS = ("exact", "estimate")


def output_fn(model: nn.Module, output: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map whose Jacobian is measured: class probabilities, logits or log-probabilities."""
    choice(output, "output", OUTPUTS)
    if output == "softmax":
        return lambda x: torch.softmax(model(x), dim=-1)
    if output == "log_softmax":
        return lambda x: torch.log_softmax(model(x), dim=-1)
    return model


def _batched_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """(B, C, *in) by one forward and C reverse passes over the whole batch (examples are independent)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(x)
        b, c = out.shape
        basis = torch.eye(c, dtype=out.dtype, device=out.device).unsqueeze(1).expand(c, b, c)
        try:
            (grads,) = torch.autograd.grad(out, x, basis, is_grads_batched=True)
        except RuntimeError:  # an op without a batching rule: one reverse pass per class
            grads = torch.stack(
                [torch.autograd.grad(out[:, k].sum(), x, retain_graph=k < c - 1)[0] for k in range(c)]
            )
    return grads.transpose(0, 1)


def input_jacobian(model: nn.Module, x: torch.Tensor, output: str = "softmax", chunk_size: int = 256) -> torch.Tensor:
    """The full per-point Jacobian d output / d input, shape (B, C, *input_shape), in eval mode."""
    x = check_inputs(model, x)
    positive_int(chunk_size, "chunk_size")
    fn = output_fn(model, output)
    with eval_mode(model), frozen_params(model):
        return torch.cat([_batched_jacobian(fn, x[s]) for s in chunks(x.shape[0], chunk_size)])


def jacobian_norm(
    model: nn.Module,
    x: torch.Tensor,
    output: str = "softmax",
    method: str = "exact",
    samples: int = 16,
    chunk_size: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """Per-point Frobenius norm ``||d output / d x||_F`` (Novak et al. 2018), shape (B,).

    ``method="exact"`` forms each point's C x d Jacobian (one forward, C batched reverse passes);
    ``method="estimate"`` returns ``sqrt(mean_s ||J u_s||^2)`` over ``samples`` Gaussian probes
    ``u_s`` (forward mode): the mean is unbiased for ``||J||_F^2``, its relative standard error is
    about ``sqrt(2 / samples)`` when J has rank one and smaller otherwise.
    """
    choice(method, "method", METHODS)
    positive_int(samples, "samples")
    positive_int(chunk_size, "chunk_size")
    if method == "exact":
        jac = input_jacobian(model, x, output, chunk_size)
        return jac.flatten(1).norm(dim=1).detach()
    x = check_inputs(model, x)
    fn = output_fn(model, output)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    per_chunk = max(1, chunk_size // samples)
    norms = []
    with eval_mode(model), frozen_params(model):
        for s in chunks(x.shape[0], per_chunk):
            xs = x[s]
            xr = xs.repeat(samples, *([1] * (xs.ndim - 1)))
            u = torch.randn(xr.shape, generator=gen, device=x.device, dtype=x.dtype)
            _, ju = torch.func.jvp(fn, (xr,), (u,))
            sq = ju.detach().pow(2).flatten(1).sum(1).view(samples, xs.shape[0]).mean(0)
            norms.append(sq.sqrt())
    return torch.cat(norms)
