"""Gradient attacks on the input: FGSM (Goodfellow et al., ICLR 2015) and PGD (Madry et al., ICLR 2018).

One small callable class per attack (torchattacks style) plus a function for each. Unlike
torchattacks, the valid input range is explicit (``bounds`` from ``DatasetInfo.bounds``;
standardized data is not in [0, 1]) and stochastic models are attacked with Expectation over
Transformation (Athalye et al., ICML 2018): the input gradient is averaged over ``eot_samples``
noisy forward passes, ``grad E_eps[L(f(x; eps), y)] ~ (1/K) sum_k grad L(f(x; eps_k), y)``;
without it a randomized model looks more robust than it is.

The model runs in the mode ``mode`` names for the attack (``"eval"``: deterministic;
``"noise"``: eval but DIPNet's projections sample noise, as in the smoothed net; ``"keep"``:
as given) and its train/eval flags and ``requires_grad`` flags are restored afterwards.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Literal, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..projection import noise_layers, sampling
from ..schema import Limits, check, choice

Bound = Union[float, torch.Tensor]
Bounds = Union[tuple[Bound, Bound], None]
Norm = Literal["linf", "l2"]
NORMS = ("linf", "l2")
LOSSES = ("ce", "cw")
MODES = ("eval", "noise", "keep")


@contextlib.contextmanager
def attack_mode(model: nn.Module, mode: str = "eval") -> Iterator[nn.Module]:
    """Put ``model`` in the attack's mode with frozen weights; restore every flag on exit.
    No buffer changes: ``"noise"`` samples through :func:`dipnet.projection.sampling`; ``"keep"``
    runs the model in the modes it has and puts its buffers (BatchNorm statistics, running RMS)
    back as they were."""
    _choice(mode, "mode", MODES)
    requires = [(p, p.requires_grad) for p in model.parameters()]
    kept = [(b, b.detach().clone()) for b in model.buffers()] if mode == "keep" else []
    try:
        with contextlib.ExitStack() as stack:
            if mode == "eval":
                stack.enter_context(sampling(model, layers=()))
            elif mode == "noise":
                if not noise_layers(model):
                    raise ConfigError(
                        "mode='noise' needs a model with noise layers (DIPNet projections); "
                        "use mode='eval' for a deterministic model"
                    )
                stack.enter_context(sampling(model))
            for p in model.parameters():
                p.requires_grad_(False)
            yield model
    finally:
        for p, flag in requires:
            p.requires_grad_(flag)
        with torch.no_grad():
            for b, value in kept:
                b.copy_(value)


def _choice(value: object, name: str, allowed: tuple[str, ...]) -> str:
    return choice(value, name, allowed)


def _positive_int(value: object, name: str) -> int:
    return check(value, int, name, Limits(gt=0))


def _nonneg_float(value: object, name: str) -> float:
    return check(value, float, name, Limits(ge=0))


def bounds_tensors(bounds: Bounds, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(lo, hi)`` as tensors broadcastable to ``x`` (floats or per-channel tensors), or None."""
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ConfigError(f"bounds must be (lo, hi) or None, not {bounds!r}; use the dataset's info.bounds")
    if all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
        if not bounds[0] < bounds[1]:
            raise ConfigError(f"bounds must satisfy lo < hi, got {bounds!r}")
        return (torch.tensor(float(bounds[0]), dtype=x.dtype, device=x.device),
                torch.tensor(float(bounds[1]), dtype=x.dtype, device=x.device))
    lo, hi = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in bounds)
    try:
        torch.broadcast_shapes(lo.shape, x.shape[1:]), torch.broadcast_shapes(hi.shape, x.shape[1:])
    except RuntimeError:
        raise ConfigError(
            f"bounds of shapes {tuple(lo.shape)} and {tuple(hi.shape)} do not broadcast to inputs of shape "
            f"{tuple(x.shape[1:])}"
        ) from None
    if not bool((lo < hi).all()):
        raise ConfigError(f"bounds must satisfy lo < hi, got {bounds!r}")
    return lo, hi


def clamp_to(x: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    return x if box is None else torch.clamp(x, box[0], box[1])


def _inside(x: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor], tol: float = 1e-5) -> bool:
    if box[0].ndim == 0 and box[1].ndim == 0:
        lo, hi = torch.aminmax(x)
        return bool(lo >= box[0] - tol) and bool(hi <= box[1] + tol)
    return bool(((x >= box[0] - tol) & (x <= box[1] + tol)).all())


