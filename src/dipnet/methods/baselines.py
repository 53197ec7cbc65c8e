"""Noise and augmentation baselines (``"batch"`` components): Gaussian input noise (randomized-
smoothing training, Cohen et al. 2019), Cutout (DeVries & Taylor 2017), Mixup (Zhang et al.
2018) and CutMix (Yun et al. 2019).

Cutout and CutMix act on images ``(C, H, W)`` (a square / a box) and on 1-D signals ``(C, L)`` or
``(L,)`` (a contiguous segment). Mixup and CutMix return soft labels ``(B, C)``. Outputs stay in
the dataset's valid range (``ctx.bounds``) where the operation could leave it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import EllipsisType

import torch
from torch import nn

from ..errors import ConfigError
from ..schema import override, param
from .base import FEATURES, Component, StepContext
from .registry import register_component


def _bounds(ctx: StepContext | None) -> tuple[float, float] | None:
    b = getattr(ctx, "bounds", None) if ctx is not None else None
    return None if b is None else (float(b[0]), float(b[1]))


def spatial_dims(x: torch.Tensor, who: str) -> int:
    """1 for ``(B, L)``/``(B, C, L)`` signals, 2 for ``(B, C, H, W)`` images; ConfigError otherwise."""
    if x.ndim in (2, 3):
        return 1
    if x.ndim == 4:
        return 2
    raise ConfigError(
        f"{who} needs 1-D signals (B, L) or (B, C, L) or images (B, C, H, W), got inputs of shape "
        f"{tuple(x.shape)}; use mixup or input-noise for other input shapes"
    )


def one_hot_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Hard labels (B,) -> one-hot float (B, C); soft labels (B, C) pass through."""
    if y.ndim == 2:
        return y.float()
    return torch.nn.functional.one_hot(y, num_classes).float()


def infer_num_classes(model: nn.Module, y: torch.Tensor, given: int, who: str) -> int:
    if y.ndim == 2:
        return y.shape[1]
    if given > 0:
        return given
    last = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    if last:
        return int(last[-1])
    raise ConfigError(f"{who}: cannot infer the number of classes from the model; set {who}.num_classes")


def sample_beta(alpha: float) -> float:
    """``lam ~ Beta(alpha, alpha)`` from two Gamma draws (cheaper than torch.distributions)."""
    g = torch._standard_gamma(torch.full((2,), float(alpha)))
    return float(g[0] / g.sum())


