"""DIPNet as a training method (Hao et al., arXiv 2506.04690) and its fixed-sigma ablation.

``dipnet``: learnable Gaussian projections at the input of every Linear/Conv layer (slot
"model") and the m-trajectory objective with the variance prior (slot "loss"); it composes with
any "update" method (``dipnet+sam``, ``dipnet+mrwp``). ``noise-layers``: the same placement
with a fixed sigma and no prior (Random Self-Ensemble, Liu et al. 2018), the "is learning sigma
what helps?" ablation. Input-only noise is ``gaussian-examples`` (methods/adversarial.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..engine.method import Component, StepContext, register_component
from ..errors import ConfigError
from ..noise_table import check_source
from ..projection import (DEFAULT_PRIOR, GRANULARITIES, SCALES, DIPNetLoss, check_input_grad_fraction, project,
                          projections)


def _positive(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{where} must be a finite number > 0, not {value!r}")


def _sigma_metrics(model: nn.Module) -> dict[str, Any]:
    per_layer: dict[str, float] = {}
    for name, p in projections(model):
        per_layer[name] = float(p.effective_sigma().detach().mean())
    if not per_layer:
        return {}
    values = list(per_layer.values())
    return {"sigma": per_layer, "sigma_mean": sum(values) / len(values),
            "sigma_min": min(values), "sigma_max": max(values)}


@register_component
@dataclass
class DIPNet(Component):
    """Learnable per-feature Gaussian input projection at every layer, m trajectories, variance prior."""

    name = "dipnet"
    slots = frozenset({"model", "loss"})
    description = "DIPNet: learnable Gaussian projection of every layer's input, m trajectories, variance prior"

    sigma: float = 0.1
    scale: str = "absolute"
    granularity: str = "feature"
    trajectories: int = 1
    stability: float = 0.0
    alpha: float = DEFAULT_PRIOR[0]
    beta: float = DEFAULT_PRIOR[1]
    project_input: bool = True
    noise: str = "auto"
    input_grad_fraction: float | None = None

    learnable = True

    def __post_init__(self) -> None:
        _positive(self.sigma, f"{self.name}.sigma")
        if self.scale not in SCALES:
            raise ConfigError(f"{self.name}.scale must be one of {', '.join(SCALES)}, not {self.scale!r}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"{self.name}.granularity must be one of {', '.join(GRANULARITIES)}, not {self.granularity!r}")
        if isinstance(self.trajectories, bool) or not isinstance(self.trajectories, int) or self.trajectories < 1:
            raise ConfigError(f"{self.name}.trajectories must be an integer >= 1, not {self.trajectories!r}")
        check_source(self.noise, f"{self.name}.noise")
        check_input_grad_fraction(self.input_grad_fraction, f"{self.name}.input_grad_fraction")
        for key in ("stability", "alpha", "beta"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{self.name}.{key} must be a finite number >= 0, not {v!r}")
        self._loss = DIPNetLoss(trajectories=self.trajectories, stability=self.stability,
                                prior=(self.alpha, self.beta))

    def transform_model(self, model: nn.Module) -> nn.Module:
        return project(model, sigma=self.sigma, scale=self.scale, granularity=self.granularity,
                       project_input=self.project_input, learnable=self.learnable, noise=self.noise,
                       input_grad_fraction=self.input_grad_fraction)

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
        return _sigma_metrics(model)


@register_component
@dataclass
class NoiseLayers(DIPNet):
    """Fixed-sigma Gaussian noise at the input of every layer (Random Self-Ensemble); no prior."""

    name = "noise-layers"
    description = "fixed-sigma Gaussian noise at every layer's input (Random Self-Ensemble; DIPNet ablation)"

    alpha: float = 0.0
    beta: float = 0.0

    learnable = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha or self.beta:
            raise ConfigError("noise-layers has a fixed sigma, so the variance prior (alpha, beta) does not apply")
