"""Self-distillation via iterative constructive perturbations (ICP; Dave et al., arXiv 2505.14751).

Per mini-batch after warm-up: the clean forward records features ``h_l(x)``; ``T`` input steps
``x <- x - eta * d`` that *decrease* the loss with the true label (model in eval mode, weights
untouched; ``d`` = raw gradient (SGD-ICP), Adam direction, or AdEMAMix direction) give
``x_icp``; a no-grad train-mode forward of ``x_icp`` gives targets ``h_l(x_icp)``; the loss is

    a(e) CE(f(x), y) + (1 - a(e)) sum_l w_l MSE(h_l(x), sg h_l(x_icp)),

``a(e) = 1`` in warm-up, then ``cos(pi (e - W) / (2 (E - W)))``; ``w_l = cos(l pi / (4 (L - 1)))``
or all 1. Inference is a plain forward. Eps-ball and valid-range clamp are optional (off by
default, as in the released code).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..compiling import guard_hooks
from ..errors import ConfigError
from ..schema import param
from ._wrapper import unwrap
from .base import FEATURES, Component, StepContext
from .registry import register_component

_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Mish, nn.Softplus)


def icp_alpha(epoch: int, epochs: int, warmup: int) -> float:
    """CE weight ``a(e)``: 1 during warm-up, then ``cos(pi (e - W) / (2 (E - W)))``."""
    if epoch < warmup or epochs <= warmup:
        return 1.0
    return math.cos(math.pi * (epoch - warmup) / (2 * (epochs - warmup)))


def layer_weights(n: int, weighting: str = "cosine") -> list[float]:
    """``w_l = cos(l pi / (4 (L - 1)))`` for ``l = 0..L-1`` (cosine) or all 1 (uniform)."""
    if weighting == "uniform" or n == 1:
        return [1.0] * n
    return [math.cos(l * math.pi / (4 * (n - 1))) for l in range(n)]


def auto_feature_layers(model: nn.Module) -> list[str]:
    """Default feature layers: the model's activation modules (by name); else its top-level
    children that hold parameters, the last (the head) excluded."""
    names = [n for n, m in model.named_modules() if n and isinstance(m, _ACTIVATIONS)]
    if names:
        return names
    children = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    return children[:-1] or children


class _Capture:
    def __init__(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        self.names = names
        self.out: dict[str, torch.Tensor] = {}
        self.active = False
        guard_hooks()
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inp: Any, out: Any) -> None:
            if self.active:
                self.out[name] = out if torch.is_tensor(out) else out[0]
        return hook

    def run(self, fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self.out, self.active = {}, True
        try:
            result = fn()
        finally:
            self.active = False
        return result, [self.out[n] for n in self.names]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@register_component
@dataclass
class ICP(Component):
    """ICP self-distillation as a ``"loss"`` component; also callable standalone as ``icp.loss(model, x, y, ctx)``.

    ``warmup`` is a fraction of the epochs (paper: 25 of 100). ``layers``: module names, or
    empty (every activation module); names the model lacks are an error before the first step.
    Counts ``B`` for the clean pass, ``T B`` for the input steps and ``B`` for the target forward.
    """

    name = "icp"
    slots = frozenset({"loss"})
    inputs = FEATURES
    description = "ICP self-distillation (Dave et al. 2025): match features of loss-decreasing input perturbations"
    tune = {"step_size": (0.003, 0.01, 0.03)}

    steps: int = param(5, ge=0, doc="T: loss-decreasing input steps (0: targets are the clean features)")
    step_size: float = param(0.01, ge=0, doc="eta of the input steps")
    direction: Literal["sgd", "adam", "ademamix"] = param("adam", doc="rule for the input steps: raw gradient, Adam, AdEMAMix")
    warmup: float = param(0.25, ge=0, lt=1, doc="fraction of the epochs trained with cross-entropy only")
    layers: tuple[str, ...] = param((), doc="feature modules by name, comma-separated (empty or auto: every activation)")
    weighting: Literal["cosine", "uniform"] = param("cosine", doc="per-layer weights of the distillation loss")
    eps: float | None = param(None, gt=0, doc="L-inf radius around x for the input steps (none: unbounded)")
    clamp: bool = param(False, doc="keep the input steps inside the dataset's valid range")
    beta1: float = param(0.9, ge=0, lt=1, doc="Adam/AdEMAMix first moment")
    beta2: float = param(0.999, ge=0, lt=1, doc="Adam/AdEMAMix second moment")
    beta3: float = param(0.9999, ge=0, lt=1, doc="AdEMAMix slow moment")
    ademamix_alpha: float = param(5.0, ge=0, doc="AdEMAMix weight of the slow moment")

    def _check(self) -> None:
        if self.layers == ("auto",):
            self.layers = ()

    def feature_layers(self, model: nn.Module) -> list[str]:
        names = list(self.layers) or auto_feature_layers(model)
        if not names:
            raise ConfigError("icp: the model has no activation or hidden module to take features from; set icp.layers")
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ConfigError(f"icp.layers: the model has no module named {', '.join(map(repr, missing))}; "
                              f"choose among {', '.join(n for n in modules if n) or 'none'}")
        return names

    def check_model(self, model: nn.Module) -> None:
        self.feature_layers(model)

    def warmup_epochs(self, epochs: int) -> int:
        return int(round(self.warmup * epochs))

    def check_epochs(self, epochs: int) -> None:
        """Refuse a run in which ICP would never act: ``a(e) = 1`` (cross-entropy only) in every
        epoch, the warm-up's and the first one after it (``a(W) = 1``)."""
        if epochs - 1 > self.warmup_epochs(epochs):
            return
        enough = max(2, math.ceil(2.5 / (1 - self.warmup)))  # E (1 - w) >= 2.5 gives E - 1 > round(w E)
        least = next(e for e in range(2, enough + 1) if e - 1 > self.warmup_epochs(e)) if enough <= 100_000 else None
        fixes = ([f"train at least {least} epochs"] if least else []) + (["lower icp.warmup"] if epochs >= 2 else [])
        fix = " or ".join(fixes) or "train more epochs"
        raise ConfigError(
            f"icp: with {epochs} epoch(s) and warmup {self.warmup:g}, every epoch trains with cross-entropy only "
            f"({self.warmup_epochs(epochs)} warm-up epochs, then a(e) = 1 at the first one after them), "
            f"so the run would be ERM; {fix}")

    def constructive_input(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None) -> torch.Tensor:
        """``T`` loss-decreasing input steps in eval mode; the weights receive no gradient."""
        was_training = model.training
        model.eval()
        x0 = x.detach()
        xi = x0.clone()
        moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # Adam's m, v and AdEMAMix's slow m
        bounds = getattr(ctx, "bounds", None) if ctx is not None else None
        try:
            for t in range(1, self.steps + 1):
                xi.requires_grad_(True)
                with torch.enable_grad():
                    loss = F.cross_entropy(model(xi), y, reduction="sum")
                    (g,) = torch.autograd.grad(loss, xi)
                if ctx is not None:
                    ctx.count(x.shape[0])
                with torch.no_grad():
                    if self.direction == "sgd":
                        d = g
                    else:
                        if moments is None:
                            moments = torch.zeros_like(g), torch.zeros_like(g), torch.zeros_like(g)
                        m, v, m_slow = moments
                        m.mul_(self.beta1).add_(g, alpha=1 - self.beta1)
                        v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
                        m_hat = m / (1 - self.beta1**t)
                        v_hat = v / (1 - self.beta2**t)
                        if self.direction == "ademamix":
                            m_slow.mul_(self.beta3).add_(g, alpha=1 - self.beta3)
                            m_hat = m_hat + self.ademamix_alpha * m_slow
                        d = m_hat / (v_hat.sqrt() + 1e-8)
                    xi = xi.detach() - self.step_size * d
                    if self.eps is not None:
                        xi = torch.max(torch.min(xi, x0 + self.eps), x0 - self.eps)
                    if self.clamp and bounds is not None:
                        xi = xi.clamp(float(bounds[0]), float(bounds[1]))
        finally:
            model.train(was_training)
        return xi.detach()

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        alpha = icp_alpha(ctx.epoch, ctx.epochs, self.warmup_epochs(ctx.epochs))
        ctx.count(x.shape[0])
        if alpha >= 1.0:
            return F.cross_entropy(model(x), y)
        inner = unwrap(model)  # the input steps and targets take no weight gradient (DDP: see unwrap)
        cap = _Capture(inner, self.feature_layers(inner))
        try:
            logits, feats = cap.run(lambda: model(x))
            x_icp = self.constructive_input(inner, x, y, ctx)
            with torch.no_grad():
                _, targets = cap.run(lambda: inner(x_icp))
            ctx.count(x.shape[0])
        finally:
            cap.remove()
        ce = F.cross_entropy(logits, y)
        weights = layer_weights(len(feats), self.weighting)
        terms = [w * F.mse_loss(h, t.detach()) for w, h, t in zip(weights, feats, targets)]
        distill = sum(terms[1:], terms[0])
        ctx.log(icp_alpha=alpha, icp_distill=float(distill.detach()))
        return alpha * ce + (1 - alpha) * distill
