"""Random weight perturbation: RWP, m-RWP, ARWP, m-ARWP (Li et al., TMLR 2024, nblt/mARWP; Li et al. 2022).

Noise is filter-wise and scaled by the weights (LPF-SGD style): row ``j`` of a parameter with
2+ dims (output filter / neuron) gets ``N(0, (sigma ||w_j||)^2)`` per element; a 1-D parameter
gets ``N(0, (sigma ||p||)^2)``. The noise is added in place, the gradient taken at ``w + eps``,
the clean weights restored exactly, and only then the base optimizer steps.

- RWP (``mix=None``): the gradient at ``w + eps`` only (1 pass per update).
- m-RWP (``mix=lambda``): ``lambda g1 + (1 - lambda) g0`` with ``g0`` the clean gradient of one
  mini-batch and ``g1`` the perturbed gradient of the next (the official single-process
  semantics): odd calls of ``step`` only store ``g0`` and do not update (2 passes per update).
- m-RWP's parallel form on an even number of data-parallel processes (:mod:`.rwp_parallel`).
- ARWP / m-ARWP (``adaptive=True``): ``F <- beta F + g^2`` from perturbed gradients (no
  ``1 - beta``), summed per filter, and the noise divided by ``sqrt(1 + eta F_filter)``. As in
  the released code (``train_marwp.py`` sums ``F.view(n, -1)`` over dim 1), the sum runs over
  rows of a 2+-D parameter and over single elements of a 1-D one: a bias's noise std is
  ``sigma ||b||`` shared, divided by ``sqrt(1 + eta F_i)`` element by element.

Parameters passed as ``fixed`` (what the method's other components declare, such as DIPNet's
log-sigmas) get no noise: weight-perturbation methods perturb only the model's own weights
(docs/methods.md).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..noise_table import NoiseSource, standard_normal
from ..schema import Validated, override, param
from ._wrapper import WrappedOptimizer, disable_running_stats, enable_running_stats, has_batchnorm, is_perturbed
from .rwp_parallel import parallel_mrwp_update
from .base import Closure, Component, StepContext
from .registry import register_component


def cosine_sigma(sigma: float, progress: float, ramp: float = 11.0) -> float:
    """ARWP's released schedule: ``sigma`` at the start, rising by half a cosine to ``ramp * sigma``."""
    return sigma * (1.0 + (ramp - 1.0) * 0.5 * (1.0 - math.cos(math.pi * min(max(progress, 0.0), 1.0))))


class _Layout:
    """All parameters as one flat vector (one copy for the exact restore, one draw of noise) with
    per-parameter views, and their *units* as one flat vector of per-unit values: a unit is a row
    (output filter) of a 2+-D parameter and an element of a 1-D one (``p.view(n, -1)``'s rows, as
    in the released code). Per-unit sums take one reduction per parameter and the rest of a step's
    noise arithmetic runs on whole vectors, since on a CPU each small op's fixed cost, not its
    arithmetic, dominates RWP's overhead on small models."""

    def __init__(self, groups: list[dict[str, Any]]) -> None:
        self.params = [p for g in groups for p in g["params"]]
        self.group_of = [gi for gi, g in enumerate(groups) for _ in g["params"]]
        self.sizes = [p.numel() for p in self.params]
        self.rows = [p.shape[0] if p.ndim >= 1 else 1 for p in self.params]
        self.cols = [n // r if r else 0 for n, r in zip(self.sizes, self.rows)]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.numel = sum(self.sizes)
        self._cache: dict[tuple, torch.Tensor] = {}

    def _broadcast(self, groups: list[dict[str, Any]], key: str, unit: str) -> torch.Tensor:
        counts = self.sizes if unit == "element" else self.rows
        vals = tuple(float(g[key]) for g in groups)
        hit = self._cache.get((unit, key, vals))
        if hit is None:
            hit = torch.cat([torch.full((n,), vals[gi], device=self.device) for n, gi in zip(counts, self.group_of)])
            self._cache = {k: v for k, v in self._cache.items() if k[:2] != (unit, key)}
            self._cache[(unit, key, vals)] = hit
        return hit

    def per_element(self, groups: list[dict[str, Any]], key: str) -> torch.Tensor:
        """A group hyperparameter broadcast to every element of the flat vector (cached while the values stay)."""
        return self._broadcast(groups, key, "element")

    def per_filter(self, groups: list[dict[str, Any]], key: str) -> torch.Tensor:
        """A group hyperparameter, one value per filter (cached while the values stay)."""
        return self._broadcast(groups, key, "filter")

    def filter_sums(self, flat: torch.Tensor) -> torch.Tensor:
        """Per-unit sums of a flat per-element vector: ``[sum_k t_jk]`` over all units j."""
        return torch.cat([v.view(r, c).sum(1) for v, r, c in zip(flat.split(self.sizes), self.rows, self.cols)])

    def norm_sq(self, flat: torch.Tensor) -> torch.Tensor:
        """Per unit, the squared norm that scales its noise: its row's for a 2+-D parameter, the
        whole vector's for a 1-D one (repeated over its elements)."""
        return torch.cat([v.view(r, c).sum(1) if p.ndim >= 2 else v.sum().expand(r)
                          for v, r, c, p in zip(flat.split(self.sizes), self.rows, self.cols, self.params)])

    def filter_views(self, per_filter: torch.Tensor) -> list[torch.Tensor]:
        """A per-unit vector as one tensor per parameter, broadcastable to it."""
        return [v.view(r, *([1] * (p.ndim - 1))) if p.ndim >= 1 else v.view(())
                for v, r, p in zip(per_filter.split(self.rows), self.rows, self.params)]

    def index(self, p: torch.Tensor) -> int:
        return next(i for i, q in enumerate(self.params) if q is p)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [v.view_as(p) for v, p in zip(flat.split(self.sizes), self.params)]

    def flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])


