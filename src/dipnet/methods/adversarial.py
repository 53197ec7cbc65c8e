"""Training-time input perturbations, DIPNet's Table 1 settings, usable with every method:
Gaussian input noise (the randomized-smoothing training baseline, Cohen et al. 2019) and FGSM
examples (Goodfellow et al. 2015, eq. 3; Kurakin et al. 2017 replace part of each batch).

Both are ``"batch"`` components; ``dipnet train --train-perturbation none|gaussian|fgsm`` puts
``gaussian-examples`` or ``fgsm-examples`` in front of the method. ``lo``/``hi`` are the valid
input range (the dataset's ``info.bounds``); when both are None the components use
``ctx.bounds`` if the training loop provides it, else leave the inputs unclipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.method import Component, StepContext, register_component
from ..errors import ConfigError
from ..robust.attacks import MODES, attack_mode


def _check_range(lo: float | None, hi: float | None, name: str) -> None:
    for v, which in ((lo, "lo"), (hi, "hi")):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ConfigError(f"{name}.{which} must be a finite number or None, not {v!r}")
    if lo is not None and hi is not None and not lo < hi:
        raise ConfigError(f"{name}: lo ({lo}) must be below hi ({hi}); pass the dataset's info.bounds")


def _clip(x: torch.Tensor, lo: float | None, hi: float | None, ctx: StepContext) -> torch.Tensor:
    if lo is None and hi is None:
        bounds = getattr(ctx, "bounds", None)
        if bounds is None:
            return x
        lo, hi = (float(b) for b in bounds)
    return x.clamp(min=lo, max=hi)


@register_component
@dataclass
class GaussianExamples(Component):
    """Train on ``clip(x + N(0, sigma^2 I))`` (input-only noise of fixed sigma, in data units)."""

    name = "gaussian-examples"
    slots = frozenset({"batch"})
    description = "train on inputs with Gaussian noise of std sigma (randomized-smoothing training baseline)"

    sigma: float = 0.1
    lo: float | None = None
    hi: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not (self.sigma >= 0 and math.isfinite(self.sigma)):
            raise ConfigError(f"gaussian-examples.sigma must be a finite number >= 0, not {self.sigma!r}")
        _check_range(self.lo, self.hi, self.name)

    def transform_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext):
        return _clip(x + self.sigma * torch.randn_like(x), self.lo, self.hi, ctx), y


@register_component
@dataclass
class FGSMExamples(Component):
    """Replace a random ``fraction`` of each batch by FGSM examples ``clip(x + eps * sign(grad_x L))``.

    The input gradient costs one extra forward+backward per attacked example (counted in ctx);
    the model is attacked in ``mode`` (default eval: batch-norm statistics untouched, DIPNet
    noise off) and returned to its training state. Soft labels (B, C) use soft cross-entropy.
    """

    name = "fgsm-examples"
    slots = frozenset({"batch"})
    description = "replace a fraction of each batch by FGSM adversarial examples of L-inf radius eps"

    eps: float = 0.1
    fraction: float = 0.5
    mode: str = "eval"
    lo: float | None = None
    hi: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ConfigError(f"fgsm-examples.eps must be a finite number >= 0, not {self.eps!r}")
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not 0 < self.fraction <= 1:
            raise ConfigError(f"fgsm-examples.fraction must be in (0, 1], not {self.fraction!r}")
        if self.mode not in MODES:
            raise ConfigError(f"fgsm-examples.mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        _check_range(self.lo, self.hi, self.name)

    def transform_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext):
        b = x.shape[0]
        k = max(1, round(self.fraction * b))
        idx = torch.randperm(b, device=x.device)[:k] if k < b else torch.arange(b, device=x.device)
        xs = x[idx].detach().requires_grad_(True)
        with attack_mode(model, self.mode), torch.enable_grad():
            logits = model(xs)
            ys = y[idx]
            loss = F.cross_entropy(logits, ys, reduction="sum") if ys.ndim == 1 else -(ys * logits.log_softmax(-1)).sum()
            (grad,) = torch.autograd.grad(loss, xs)
        ctx.count(k)
        x = x.clone()
        x[idx] = _clip(xs.detach() + self.eps * grad.sign(), self.lo, self.hi, ctx)
        return x, y
