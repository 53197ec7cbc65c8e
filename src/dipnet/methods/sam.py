"""Sharpness-Aware Minimization (Foret et al., ICLR 2021) and Adaptive SAM (Kwon et al., ICML 2021).

Per step: ``g = grad L(w)``; ``e = rho * g / ||g||`` (SAM, eq. 2) or
``e = rho * T_w^2 g / ||T_w g||`` with ``T_w = |w| + eta`` (ASAM, eq. 8); the gradient at
``w + e``; ``w`` restored; the base optimizer steps with that gradient. Two forward+backward
passes per step. The optimizer follows davda54/sam: ``first_step``, ``second_step``,
``step(closure)``; BatchNorm statistics come from the first pass only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..schema import Validated, override, param
from ._wrapper import WrappedOptimizer, disable_running_stats, enable_running_stats, has_batchnorm, is_perturbed
from .base import Closure, Component, StepContext
from .registry import register_component

__all__ = ["SAM", "sam_update", "SAMMethod", "ASAMMethod"]


@dataclass
class SAMSettings(Validated):
    rho: float = param(0.05, gt=0, doc="radius of the ascent step")

    def _owner(self) -> str:
        return "SAM"


@dataclass
class ASAMSettings(SAMSettings):
    eta: float = param(0.01, ge=0, doc="T_w = |w| + eta")


class SAM(WrappedOptimizer):
    """``SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)``.

    ``adaptive=True`` is ASAM with ``T_w = |w| + eta``. Use ``first_step``/``second_step`` in a
    custom loop (with :func:`dipnet.methods.disable_running_stats` around the second pass if the
    model has BatchNorm), or ``step(closure)`` where ``closure`` does forward+loss+backward.
    """

    def __init__(self, params: Iterable[Any], base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False, eta: float = 0.01, fixed: Iterable[torch.Tensor] = (),
                 **base_kwargs: Any) -> None:
        settings = ASAMSettings(rho=rho, eta=eta)
        super().__init__(params, base_optimizer, dict(rho=settings.rho, adaptive=bool(adaptive), eta=settings.eta),
                         fixed=fixed, **base_kwargs)
        self._perturbed: list[list[torch.Tensor]] = []

    def _with_grad(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The group's parameters that have a gradient and are perturbed (``fixed`` parameters, such
        as DIPNet's log-sigmas, are neither moved nor counted in the norm)."""
        if not is_perturbed(group):
            return [], []
        params = [p for p in group["params"] if p.grad is not None]
        return params, [p.grad for p in params]

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """``||T_w g||_2`` over all parameters (``T_w = I`` for SAM)."""
        norms: list[torch.Tensor] = []
        for group in self.param_groups:
            params, grads = self._with_grad(group)
            if not params:
                continue
            if group["adaptive"]:
                scaled = torch._foreach_abs(params)
                torch._foreach_add_(scaled, group["eta"])
                torch._foreach_mul_(scaled, grads)
                norms.extend(torch._foreach_norm(scaled))
            else:
                norms.extend(torch._foreach_norm(grads))
        if not norms:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack(norms), 2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to ``w + e`` (remembering ``w``)."""
        norm = self.grad_norm()
        self._perturbed = []
        for group in self.param_groups:
            params, grads = self._with_grad(group)
            if not params:
                continue
            old = []
            for p in params:
                st = self.state[p]
                if "old_p" not in st or st["old_p"].shape != p.shape:
                    st["old_p"] = torch.empty_like(p)
                old.append(st["old_p"])
            torch._foreach_copy_(old, params)
            scale = group["rho"] / (norm + 1e-12)
            if group["adaptive"]:
                e = torch._foreach_abs(params)
                torch._foreach_add_(e, group["eta"])
                torch._foreach_mul_(e, e)
                torch._foreach_mul_(e, grads)
            else:
                e = torch._foreach_mul(grads, 1.0)
            torch._foreach_mul_(e, scale)
            torch._foreach_add_(params, e)
            self._perturbed.append(params)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w`` exactly and take the base step with the gradient computed at ``w + e``."""
        for params in self._perturbed:
            torch._foreach_copy_(params, [self.state[p]["old_p"] for p in params])
        self._perturbed = []
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]  # the closure is required and returns the loss tensor
        """Full SAM step. ``closure`` must zero nothing and do forward+loss+backward; it runs twice.

        The gradients of the first pass must already be in ``.grad`` (davda54 convention), so a
        typical loop is ``loss = closure(); opt.step(closure); opt.zero_grad()``.
        """
        if closure is None:
            raise ValueError("SAM.step needs a closure that does forward, loss and backward")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss


def sam_update(model: nn.Module, optimizer: SAM, closure: Closure) -> torch.Tensor:
    """One SAM step in the engine's protocol; BN statistics are only updated by the first pass."""
    optimizer.zero_grad(set_to_none=True)
    loss = closure()
    optimizer.first_step(zero_grad=True)
    bn = has_batchnorm(model)
    if bn:
        disable_running_stats(model)
    try:
        closure()
    finally:
        if bn:
            enable_running_stats(model)
    optimizer.second_step(zero_grad=True)
    return loss


@register_component
@dataclass
class SAMMethod(Component, SAMSettings):
    """SAM as an engine component (two passes per step; each pass is counted by the loss)."""

    name = "sam"
    slots = frozenset({"update"})
    description = "sharpness-aware minimization (Foret et al. 2021): gradient at w + rho g/||g||, 2 passes"
    tune = {"rho": (0.02, 0.05, 0.1)}

    def build_optimizer(self, params: Iterable[Any], base: type[torch.optim.Optimizer], *,
                        fixed: Iterable[torch.Tensor] = (), **base_kwargs: Any) -> SAM:
        return SAM(params, base, rho=self.rho, fixed=fixed, **self.ascent(), **base_kwargs)

    def ascent(self) -> dict[str, Any]:
        """The ascent's shape: plain SAM's (ASAM overrides)."""
        return {"adaptive": False}

    def update(self, model: nn.Module, optimizer: torch.optim.Optimizer, closure: Closure, ctx: StepContext) -> bool:
        assert isinstance(optimizer, SAM), "the optimizer is the one build_optimizer made"
        sam_update(model, optimizer, closure)
        return True


@register_component
@dataclass
class ASAMMethod(SAMMethod, ASAMSettings):
    """Adaptive SAM (Kwon et al. 2021): ``e = rho T^2 g / ||T g||``, ``T = |w| + eta``."""

    name = "asam"
    description = "adaptive SAM (Kwon et al. 2021): scale-invariant ascent with T_w = |w| + eta, 2 passes"
    tune = {"rho": (0.2, 0.5, 1.0)}

    rho: float = override(SAMSettings, "rho", 0.5)

    def ascent(self) -> dict[str, Any]:
        return {"adaptive": True, "eta": self.eta}
