"""Input-space curvature: the spectral norm of the Hessian of the loss w.r.t. the input, per point,
by power iteration on Hessian-vector products (double backward). Smoothed networks (DIPNet's
theory) should have smaller local curvature."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_inputs, check_labels, chunks, eval_mode, frozen_params, positive_int

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def input_curvature(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn | None = None,
    iters: int = 20,
    chunk_size: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """Per-point ``||Hess_x loss(f(x), y)||_2`` (largest |eigenvalue|), shape (B,), in eval mode.

    ``loss_fn(logits, y)`` must be a per-example loss summed over the batch (default: cross-entropy
    with ``reduction="sum"``) so that the Hessian of the sum is block-diagonal over points.
    """
    x = check_inputs(model, x)
    positive_int(iters, "iters")
    positive_int(chunk_size, "chunk_size")
    y = check_labels(y, x.shape[0]).to(x.device)
    loss_fn = loss_fn or (lambda logits, t: F.cross_entropy(logits, t, reduction="sum"))
    gen = torch.Generator(device=x.device).manual_seed(seed)
    out = []
    with eval_mode(model), frozen_params(model):
        for s in chunks(x.shape[0], chunk_size):
            xs = x[s].detach().requires_grad_(True)
            norm = lambda t: t.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (t.ndim - 1)))
            v = torch.randn(xs.shape, generator=gen, dtype=xs.dtype, device=xs.device)
            v = v / norm(v)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(loss_fn(model(xs), y[s]), xs, create_graph=True)
                for _ in range(iters):
                    (hv,) = torch.autograd.grad(g, xs, v, retain_graph=True)
                    v = (hv / norm(hv)).detach()
                (hv,) = torch.autograd.grad(g, xs, v)
            out.append(hv.detach().flatten(1).norm(dim=1))
    return torch.cat(out)
