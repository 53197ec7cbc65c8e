"""DIPNet's distributional input projection (Hao et al., arXiv 2506.04690, "The layer").

Every targeted layer ``v_l = Layer_l(v_{l-1})`` becomes ``v_l = Layer_l(u_l)`` with the
reparameterized sample ``u_l = v_{l-1} + sigma_l * eps_l``, ``eps_l ~ N(0, I)``: a Gaussian with
the layer input as mean and a learnable diagonal covariance ``diag(lambda_l) = diag(sigma_l^2)``.
Eval mode passes the mean through (the paper's deterministic Algorithm 3). Positivity:
``sigma = exp(log_sigma)`` (our choice). The layer is a noise layer (:mod:`.noise`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..noise_table import NoiseSource
from ..schema import Limits, Validated, check, param
from . import _fast, fused
from .regenerate import sample

__all__ = ["GaussianProjection", "ProjectionConfig", "gaussian_projection"]


def gaussian_projection(
    x: torch.Tensor, sigma: torch.Tensor | float, training: bool = True, feature_dim: int = -1,
    noise: str = "fresh",
) -> torch.Tensor:
    """``x + sigma * eps`` with ``eps ~ N(0, I)`` in training, ``x`` otherwise (DIPNet, "The layer").

    ``sigma`` is a scalar, or a vector over ``x``'s ``feature_dim`` (the last dimension for a
    Linear input, the channel dimension 1 for a convolution input). ``noise``: where ``eps`` comes
    from, ``"fresh"`` (``torch.randn``; on CUDA drawn inside the fused kernels of
    :mod:`.fused`) or ``"table"`` (a random window of a shared table, :mod:`dipnet.noise_table`).
    The backward regenerates ``eps`` instead of keeping it.
    """
    if not training:
        return x
    if torch.compiler.is_compiling():
        return _fast.traced(x, _fast.feature_view(sigma, x, feature_dim), noise)
    eps, draw = fused.draw_like(x, noise)
    return sample(x, _fast.feature_view(sigma, x, feature_dim), eps, draw)


def input_rms(x: torch.Tensor) -> torch.Tensor:
    """sqrt(mean(x^2)) of the detached input in one reduction (the norm, accumulated in single
    precision for half-precision inputs, over sqrt(numel))."""
    low = x.dtype in (torch.float16, torch.bfloat16)
    return torch.linalg.vector_norm(x.detach(), dtype=torch.float32 if low else None) * (max(x.numel(), 1) ** -0.5)


@dataclass
class ProjectionConfig(Validated):
    """The settings of a projection, with their limits (shared by :class:`GaussianProjection`,
    :func:`~dipnet.projection.project` and the ``dipnet`` method)."""

    sigma: float = param(0.1, gt=0, doc="initial noise std (with scale=relative: a fraction of the input RMS)")
    scale: Literal["absolute", "relative"] = param(
        "absolute", doc="absolute: in input units; relative: sigma times a running RMS of the input (scale-free)")
    noise: NoiseSource = param("auto", doc="eps source: auto (table on a CPU, fresh on GPUs), table, fresh")
    input_grad_fraction: float | None = param(
        None, gt=0, le=1, doc="rows used for the raw input's sigma gradient (none: 1/8 on a CPU, 1 on GPUs)")
    rms_momentum: float = param(0.1, gt=0, le=1, doc="momentum of the running input RMS (scale=relative)")
    regenerate: bool = param(
        True, doc="rebuild the noise and the projected input in backward instead of keeping them "
                  "(false: a little faster, about twice DIPNet's activation memory)")


class GaussianProjection(nn.Module):
    """Learnable Gaussian input projection: train mode samples ``x + sigma * eps``, eval returns ``x``.

    ``features`` > 0 gives one variance per feature (per channel for convolutions, ``feature_dim=1``);
    ``features=0`` one shared variance. ``scale="relative"`` multiplies sigma by a running RMS of
    the input (momentum ``rms_momentum``, updated in train mode only), so one sigma fits layers of
    any scale. ``learnable=False`` keeps sigma fixed (fixed-sigma noise layers, Random Self-Ensemble).
    ``noise``: ``"fresh"`` calls ``torch.randn``; ``"table"`` draws ``eps`` as a random window of a
    shared N(0, 1) table (exactly i.i.d. within a draw, entries reused across draws;
    :mod:`dipnet.noise_table`); ``"auto"`` (default) is the table on a CPU, fresh on accelerators
    (on CUDA, drawn inside the fused projection kernels, :mod:`.fused`).

    ``input_grad_fraction`` (our choice, for speed): when the projected input needs no gradient of
    its own (the raw input), sigma's gradient ``sum_rows eps * dL/du`` costs one extra
    input-gradient pass through the layer. Below 1, for a Linear or Conv layer called by
    :func:`~dipnet.projection.project`'s hooks, it is computed on a random cyclic window of
    ``k = ceil(f N)`` of the N rows and scaled by ``N / k``: every row is in the window with
    probability ``k / N``, so the estimate is unbiased, at about ``f`` of the cost. 1.0 computes it
    exactly; None (default) is 1/8 on a CPU and 1.0 on accelerators, where that pass is cheap.

    ``regenerate`` (default True): the backward rebuilds ``eps`` from where it was drawn and the
    layer's saved input from ``(x, sigma, eps)`` instead of keeping them
    (:mod:`~dipnet.projection.regenerate`); False keeps both, the plain autograd way: the same
    gradients, a few percent faster on a CPU, about twice DIPNet's activation memory.
    """

    is_noise_layer = True
    sample_in_eval = False
    log_sigma: torch.Tensor  # a Parameter, or a buffer when not learnable
    running_rms: torch.Tensor  # a buffer, with scale="relative"

    def __init__(
        self,
        features: int = 0,
        sigma: float = 0.1,
        *,
        feature_dim: int = -1,
        scale: Literal["absolute", "relative"] = "absolute",
        learnable: bool = True,
        rms_momentum: float = 0.1,
        noise: NoiseSource = "auto",
        input_grad_fraction: float | None = None,
        regenerate: bool = True,
    ) -> None:
        config = ProjectionConfig(sigma=sigma, scale=scale, noise=noise, input_grad_fraction=input_grad_fraction,
                                  rms_momentum=rms_momentum, regenerate=regenerate)
        super().__init__()
        self._setup(check(features, int, "features", Limits(ge=0)), feature_dim, config, check(learnable, bool, "learnable"))

    @classmethod
    def from_config(cls, features: int, feature_dim: int, config: ProjectionConfig, learnable: bool = True) -> "GaussianProjection":
        """A projection from settings already validated (what :func:`~dipnet.projection.project` builds)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(features, feature_dim, config, learnable)
        return self

    def _setup(self, features: int, feature_dim: int, config: ProjectionConfig, learnable: bool) -> None:
        self.features, self.feature_dim = features, feature_dim
        self.scale, self.momentum, self.noise = config.scale, config.rms_momentum, config.noise
        self.input_grad_fraction, self.regenerate = config.input_grad_fraction, config.regenerate
        self._pending: tuple | None = None  # the window estimate the layer's post-hook will attach
        self._regen = None  # the regenerated-input hooks active during the layer's forward
        init = torch.full((features,) if features else (), math.log(config.sigma))
        if learnable:
            self.log_sigma = nn.Parameter(init)
        else:
            self.register_buffer("log_sigma", init)
        if config.scale == "relative":
            self.register_buffer("running_rms", torch.zeros(()))  # 0: taken from the first training batch

    @property
    def learnable(self) -> bool:
        return isinstance(self.log_sigma, nn.Parameter)

    @property
    def sigma(self) -> torch.Tensor:
        """The learned standard deviation (relative to the input RMS when ``scale="relative"``)."""
        return self.log_sigma.exp()

    def effective_sigma(self) -> torch.Tensor:
        """The noise std in the input's units."""
        sigma = self.sigma
        return sigma * self.running_rms if self.scale == "relative" else sigma

    def sigma_for(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """sigma in ``x``'s units for a sampling pass (updates the running RMS in train mode only)."""
        if self.features and (x.ndim == 0 or x.shape[dim] != self.features):
            found = x.shape[dim] if x.ndim else "none"
            raise ConfigError(
                f"GaussianProjection has {self.features} features but its input has "
                f"{found} in dimension {dim} (shape {tuple(x.shape)})"
            )
        sigma = self.log_sigma.exp()
        if self.scale == "relative":
            r = self.running_rms
            if self.training:
                with torch.no_grad():  # the first batch sets it, later ones move it by the momentum
                    rms = input_rms(x).to(r.dtype)
                    torch.where(r > 0, r.lerp(rms, self.momentum), rms, out=r)
            sigma = sigma * r
        return sigma

    def forward(self, x: torch.Tensor, layer: nn.Module | None = None) -> torch.Tensor:
        """Sample in train mode (or when ``sample_in_eval``), else return ``x``. ``layer``: the layer
        this projection feeds, given by :func:`~dipnet.projection.project`'s hook (enables the
        window estimate of ``input_grad_fraction``)."""
        if not (self.training or self.sample_in_eval):
            return x
        if layer is not None:
            return _fast.project_for(self, layer, x)
        return gaussian_projection(x, self.sigma_for(x, self.feature_dim), True, self.feature_dim, self.noise)

    def extra_repr(self) -> str:
        s = self.sigma.detach()
        stats = f"sigma={s.item():.4g}" if s.ndim == 0 else (
            f"features={self.features}, sigma mean={s.mean().item():.4g} min={s.min().item():.4g} max={s.max().item():.4g}"
        )
        extra = ("" if self.learnable else ", fixed") + ("" if self.regenerate else ", regenerate=False")
        fraction = "auto" if self.input_grad_fraction is None else f"{self.input_grad_fraction:g}"
        return (f"{stats}, scale={self.scale}, feature_dim={self.feature_dim}, noise={self.noise}, "
                f"input_grad_fraction={fraction}{extra}")
