"""DIPNet as a training method (Hao et al., arXiv 2506.04690) and its fixed-sigma ablation.

``dipnet``: learnable Gaussian projections at the input of every Linear/Conv layer (slot
"model") and the m-trajectory objective with the variance prior (slot "loss"); it composes with
any "update" method (``dipnet+sam``, ``dipnet+mrwp``). ``noise-layers``: the same placement
with a fixed sigma and no prior (Random Self-Ensemble, Liu et al. 2018), the "is learning sigma
what helps?" ablation. Input-only noise is ``input-noise`` (methods/baselines.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from ..projection import DIPNetLoss, LossConfig, PlacementConfig, project, projections
from ..schema import override
from .base import Component, StepContext
from .registry import register_component


def sigma_metrics(model: nn.Module) -> dict[str, Any]:
    """The learned sigma per projected layer (in input units) with its mean, min and max."""
    per_layer = {name: float(p.effective_sigma().detach().mean()) for name, p in projections(model)}
    if not per_layer:
        return {}
    values = list(per_layer.values())
    return {"sigma": per_layer, "sigma_mean": sum(values) / len(values),
            "sigma_min": min(values), "sigma_max": max(values)}


@register_component
@dataclass
class DIPNet(Component, LossConfig, PlacementConfig):
    """Learnable per-feature Gaussian input projection at every layer, m trajectories, variance prior."""

    name = "dipnet"
    slots = frozenset({"model", "loss"})
    description = "DIPNet: learnable Gaussian projection of every layer's input, m trajectories, variance prior"
    tune = {"beta": (1e-4, 4e-4, 1.6e-3)}  # the prior's minimum sqrt(beta / alpha): 0.1, 0.2, 0.4 of the input RMS

    learnable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._loss = DIPNetLoss.from_config(self)

    def transform_model(self, model: nn.Module) -> nn.Module:
        return project(model, config=self, learnable=self.learnable)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        ctx.count(self.trajectories * x.shape[0])
        total = self._loss(model, x, y)
        parts = self._loss.parts
        if self.stability > 0 and self.trajectories > 1:
            ctx.log(dip_stability=parts["stability"])
        if self.alpha or self.beta:
            ctx.log(dip_prior=parts["prior"])
        return total

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        return sigma_metrics(model)


@register_component
@dataclass
class NoiseLayers(DIPNet):
    """Fixed-sigma Gaussian noise at the input of every layer (Random Self-Ensemble); no prior."""

    name = "noise-layers"
    description = "fixed-sigma Gaussian noise at every layer's input (Random Self-Ensemble; DIPNet ablation)"
    tune = {"sigma": (0.1, 0.2, 0.4)}

    alpha: float = override(LossConfig, "alpha", 0.0)
    beta: float = override(LossConfig, "beta", 0.0)

    learnable: ClassVar[bool] = False

    def _check(self) -> None:
        if self.alpha or self.beta:
            raise ConfigError("noise-layers has a fixed sigma, so the variance prior (alpha, beta) does not apply")