@dataclass
class RWPNoise(Validated):
    sigma: float = param(0.015, ge=0, doc="noise std per filter, relative to the filter's norm")
    noise: NoiseSource = param("auto", doc="normal draws: auto (table on a CPU), table, fresh")

    def _owner(self) -> str:
        return "RWP"


@dataclass
class Mixing(Validated):
    mix: float = param(0.5, ge=0, le=1, doc="lambda: weight of the perturbed gradient (m-RWP)")


@dataclass
class Adaptivity(Validated):
    eta: float = param(0.1, ge=0, doc="ARWP: noise divided by sqrt(1 + eta F)")
    beta: float = param(0.99, ge=0, le=1, doc="ARWP: F <- beta F + g^2")


@dataclass
class RWPSettings(RWPNoise, Adaptivity):
    """Every setting of the :class:`RWP` optimizer, with its limits."""

    mix: float | None = override(Mixing, "mix", None)


class RWP(WrappedOptimizer):
    """``RWP(params, torch.optim.SGD, sigma=0.015, mix=None, adaptive=False, eta=0.1, beta=0.99, lr=...)``.

    ``noise``: where the standard-normal draws come from, as in DIPNet (:mod:`dipnet.noise_table`):
    ``"auto"`` (the shared table on a CPU, ``torch.randn`` on accelerators), ``"table"``, ``"fresh"``.

    ``step(closure)`` runs ``closure`` (forward+loss+backward) once; it returns the loss and
    sets ``updated`` to whether the weights moved (False on m-RWP's clean half-steps).
    Custom loops: ``perturb()``, forward/backward, ``restore()``, then ``second_step()``.
    """

    def __init__(self, params: Iterable[Any], base_optimizer: type[torch.optim.Optimizer], sigma: float = 0.015,
                 mix: float | None = None, adaptive: bool = False, eta: float = 0.1, beta: float = 0.99,
                 noise: NoiseSource = "auto", fixed: Iterable[torch.Tensor] = (), **base_kwargs: Any) -> None:
        cfg = RWPSettings(sigma=sigma, noise=noise, mix=mix, eta=eta, beta=beta)
        defaults = dict(sigma=cfg.sigma, mix=cfg.mix, adaptive=bool(adaptive), eta=cfg.eta, beta=cfg.beta)
        super().__init__(params, base_optimizer, defaults, fixed=fixed, **base_kwargs)
        for g in self.param_groups:
            if not is_perturbed(g):
                g["sigma"] = 0.0
        self.layout = _Layout(self.param_groups)
        self.noise = cfg.noise
        self.phase = 0  # m-RWP: 0 = next call is the clean half-step, 1 = the perturbed one
        self.updated = False
        self._old: torch.Tensor | None = None
        self.F: torch.Tensor | None = None  # ARWP accumulator, flat
        self.clean_grad: torch.Tensor | None = None  # m-RWP's g0, flat

    @property
    def mixed(self) -> bool:
        return any(g["mix"] is not None for g in self.param_groups)

    def _extra_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase}
        if self.F is not None:
            out["F"] = self.F.clone()
        if self.clean_grad is not None:
            out["clean_grad"] = self.clean_grad.clone()
        return out

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.layout = _Layout(self.param_groups)
        self.phase = int(extra.get("phase", 0))
        dev = self.layout.device
        self.F = extra["F"].to(dev).clone() if "F" in extra else None
        self.clean_grad = extra["clean_grad"].to(dev).clone() if "clean_grad" in extra else None

    def accumulator(self, p: torch.Tensor) -> torch.Tensor | None:
        """ARWP's ``F`` for parameter ``p`` (None before the first update)."""
        if self.F is None:
            return None
        return self.layout.views(self.F)[self.layout.index(p)]

    def set_sigma(self, sigma: float) -> None:
        for g in self.param_groups:
            if is_perturbed(g):
                g["sigma"] = float(sigma)

    def _filter_std(self, w_flat: torch.Tensor) -> torch.Tensor:
        """``sigma ||w_j|| / sqrt(1 + eta F_j)`` per filter (the ARWP factor in adaptive groups only)."""
        lay, groups = self.layout, self.param_groups
        std = lay.norm_sq(w_flat * w_flat).sqrt_().mul_(lay.per_filter(groups, "sigma"))
        if self.F is not None and any(g["adaptive"] for g in groups):
            factor = lay.filter_sums(self.F).mul_(lay.per_filter(groups, "eta")).add_(1.0).rsqrt_()
            if not all(g["adaptive"] for g in groups):
                factor = torch.where(lay.per_filter(groups, "adaptive").bool(), factor, 1.0)
            std.mul_(factor)
        return std

    @torch.no_grad()
    def noise_std(self, w: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Per-filter std ``sigma ||w_j|| / sqrt(1 + eta F_j)`` (the ARWP factor only if adaptive), one
        tensor per parameter, broadcastable to it; ``w``: the weights (default: the current ones)."""
        lay = self.layout
        return lay.filter_views(self._filter_std(lay.flat([p.detach() for p in lay.params] if w is None else w)))

    def _unit_noise(self) -> list[torch.Tensor]:
        lay = self.layout
        z = standard_normal((lay.numel,), device=lay.device, dtype=lay.params[0].dtype, source=self.noise)
        return lay.views(z)  # may be views of the shared table: read only

    @torch.no_grad()
    def sample_noise(self, w: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """One draw of ``eps``, as tensors shaped like the parameters."""
        return list(torch._foreach_mul(self._unit_noise(), self.noise_std(w)))

    @torch.no_grad()
    def perturb(self) -> None:
        """``w <- w + eps`` in place (the clean ``w`` kept for an exact restore)."""
        lay = self.layout
        self._old = lay.flat([p.detach() for p in lay.params])
        std = lay.filter_views(self._filter_std(self._old))
        torch._foreach_addcmul_(lay.params, self._unit_noise(), std)

    @torch.no_grad()
    def restore(self) -> None:
        """Remove the noise: the weights become bit-identical to those before :meth:`perturb`."""
        if self._old is not None:
            torch._foreach_copy_(self.layout.params, self.layout.views(self._old))
            self._old = None

    def _flat_grad(self) -> torch.Tensor:
        return self.layout.flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.layout.params])

    @torch.no_grad()
    def store_clean_grad(self) -> None:
        """m-RWP: keep the current ``.grad`` as ``g0`` for the next update."""
        self.clean_grad = self._flat_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Given ``.grad`` at ``w + eps`` (noise already removed): update ``F``, mix with ``g0``, base step."""
        if any(g["adaptive"] for g in self.param_groups):
            g = self._flat_grad()
            beta = self.layout.per_element(self.param_groups, "beta")
            self.F = g * g if self.F is None else self.F.mul_(beta).addcmul_(g, g)
        if self.clean_grad is not None:
            g0 = self.layout.views(self.clean_grad)
            i = 0
            for group in self.param_groups:
                n = len(group["params"])
                lam = group["mix"]
                if lam is not None:
                    grads = [p.grad for p in group["params"]]
                    for j, gr in enumerate(grads):
                        if gr is None:
                            group["params"][j].grad = torch.zeros_like(group["params"][j])
                    grads = [p.grad for p in group["params"]]
                    torch._foreach_mul_(grads, lam)
                    torch._foreach_add_(grads, g0[i:i + n], alpha=1.0 - lam)
                i += n
            self.clean_grad = None
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], torch.Tensor] | None = None, model: nn.Module | None = None) -> torch.Tensor:  # type: ignore[override]  # adds model=; the closure is required and returns the loss tensor
        """One call = one mini-batch. ``closure`` does forward+loss+backward; ``.grad`` is zeroed here.

        ``model`` (optional) lets the perturbed pass leave BatchNorm running statistics alone
        when a clean pass exists (m-RWP); plain RWP has only perturbed passes and keeps them.
        """
        if closure is None:
            raise ValueError("RWP.step needs a closure that does forward, loss and backward")
        self.zero_grad(set_to_none=True)
        if self.mixed and self.phase == 0:
            with torch.enable_grad():
                loss = closure()
            self.store_clean_grad()
            self.zero_grad(set_to_none=True)
            self.phase, self.updated = 1, False
            return loss
        self.perturb()
        frozen = model if self.mixed and model is not None and has_batchnorm(model) else None
        if frozen is not None:
            disable_running_stats(frozen)
        try:
            with torch.enable_grad():
                loss = closure()
        finally:
            if frozen is not None:
                enable_running_stats(frozen)
            self.restore()
        self.second_step(zero_grad=True)
        self.phase, self.updated = 0, True
        return loss