def random_box(size: tuple[int, ...], frac_side: float | tuple[float, ...], generator: torch.Generator | None = None) -> tuple[slice, ...]:
    """A box whose side along each axis is ``round(frac * n)``, centred uniformly, clipped at the border."""
    fracs = frac_side if isinstance(frac_side, tuple) else (frac_side,) * len(size)
    out = []
    for n, f in zip(size, fracs):
        side = int(round(f * n))
        c = int(torch.randint(n, (1,), generator=generator))
        out.append(slice(max(0, c - side // 2), min(n, c - side // 2 + side)))
    return tuple(out)


@register_component
@dataclass
class InputNoise(Component):
    """Train on ``x + N(0, sigma^2 I)`` clipped to the valid range (randomized-smoothing training)."""

    name = "input-noise"
    slots = frozenset({"batch"})
    inputs = FEATURES
    description = "Gaussian input noise of std sigma (randomized-smoothing training baseline, Cohen et al. 2019)"
    tune = {"sigma": (0.1, 0.25, 0.5)}

    sigma: float = param(0.25, ge=0, doc="noise std in input units")

    def transform_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        out = x + self.sigma * torch.randn_like(x)
        b = _bounds(ctx)
        return (out if b is None else out.clamp(*b)), y


@register_component
@dataclass
class GaussianExamples(InputNoise):
    """``input-noise`` under a second name, so that a task's Gaussian training perturbation (the
    DIPNet paper's Table 1 setting, ``dipnet train --train-perturbation gaussian``) can stack
    with the input-noise method itself."""

    name = "gaussian-examples"
    description = "alias of input-noise for the Gaussian training-perturbation setting (stacks with input-noise)"


@register_component
@dataclass
class Cutout(Component):
    """Set a random square (image) or segment (signal) of side ``size * side length`` to ``fill``
    in each example (the region is clipped at the border, as in DeVries & Taylor's code)."""

    name = "cutout"
    slots = frozenset({"batch"})
    inputs = FEATURES
    description = "Cutout (DeVries & Taylor 2017): blank a random square / 1-D segment per example"
    tune = {"size": (0.25, 0.5, 0.75)}

    size: float = param(0.5, gt=0, le=1, doc="side of the blanked region, a fraction of the input's")
    fill: float = param(0.0, doc="value written into the region (clipped to the valid range)")

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean (B, *spatial) mask of the blanked regions."""
        d = spatial_dims(x, self.name)
        b = x.shape[0]
        m = None
        for axis, n in enumerate(x.shape[-d:]):
            side = int(round(self.size * n))
            start = torch.randint(n, (b, 1), device=x.device) - side // 2
            ar = torch.arange(n, device=x.device)
            along = (ar >= start) & (ar < start + side)
            shape = [b] + [1] * d
            shape[1 + axis] = n
            along = along.reshape(shape)
            m = along if m is None else m & along
        assert m is not None, "spatial_dims is 1 or 2"
        return m

    def transform_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.mask(x)
        if x.ndim == 4 or x.ndim == 3:
            m = m.unsqueeze(1)
        fill = self.fill
        b = _bounds(ctx)
        if b is not None:
            fill = min(max(fill, b[0]), b[1])
        return x.masked_fill(m, fill), y


@register_component
@dataclass
class Mixup(Component):
    """``x = lam x + (1 - lam) x[perm]``, ``y = lam y + (1 - lam) y[perm]``, ``lam ~ Beta(alpha, alpha)`` per batch."""

    name = "mixup"
    slots = frozenset({"batch"})
    inputs = FEATURES
    description = "Mixup (Zhang et al. 2018): convex pairs of inputs and labels, lam ~ Beta(alpha, alpha)"
    tune = {"alpha": (0.1, 0.2, 0.4)}

    alpha: float = param(0.2, gt=0, doc="lam ~ Beta(alpha, alpha)")
    num_classes: int = param(0, ge=0, doc="classes of the soft labels (0: from the model's last Linear)")

    def transform_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        c = infer_num_classes(model, y, self.num_classes, self.name)
        lam = sample_beta(self.alpha)
        perm = torch.randperm(x.shape[0], device=x.device)
        yh = one_hot_labels(y, c)
        ctx.log(mixup_lam=lam)
        return lam * x + (1 - lam) * x[perm], lam * yh + (1 - lam) * yh[perm]


@register_component
@dataclass
class CutMix(Mixup):
    """Paste a box (image) or segment (signal) of ``x[perm]`` into ``x``; labels mixed by the kept area.

    ``lam ~ Beta(alpha, alpha)``; the box has sides ``sqrt(1 - lam)`` (2-D) or ``1 - lam`` (1-D)
    of the input's, clipped at the border; the label weight is the exact kept fraction.
    """

    name = "cutmix"
    slots = frozenset({"batch"})
    inputs = FEATURES
    description = "CutMix (Yun et al. 2019): paste a patch / 1-D segment from another example, labels by area"
    tune = {"alpha": (0.5, 1.0, 2.0)}

    alpha: float = override(Mixup, "alpha", 1.0)

    def transform_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        d = spatial_dims(x, self.name)
        c = infer_num_classes(model, y, self.num_classes, self.name)
        lam = sample_beta(self.alpha)
        spatial = tuple(x.shape[-d:])
        box = random_box(spatial, math.sqrt(1 - lam) if d == 2 else 1 - lam)
        perm = torch.randperm(x.shape[0], device=x.device)
        out = x.clone()
        idx: tuple[EllipsisType | slice, ...] = (Ellipsis, *box)
        out[idx] = x[perm][idx]
        area = math.prod(s.stop - s.start for s in box)
        kept = 1.0 - area / math.prod(spatial)
        yh = one_hot_labels(y, c)
        ctx.log(cutmix_lam=kept)
        return out, kept * yh + (1 - kept) * yh[perm]
