"""Bounds on the Lipschitz constant (l2 -> l2) of a network's logits.

Upper bound: the product of per-layer Lipschitz constants, valid for a feed-forward chain of
affine layers and Lipschitz activations; affine layers (Linear, convolutions, eval-mode
BatchNorm, average pooling) by power iteration on the operator itself at the input shape it
sees (Miyato et al. 2018; for convolutions the operator, not the reshaped kernel: Sedghi et al.
2019). Lower bound: the largest spectral norm of the input-output Jacobian over the given
points, by power iteration with jvp/vjp. The true constant lies between.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import ConfigError
from ._checks import check_inputs, chunks, eval_mode, frozen_params, positive_int, unit_modules
from .jacobian import output_fn

AFFINE_LAYERS = (
    nn.Linear,
    nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)
_ONE_LIPSCHITZ = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Tanh, nn.Softsign, nn.Identity, nn.Flatten, nn.Unflatten,
                  nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Softplus)


def operator_norm(
    op: Callable[[torch.Tensor], torch.Tensor],
    input_shape: tuple[int, ...],
    iters: int = 100,
    tol: float = 1e-7,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    block: int = 4,
) -> float:
    """Largest singular value of a linear map ``op`` acting on a batch of shape ``input_shape``.

    Block power (subspace) iteration on A^T A with a Rayleigh-Ritz step: ``block`` vectors, kept
    orthonormal, go through ``op`` as one batch when ``input_shape[0] == 1`` (else ``block`` is 1);
    the adjoint comes from autograd. Converges from below at rate (s_{block+1}/s_1)^2 per
    iteration, which matters for convolutions, whose top singular values nearly coincide.
    """
    positive_int(iters, "iters")
    positive_int(block, "block")
    shape = tuple(input_shape)
    n = math.prod(shape)
    k = min(block, n) if shape and shape[0] == 1 else 1
    batch_shape = (k, *shape[1:]) if k > 1 else shape
    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=dtype, device=device)).Q  # columns orthonormal
    sigma = 0.0
    for _ in range(iters):
        v = q.T.reshape(batch_shape).detach().requires_grad_(True)
        with torch.enable_grad():
            u = op(v)
            (w,) = torch.autograd.grad(u, v, u.detach())
        new_sigma = float(torch.linalg.svdvals(u.detach().reshape(k, -1))[0])
        q = torch.linalg.qr(w.reshape(k, n).T).Q
        if new_sigma == 0.0 or abs(new_sigma - sigma) <= tol * new_sigma:
            sigma = new_sigma
            break
        sigma = new_sigma
    with torch.no_grad():
        final = float(torch.linalg.svdvals(op(q.T.reshape(batch_shape)).reshape(k, -1))[0])
    return max(sigma, final)


def layer_operator(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The linear part of an affine layer: ``v -> layer(v) - layer(0)``."""
    return lambda v: layer(v) - layer(torch.zeros_like(v))


def spectral_norm(layer: nn.Module, input_shape: tuple[int, ...], iters: int = 100, tol: float = 1e-7, seed: int = 0) -> float:
    """Operator 2-norm of an affine layer acting on one input of ``input_shape`` (no batch dimension
    for Linear is needed: pass e.g. (1, in_features) or (1, C, H, W))."""
    if not isinstance(layer, AFFINE_LAYERS):
        raise ConfigError(f"spectral_norm needs an affine layer ({', '.join(t.__name__ for t in AFFINE_LAYERS[:4])}, ...), not {type(layer).__name__}")
    p = next(iter(layer.parameters()), None)
    dtype = p.dtype if p is not None else torch.float32
    device = p.device if p is not None else "cpu"
    with eval_mode(layer):
        return operator_norm(layer_operator(layer), tuple(input_shape), iters, tol, seed, dtype, device)


def _activation_constant(m: nn.Module) -> float | None:
    if isinstance(m, _ONE_LIPSCHITZ):
        return 1.0
    if isinstance(m, nn.LeakyReLU):
        return max(1.0, abs(m.negative_slope))
    if isinstance(m, nn.ELU):
        return max(1.0, m.alpha)
    if isinstance(m, nn.Sigmoid):
        return 0.25
    if isinstance(m, nn.GELU):
        return 1.1290
    if isinstance(m, nn.SiLU):
        return 1.0999
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        dims = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}[type(m)]
        sizes: list[tuple[int, ...]] = [(v,) * dims if isinstance(v, int) else tuple(v)
                                        for v in (m.kernel_size, m.stride, m.dilation)]
        k, s, d = sizes
        if any(di != 1 for di in d):
            return None
        return math.sqrt(math.prod(math.ceil(ki / si) for ki, si in zip(k, s)))
    return None


@dataclass
class _Call:
    name: str
    module: nn.Module
    inp: torch.Tensor | None
    out: torch.Tensor


def _trace_leaves(model: nn.Module, x: torch.Tensor) -> tuple[list[_Call], torch.Tensor]:
    names = {m: n for n, m in model.named_modules()}
    calls: list[_Call] = []

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        inp = inputs[0] if inputs else None
        calls.append(_Call(names[m], m, inp, out))

    handles = [m.register_forward_hook(hook) for m in unit_modules(model, AFFINE_LAYERS)]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return calls, out


