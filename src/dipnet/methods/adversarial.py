"""FGSM examples as a training-time perturbation (Goodfellow et al. 2015, eq. 3; Kurakin et al.
2017 replace part of each batch): DIPNet's Table 1 "FGSM" setting, usable with every method.

``dipnet train --train-perturbation fgsm`` puts ``fgsm-examples`` in front of the method. The
attack is :class:`dipnet.robust.FGSM` itself, inside the dataset's valid range (``ctx.bounds``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..robust.attacks import FGSM
from ..schema import param
from ._wrapper import unwrap
from .base import FEATURES, Component, StepContext
from .registry import register_component


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
    inputs = FEATURES
    description = "replace a fraction of each batch by FGSM adversarial examples of L-inf radius eps"
    tune = {"eps": (0.05, 0.1, 0.2)}

    eps: float = param(0.1, ge=0, doc="L-inf radius in input units")
    fraction: float = param(0.5, gt=0, le=1, doc="share of each batch replaced by FGSM examples")
    mode: Literal["eval", "noise", "keep"] = param("eval", doc="the model's mode during the attack")

    def transform_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        k = max(1, round(self.fraction * b))
        idx = torch.randperm(b, device=x.device)[:k] if k < b else torch.arange(b, device=x.device)
        adv = FGSM(unwrap(model), self.eps, bounds=ctx.bounds, mode=self.mode)(x[idx], y[idx])
        if self.eps > 0:
            ctx.count(k)
        x = x.clone()
        x[idx] = adv
        return x, y
