"""Input-output Jacobian of a classifier, per point (Novak et al., ICLR 2018, Sec. 4.1).

``||J(x)||_F`` with ``J(x) = d softmax(f(x)) / dx`` (C x d per point, flattened before the norm),
evaluated in eval mode. For many classes an unbiased estimator of ``||J||_F^2`` is
``E_u ||J u||^2`` with ``u ~ N(0, I)`` (forward-mode products, one per sample).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.autograd.graph import Node

from ._checks import check_inputs, choice, chunks, eval_mode, frozen_params, positive_int, unit_modules

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


def _leading_linear(model: nn.Module, x: torch.Tensor) -> nn.Linear | None:
    """The model's first module when it is an ``nn.Linear`` applied to the (flattened) input that
    narrows it (out_features < in_features); leading Flatten/Identity-like modules are skipped."""
    first: list = []

    def hook(m: nn.Module, inputs: tuple, out: object) -> None:
        if not first:
            first.append((m, inputs[0] if inputs else None, out))

    leaves = unit_modules(model, (nn.Linear,))
    handles = [m.register_forward_hook(hook) for m in leaves]
    skipped = 0
    try:
        with torch.no_grad():
            while True:
                first.clear()
                model(x)
                if not first:
                    return None
                m, inp, out = first[0]
                is_view = isinstance(out, torch.Tensor) and isinstance(inp, torch.Tensor) and out.numel() == inp.numel() \
                    and out.untyped_storage().data_ptr() == inp.untyped_storage().data_ptr() and torch.equal(out.flatten(), inp.flatten())
                if is_view and skipped < len(leaves):
                    handles.pop(leaves.index(m)).remove()
                    leaves.remove(m)
                    skipped += 1
                    continue
                break
    finally:
        for h in handles:
            h.remove()
    same_input = isinstance(inp, torch.Tensor) and inp.numel() == x.numel() and \
        inp.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    if isinstance(m, nn.Linear) and same_input and inp.ndim == 2 and m.out_features < m.in_features:
        return m
    return None


def _reaches(root: Node | None, leaf: torch.Tensor) -> bool:
    """Whether the autograd graph under ``root`` (a grad_fn) depends on the leaf tensor ``leaf``."""
    seen: set[Node] = set()
    stack = [root]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if getattr(fn, "variable", None) is leaf:
            return True
        stack.extend(f for f, _ in fn.next_functions)
    return False


def _frobenius_through_linear(fn: Callable[[torch.Tensor], torch.Tensor], layer: nn.Linear, x: torch.Tensor,
                              gram: torch.Tensor) -> torch.Tensor | None:
    """``||J(x)||_F`` per point as ``sqrt(sum_c g_c (W W^T) g_c^T)``, g = d out / d (W x + b): J = g W.

    Cheaper when the first layer narrows the input (MNIST MLPs); None when the input reaches the
    output by another path than the first layer (then the caller takes the direct route)."""
    holder: list[torch.Tensor] = []

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor | None:
        if holder:
            return None
        holder.append(out.detach().requires_grad_(True))
        return holder[0]

    x = x.detach().requires_grad_(True)
    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            out = fn(x)
    finally:
        handle.remove()
    if not holder or _reaches(out.grad_fn, x):
        return None
    h = holder[0]
    b, c = out.shape
    basis = torch.eye(c, dtype=out.dtype, device=out.device).unsqueeze(1).expand(c, b, c)
    try:
        (g,) = torch.autograd.grad(out, h, basis, is_grads_batched=True)
    except RuntimeError:
        return None
    return torch.einsum("cbi,ij,cbj->b", g, gram, g).clamp_min(0).sqrt()


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
    x = check_inputs(model, x)
    fn = output_fn(model, output)
    if method == "exact":
        with eval_mode(model), frozen_params(model):
            layer = _leading_linear(model, x[:1])
            if layer is not None:
                w = layer.weight.detach()
                gram = w @ w.T
                found = [_frobenius_through_linear(fn, layer, x[s], gram) for s in chunks(x.shape[0], chunk_size)]
                parts = [p for p in found if p is not None]
                if len(parts) == len(found):
                    return torch.cat(parts).detach()
            return torch.cat([_batched_jacobian(fn, x[s]).flatten(1).norm(dim=1) for s in chunks(x.shape[0], chunk_size)]).detach()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    per_chunk = max(1, chunk_size // samples)
    norms = []
    with eval_mode(model), frozen_params(model):
        for s in chunks(x.shape[0], per_chunk):
            xs = x[s]
            xr = xs.repeat(samples, *([1] * (xs.ndim - 1)))
            u = torch.randn(xr.shape, generator=gen, device=x.device, dtype=x.dtype)
            ju = torch.func.jvp(fn, (xr,), (u,))[1]
            sq = ju.detach().pow(2).flatten(1).sum(1).view(samples, xs.shape[0]).mean(0)
            norms.append(sq.sqrt())
    return torch.cat(norms)