@dataclass
class _RWPBase(Component, RWPNoise):
    slots = frozenset({"update"})

    sigma_schedule: Literal["constant", "cosine"] = param("constant", doc="cosine: ramp sigma up by half a cosine")
    sigma_ramp: float = param(11.0, ge=1, doc="final sigma / initial sigma of the cosine ramp")

    def build_optimizer(self, params: Iterable[Any], base: type[torch.optim.Optimizer], *,
                        fixed: Iterable[torch.Tensor] = (), **base_kwargs: Any) -> RWP:
        """The :class:`RWP` optimizer with this component's settings: ``mix`` from :class:`Mixing`,
        ``eta``/``beta`` and the adaptive noise from :class:`Adaptivity`, where mixed in."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in ("mix", "eta", "beta")}
        return RWP(params, base, sigma=self.sigma, adaptive=isinstance(self, Adaptivity), noise=self.noise,
                   fixed=fixed, **own, **base_kwargs)

    def scheduled(self, optimizer: torch.optim.Optimizer, ctx: StepContext) -> RWP:
        """``optimizer`` with this step's sigma set."""
        assert isinstance(optimizer, RWP)
        if self.sigma_schedule == "cosine":
            optimizer.set_sigma(cosine_sigma(self.sigma, ctx.progress, self.sigma_ramp))
        return optimizer

    def update(self, model: nn.Module, optimizer: torch.optim.Optimizer, closure: Closure, ctx: StepContext) -> bool:
        optimizer = self.scheduled(optimizer, ctx)
        optimizer.step(closure, model)
        return optimizer.updated