def _check_batch(x: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"x must be a non-empty floating-point batch of shape (B, *input_shape), got {got}")
    soft = isinstance(y, torch.Tensor) and y.is_floating_point() and y.ndim == 2 and y.shape[0] == x.shape[0]
    if not isinstance(y, torch.Tensor) or not (soft or (y.dtype == torch.int64 and y.shape == x.shape[:1])):
        got_y = (tuple(y.shape), y.dtype) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ConfigError(f"y must be int64 class labels of shape ({x.shape[0]},) or soft labels (B, classes), got {got_y}")
    return x.detach(), y.to(x.device)


def per_example_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """The attacker's objective per example: cross-entropy (soft labels (B, C) too), or the
    Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (Carlini & Wagner 2017, eq. 6 without the
    confidence clamp)."""
    if logits.ndim != 2:
        raise ConfigError(f"the model must return logits of shape (B, classes), got {tuple(logits.shape)}")
    if y.is_floating_point():
        if loss != "ce" or y.shape != logits.shape:
            raise ConfigError(f"soft labels need loss='ce' and the logits' shape {tuple(logits.shape)}, got {tuple(y.shape)}")
        return -(y * logits.log_softmax(-1)).sum(-1)
    if int(y.max()) >= logits.shape[1] or int(y.min()) < 0:
        raise ConfigError(f"labels must lie in [0, {logits.shape[1] - 1}] for a model with {logits.shape[1]} outputs")
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def input_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce", eot_samples: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad, loss, probs)``: the input gradient of the per-example loss, that loss and the softmax
    probabilities, each averaged over ``eot_samples`` forward passes (EOT; one pass is exact for a
    deterministic model). The model is called as it is: use :func:`attack_mode` around it."""
    def one_pass() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        value = per_example_loss(logits, y, loss)
        (g,) = torch.autograd.grad(value.sum(), xr)
        return g, value.detach(), logits.detach().softmax(-1)

    grad, total, probs = one_pass()
    if eot_samples == 1:
        return grad, total, probs
    for _ in range(eot_samples - 1):
        g, value, p = one_pass()
        grad, total, probs = grad + g, total + value, probs + p
    return grad / eot_samples, total / eot_samples, probs / eot_samples


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent unit step: ``sign(g)`` for L-inf, ``g / ||g||_2`` for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / _flat_norm(grad).clamp_min(1e-12)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)


class Attack:
    """Common settings; subclasses implement ``perturb(x, y)`` on a model already in attack mode."""

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        *,
        norm: Norm = "linf",
        bounds: Bounds = None,
        loss: str = "ce",
        eot_samples: int = 1,
        mode: str = "eval",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self.eps = _nonneg_float(eps, "eps")
        self.norm = _choice(norm, "norm", NORMS)
        self.bounds = bounds
        self.loss = _choice(loss, "loss", LOSSES)
        self.eot_samples = _positive_int(eot_samples, "eot_samples")
        self.mode = _choice(mode, "mode", MODES)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for the batch ``(x, y)``, inside the eps-ball and the bounds."""
        x, y = _check_batch(x, y)
        param = next(self.model.parameters(), None)
        if param is not None and param.device != x.device:
            x, y = x.to(param.device), y.to(param.device)
        box = bounds_tensors(self.bounds, x)
        if box is not None and not _inside(x, box):
            raise ConfigError(
                f"inputs lie outside bounds {self.bounds!r} (range [{float(x.min()):.4g}, {float(x.max()):.4g}]); "
                "pass the dataset's info.bounds, or bounds=None for unbounded inputs"
            )
        if self.eps == 0:
            return x.clone()
        with attack_mode(self.model, self.mode), torch.enable_grad():
            return self.perturb(x, y, box).detach()

    def perturb(self, x: torch.Tensor, y: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        raise NotImplementedError

    def gradient(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return input_gradient(self.model, x, y, self.loss, self.eot_samples)

    def extra_repr(self) -> str:
        return (f"eps={self.eps}, norm={self.norm!r}, bounds={self.bounds!r}, loss={self.loss!r}, "
                f"eot_samples={self.eot_samples}, mode={self.mode!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


class FGSM(Attack):
    """Fast gradient sign method: ``x' = clip(x + eps * sign(grad_x L(f(x), y)))`` (Goodfellow et
    al. 2015, eq. 3); with ``norm="l2"`` the fast gradient method ``x + eps * g / ||g||_2``."""

    def perturb(self, x: torch.Tensor, y: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        grad, _, _ = self.gradient(x, y)
        step = grad.sign_() if self.norm == "linf" else _direction(grad, self.norm)
        adv = step.mul_(self.eps).add_(x)
        return adv if box is None else adv.clamp_(box[0], box[1])


class PGD(Attack):
    """Projected gradient ascent (Madry et al. 2018, eq. 2): ``x_{t+1} = P(x_t + alpha * dir(grad))``,
    ``P`` the projection onto the eps-ball around ``x`` and then onto the bounds. Random start
    (uniform in the ball), ``restarts`` independent runs; per example the iterate that fools the
    model, else the one of highest loss, is returned. ``alpha`` defaults to ``2.5 * eps / steps``."""

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        alpha: float | None = None,
        steps: int = 20,
        *,
        random_start: bool = True,
        restarts: int = 1,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, eps, **kwargs)
        self.steps = _positive_int(steps, "steps")
        self.alpha = 2.5 * self.eps / self.steps if alpha is None else _nonneg_float(alpha, "alpha")
        if alpha is not None and self.alpha == 0:
            raise ConfigError("alpha (the step size) must be positive; leave it None for 2.5 * eps / steps")
        self.random_start = bool(random_start)
        self.restarts = _positive_int(restarts, "restarts")
        self.seed = int(seed)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", alpha={self.alpha:.4g}, steps={self.steps}, "
                f"random_start={self.random_start}, restarts={self.restarts}")

    def _random_delta(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.norm == "linf":
            return (torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1) * self.eps
        direction = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        direction = direction / _flat_norm(direction).clamp_min(1e-12)
        d = x[0].numel()
        radius = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype) ** (1.0 / d)
        return direction * (self.eps * radius).view(-1, *([1] * (x.ndim - 1)))

    def perturb(self, x: torch.Tensor, y: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        n = x.shape[0]
        state = {"best": x.clone()}
        best_loss = torch.full((n,), float("-inf"), device=x.device, dtype=x.dtype)
        best_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)

        def keep(candidate: torch.Tensor, value: torch.Tensor, probs: torch.Tensor) -> torch.Tensor | None:
            """Record the better rows of ``candidate``; return a buffer free for reuse (or None)."""
            fooled = probs.argmax(1) != y
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (value > best_loss))
            best_loss.copy_(torch.where(better, value, best_loss))
            best_fooled.logical_or_(better & fooled)
            rows = better.nonzero().squeeze(1)
            if rows.numel() == n:  # every row improved (the usual case): adopt the buffer, no copy
                free, state["best"] = state["best"], candidate
                return free
            if rows.numel():
                state["best"].index_copy_(0, rows, candidate.index_select(0, rows))
            return candidate

        if self.norm == "linf":  # the ball and the bounds are boxes: project onto their intersection
            lo, hi = x - self.eps, x + self.eps
            if box is not None:
                lo, hi = torch.maximum(lo, box[0]), torch.minimum(hi, box[1])
        for _ in range(self.restarts):
            adv = clamp_to(x + self._random_delta(x, gen), box) if self.random_start else x.clone()
            spare = torch.empty_like(x)
            for _ in range(self.steps):
                grad, value, probs = self.gradient(adv, y)
                if self.norm == "linf":
                    new = torch.add(adv, grad.sign_(), alpha=self.alpha, out=spare).clamp_(lo, hi)
                else:
                    new = clamp_to(x + _project(adv + self.alpha * _direction(grad, "l2") - x, self.eps, "l2"), box)
                free = keep(adv, value, probs)
                spare = free if free is not None and free is not new else torch.empty_like(x)
                adv = new
            with torch.no_grad():
                value = x.new_zeros(n)
                probs = x.new_zeros(())  # 0-dim: the sum takes the logits' shape and dtype
                for _ in range(self.eot_samples):
                    logits = self.model(adv)
                    value = value + per_example_loss(logits, y, self.loss)
                    probs = probs + logits.softmax(-1)
            keep(adv, value / self.eot_samples, probs / self.eot_samples)
        return state["best"]


def fgsm(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, bounds: Bounds = None, **kwargs: Any
) -> torch.Tensor:
    """:class:`FGSM` in one call; ``kwargs``: norm, loss, eot_samples, mode."""
    return FGSM(model, eps, bounds=bounds, **kwargs)(x, y)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 20,
    alpha: float | None = None,
    norm: Norm = "linf",
    bounds: Bounds = None,
    random_start: bool = True,
    restarts: int = 1,
    **kwargs: Any,
) -> torch.Tensor:
    """:class:`PGD` in one call; ``kwargs``: loss, eot_samples, mode, seed."""
    return PGD(model, eps, alpha, steps, norm=norm, bounds=bounds, random_start=random_start,
               restarts=restarts, **kwargs)(x, y)


ATTACKS = {"fgsm": FGSM, "pgd": PGD}
