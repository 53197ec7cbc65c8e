"""Weight-space sharpness: top eigenvalues of the loss Hessian w.r.t. the parameters (power
iteration with deflation on Hessian-vector products) and its trace (Hutchinson's estimator with
Rademacher probes), as in PyHessian (Yao et al. 2020)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..schema import Limits, check
from ._checks import check_inputs, check_labels, chunks, eval_mode, positive_int

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _data(model: nn.Module, data: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ConfigError("data must be a pair (x, y) of tensors")
    x = check_inputs(model, data[0])
    return x, check_labels(data[1], x.shape[0]).to(x.device)


def _params(model: nn.Module) -> list[torch.Tensor]:
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no parameters that require grad; sharpness is taken w.r.t. them")
    return params


class HessianOperator:
    """``v -> H v`` for the mean loss over ``(x, y)`` w.r.t. the model's trainable parameters."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000):
        self.model, self.loss_fn, self.x, self.y = model, loss_fn, x, y
        self.params = _params(model)
        self.batch_size = positive_int(batch_size, "batch_size")
        self.calls = 0

    def __call__(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        self.calls += 1
        n = self.x.shape[0]
        total = [torch.zeros_like(p) for p in self.params]
        with torch.enable_grad():
            for s in chunks(n, self.batch_size):
                loss = self.loss_fn(self.model(self.x[s]), self.y[s]) * ((s.stop - s.start) / n)
                # parameters the loss does not use (a DIPNet projection's sigma in eval mode) have zero rows
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                dot = sum((g * vi).sum() for g, vi in zip(grads, v) if g is not None)
                if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                    continue
                hv = torch.autograd.grad(dot, self.params, allow_unused=True)
                for t, h in zip(total, hv):
                    if h is not None:
                        t.add_(h.detach())
        return total


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor | float:
    return sum((ai * bi).sum() for ai, bi in zip(a, b))


def _normalize(v: list[torch.Tensor]) -> list[torch.Tensor]:
    norm = math.sqrt(float(_dot(v, v))) or 1.0
    return [t / norm for t in v]


@dataclass
class Sharpness:
    """Top Hessian eigenvalues (largest magnitude first), Hutchinson trace, and how they were obtained."""

    eigenvalues: list[float]
    iterations: list[int]
    trace: float | None
    trace_stderr: float | None
    trace_samples: int
    seed: int
    n_examples: int
    extra: dict = field(default_factory=dict)

    @property
    def top(self) -> float:
        return self.eigenvalues[0]

    def to_dict(self) -> dict:
        return {"top_eigenvalue": self.top, "eigenvalues": self.eigenvalues, "iterations": self.iterations,
                "trace": self.trace, "trace_stderr": self.trace_stderr, "trace_samples": self.trace_samples,
                "seed": self.seed, "n_examples": self.n_examples}


def sharpness(
    model: nn.Module,
    loss_fn: LossFn | None,
    data: Sequence[torch.Tensor],
    top_k: int = 1,
    iters: int = 100,
    tol: float = 1e-4,
    trace_samples: int = 0,
    batch_size: int = 1000,
    seed: int = 0,
) -> Sharpness:
    """Top-``top_k`` eigenvalues of the weight Hessian of the mean ``loss_fn(model(x), y)`` over
    ``data=(x, y)`` (power iteration, deflated; stops when the relative change is below ``tol`` or
    after ``iters``), and with ``trace_samples > 0`` its trace by Hutchinson: ``E_v v^T H v``,
    ``v`` Rademacher. Eigenvalues are the largest in magnitude (at a trained minimum: the largest).
    The model is evaluated in eval mode.
    """
    positive_int(top_k, "top_k")
    positive_int(iters, "iters")
    trace_samples = check(trace_samples, int, "trace_samples", Limits(ge=0))
    loss_fn = loss_fn or F.cross_entropy
    x, y = _data(model, data)
    gen = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        hvp = HessianOperator(model, loss_fn, x, y, batch_size)
        params = hvp.params
        rand = lambda p, rademacher=False: (
            (torch.randint(0, 2, p.shape, generator=gen) * 2 - 1) if rademacher else torch.randn(p.shape, generator=gen)
        ).to(dtype=p.dtype, device=p.device)
        eigvals: list[float] = []
        eigvecs: list[list[torch.Tensor]] = []
        iterations: list[int] = []
        for _ in range(top_k):
            v = _normalize([rand(p) for p in params])
            lam, used = 0.0, 0
            for used in range(1, iters + 1):
                for u in eigvecs:
                    c = _dot(v, u)
                    v = [vi - c * ui for vi, ui in zip(v, u)]
                v = _normalize(v)
                hv = hvp(v)
                new = float(_dot(v, hv))
                v = _normalize(hv)
                if abs(new - lam) <= tol * (abs(new) + 1e-12):
                    lam = new
                    break
                lam = new
            eigvals.append(lam)
            eigvecs.append(v)
            iterations.append(used)
        trace = stderr = None
        if trace_samples:
            samples = []
            for _ in range(trace_samples):
                v = [rand(p, rademacher=True) for p in params]
                samples.append(float(_dot(v, hvp(v))))
            t = torch.tensor(samples, dtype=torch.float64)
            trace = float(t.mean())
            stderr = float(t.std() / math.sqrt(trace_samples)) if trace_samples > 1 else None
    return Sharpness(eigvals, iterations, trace, stderr, trace_samples, seed, x.shape[0])
