"""DIPNet as a training method (Hao et al., arXiv 2506.04690) and its fixed-sigma ablation.

``dipnet``: learnable Gaussian projections at the input of every Linear/Conv layer (slot
"model") and the m-trajectory objective with the variance prior (slot "loss"); it composes with
any "update" method (``dipnet+sam``, ``dipnet+mrwp``). ``noise-layers``: the same placement
with a fixed sigma and no prior (Random Self-Ensemble, Liu et al. 2018), the "is learning sigma
what helps?" ablation. Input-only noise is ``input-noise`` (methods/baselines.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..projection.loss import batch_size_of
from ..projection import DEFAULT_TARGETS, DIPNetLoss, LossConfig, PlacementConfig, project, projection_parameters, projections, sigma_stats
from ..schema import override, param
from .base import Component, StepContext
from .registry import register_component


@register_component
@dataclass
class DIPNet(Component, LossConfig, PlacementConfig):
    """Learnable per-feature Gaussian input projection at every layer, m trajectories, variance prior."""

    name = "dipnet"
    slots = frozenset({"model", "loss"})
    description = "DIPNet: learnable Gaussian projection of every layer's input, m trajectories, variance prior"
    tune = {"beta": (6.25e-4, 2.5e-3, 1e-2)}  # the prior's minimum sqrt(beta / alpha): 0.25, 0.5, 1 (input units)

    targets: Literal["layers", "blocks", "decoder", "lora"] = param(
        "layers", doc="where: every Linear/Conv layer's input, transformer sub-blocks, a Hugging Face LM's "
        "decoder sub-blocks, or peft LoRA layers' inputs")
    sigma_lr: float = param(1.0, ge=0, doc="the sigmas' learning rate as a multiple of the base one "
                            "(0: sigma stays at its initial value)")

    learnable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._loss = DIPNetLoss.from_config(self)
        self._data = DIPNetLoss(trajectories=self.trajectories, batchnorm=self.batchnorm, stability=self.stability,
                                prior=(0.0, 0.0))
        self._prior = DIPNetLoss(prior=(self.alpha, self.beta))

    def _check(self) -> None:
        super()._check()
        if self.targets in ("decoder", "lora") and self.scale == "absolute":
            raise ConfigError(f"{self.name} with targets={self.targets} needs scale='relative': a language model's "
                              "activations differ by orders of magnitude between layers, so one sigma in input units "
                              "fits none of them (docs/llm.md); dipnet finetune and DIPNetCallback set it")

    def transform_model(self, model: nn.Module, *, include: Any = None, exclude: Any = None) -> nn.Module:
        """Project ``model`` (``include``/``exclude``: :func:`~dipnet.project`'s name or type filters)."""
        targets = DEFAULT_TARGETS if self.targets == "layers" else self.targets
        return project(model, targets=targets, include=include, exclude=exclude, config=self, learnable=self.learnable)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        ctx.count(self.trajectories * batch_size_of(x))
        total = self._loss(model, x, y, criterion=ctx.criterion)
        parts = self._loss.parts
        if self.stability > 0 and self.trajectories > 1:
            ctx.log(dip_stability=parts["stability"])
        if self.alpha or self.beta:
            ctx.log(dip_prior=parts["prior"])
        return total

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        return sigma_stats(model)

    def fixed_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return projection_parameters(model)

    def fixed_lr_scale(self) -> float:
        return self.sigma_lr

    def add_prior_grad(self, model: nn.Module) -> None:
        """Add the variance prior's exact gradient to the sigmas' ``.grad``: the prior where a
        trainer's loss cannot carry it (Hugging Face, Lightning callbacks)."""
        self._prior.prior_grad_(model)

    def without_prior(self) -> DIPNetLoss:
        """The data term alone (m trajectories, stability), for a loop that adds the prior by
        :meth:`add_prior_grad`."""
        return self._data

    def on_train_end(self, model: nn.Module) -> list[str]:
        if not projections(model):
            return []
        model.eval()
        return ["dipnet: training ended; the model is in eval mode and predicts deterministically "
                "(its projections pass inputs through unchanged)"]


@register_component
@dataclass
class NoiseLayers(DIPNet):
    """Fixed-sigma Gaussian noise at the input of every layer (Random Self-Ensemble); no prior."""

    name = "noise-layers"
    description = "fixed-sigma Gaussian noise at every layer's input (Random Self-Ensemble; DIPNet ablation)"
    tune = {"sigma": (0.05, 0.1, 0.2)}

    alpha: float = override(LossConfig, "alpha", 0.0)
    beta: float = override(LossConfig, "beta", 0.0)

    learnable: ClassVar[bool] = False

    def _check(self) -> None:
        super()._check()
        if self.alpha or self.beta:
            raise ConfigError("noise-layers has a fixed sigma, so the variance prior (alpha, beta) does not apply")
        if self.sigma_lr != 1.0:
            raise ConfigError("noise-layers has a fixed sigma, so sigma_lr does not apply (dipnet with sigma_lr=0 "
                              "keeps sigma at its initial value under the prior)")