def _same_storage(a: object, b: object) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.numel() == b.numel()
            and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())


@dataclass
class LipschitzBounds:
    """``lower <= Lip(f) <= upper`` (``upper`` is a bound only when ``upper_verified``); unpacks as (lower, upper)."""

    lower: float
    upper: float
    upper_verified: bool
    layers: list[tuple[str, float | None]] = field(default_factory=list)
    reason: str = ""

    def __iter__(self) -> Iterator[float]:
        return iter((self.lower, self.upper))

    def to_dict(self) -> dict:
        return {"lower": self.lower, "upper": self.upper, "upper_verified": self.upper_verified,
                "reason": self.reason, "layers": [[n, v] for n, v in self.layers]}


def layer_lipschitz_constants(
    model: nn.Module, x: torch.Tensor, iters: int = 100, seed: int = 0
) -> tuple[list[tuple[str, float | None]], str]:
    """Per-call Lipschitz constants of the model's leaf modules, and why their product is not a bound ("" if it is).

    The model is traced on one input; the product is a bound when every leaf is affine, a known
    Lipschitz activation or the identity, and each leaf consumes exactly the previous leaf's output
    (a chain: no residual additions or functional ops between modules).
    """
    x = check_inputs(model, x)
    with eval_mode(model):
        calls, out = _trace_leaves(model, x[:1])
        layers: list[tuple[str, float | None]] = []
        problems: list[str] = []
        prev = x[:1]
        for c in calls:
            if not _same_storage(c.inp, prev):
                problems.append(f"{c.name or type(c.module).__name__} does not take the previous module's output "
                                "(a residual connection or a functional op between modules)")
            prev = c.out
            value: float | None
            if isinstance(c.module, AFFINE_LAYERS) and c.inp is not None:
                value = operator_norm(layer_operator(c.module), tuple(c.inp.shape), iters, seed=seed,
                                      dtype=c.inp.dtype, device=c.inp.device)
            elif (const := _activation_constant(c.module)) is not None:
                value = const
            elif isinstance(c.out, torch.Tensor) and (c.out is c.inp or (
                    c.inp is not None and _same_storage(c.out, c.inp) and torch.equal(c.out, c.inp))):
                value = 1.0
            else:
                value = None
                problems.append(f"{c.name} ({type(c.module).__name__}) has no known Lipschitz constant")
            layers.append((c.name, value))
        if calls and not _same_storage(out, prev):
            problems.append("the model's output is not the last module's output")
        if not calls:
            problems.append("the model has no submodules to bound")
    return layers, "; ".join(dict.fromkeys(problems))


def jacobian_spectral_norm(
    model: nn.Module, x: torch.Tensor, output: str = "logits", iters: int = 50, chunk_size: int = 256, seed: int = 0
) -> torch.Tensor:
    """Per-point largest singular value of d output / d x, shape (B,), by power iteration with jvp/vjp."""
    x = check_inputs(model, x)
    positive_int(iters, "iters")
    positive_int(chunk_size, "chunk_size")
    fn = output_fn(model, output)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    result = []
    with eval_mode(model), frozen_params(model):
        for s in chunks(x.shape[0], chunk_size):
            xs = x[s]
            flat = lambda t: t.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (t.ndim - 1)))
            v = torch.randn(xs.shape, generator=gen, dtype=xs.dtype, device=xs.device)
            v = v / flat(v)
            with torch.enable_grad():
                vjp_fn = torch.func.vjp(fn, xs)[1]
                for _ in range(iters):
                    ju = torch.func.jvp(fn, (xs,), (v,))[1]
                    (w,) = vjp_fn(ju)
                    v = (w / flat(w)).detach()
                ju = torch.func.jvp(fn, (xs,), (v,))[1]
            result.append(ju.detach().flatten(1).norm(dim=1))
    return torch.cat(result)


def lipschitz_bounds(
    model: nn.Module, x: torch.Tensor, iters: int = 100, strict: bool = True, seed: int = 0
) -> LipschitzBounds:
    """``(lower, upper)`` on the l2 Lipschitz constant of the logits.

    lower = max over ``x`` of ``||J(x)||_2``; upper = product of per-layer constants. With
    ``strict`` a model whose structure does not make the product a bound (residual connections,
    unknown modules) is a ConfigError; otherwise the product is returned with ``upper_verified=False``.
    """
    layers, reason = layer_lipschitz_constants(model, x, iters, seed)
    if reason and strict:
        raise ConfigError(f"the product of layer norms is not a Lipschitz bound for this model: {reason}; "
                          "pass strict=False to get it anyway, flagged upper_verified=False")
    upper = math.prod(v for _, v in layers if v is not None)
    lower = float(jacobian_spectral_norm(model, x, "logits", iters=min(iters, 50), seed=seed).max())
    return LipschitzBounds(lower, upper, not reason, layers, reason)