@register_component
@dataclass
class RWPMethod(_RWPBase):
    """RWP: the gradient at ``w + eps`` only (expected Bayes loss), 1 pass per update."""

    name = "rwp"
    description = "random weight perturbation (Li et al. 2024): gradient at w + filter-wise noise, 1 pass"
    tune = {"sigma": (0.005, 0.015, 0.03)}


@register_component
@dataclass
class MRWPMethod(_RWPBase, Mixing):
    """m-RWP: ``lambda g(w + eps; batch t+1) + (1 - lambda) g(w; batch t)``, one update per 2 batches;
    on an even number of data-parallel processes, the released parallel form (one update per global batch)."""

    name = "mrwp"
    description = "mixed RWP (Li et al. 2022/2024): lambda * perturbed + (1 - lambda) * clean gradient, 2 batches/update"
    tune = {"sigma": (0.005, 0.015, 0.03)}

    form: Literal["auto", "sequential", "parallel"] = param(
        "auto", doc="parallel: even ranks clean, odd ranks perturbed, one update per global batch (needs an even "
        "number of processes); sequential: clean and perturbed passes on successive batches; auto: parallel "
        "on an even number of processes")

    def check_world(self, world_size: int) -> None:
        if self.form == "parallel" and (world_size < 2 or world_size % 2):
            raise ConfigError(f"mrwp.form=parallel needs an even number of processes (half clean, half perturbed), "
                              f"not {world_size}; use --nproc 2 (or 4, ...) or mrwp.form=sequential")

    def parallel(self, world_size: int) -> bool:
        return self.form == "parallel" or (self.form == "auto" and world_size > 1 and world_size % 2 == 0)

    def update(self, model: nn.Module, optimizer: torch.optim.Optimizer, closure: Closure, ctx: StepContext) -> bool:
        if not self.parallel(ctx.world_size):
            return super().update(model, optimizer, closure, ctx)
        return parallel_mrwp_update(model, self.scheduled(optimizer, ctx), closure, ctx, self.mix)


@register_component
@dataclass
class ARWPMethod(_RWPBase, Adaptivity):
    """ARWP: RWP with noise divided by ``sqrt(1 + eta F_filter)``; sigma ramps by a cosine (x11)."""

    name = "arwp"
    description = "adaptive RWP (Li et al. 2024): noise shrunk where past gradients are large, cosine sigma ramp"
    tune = {"sigma": (0.0005, 0.001, 0.002)}

    sigma: float = override(RWPNoise, "sigma", 0.001)
    sigma_schedule: Literal["constant", "cosine"] = override(_RWPBase, "sigma_schedule", "cosine")


@register_component
@dataclass
class MARWPMethod(_RWPBase, Mixing, Adaptivity):
    """m-ARWP: m-RWP with ARWP's adaptive noise."""

    name = "marwp"
    description = "mixed adaptive RWP (Li et al. 2024): m-RWP with ARWP's adaptive noise"
    tune = {"sigma": (0.005, 0.015, 0.03)}
