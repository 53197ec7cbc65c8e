"""DIPNet's objective with m trajectories in one batched forward, and deterministic or sampled
prediction (Hao et al., arXiv 2506.04690, "Training objective" and Algorithm 3).

Models are called ``model(x)``, or ``model(**x)`` when ``x`` is a mapping of keyword inputs (a
Hugging Face batch: ``input_ids``, ``attention_mask``, ...); an output with a ``.logits``
attribute (Hugging Face's ``ModelOutput``) gives its logits.
"""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError
from ..schema import Limits, Validated, check, check_memory, check_type, param
from . import _fast
from .insert import projections
from .noise import noise_layers, sampling
from .regenerate import repeated

__all__ = ["DEFAULT_PRIOR", "DIPNetLoss", "LossConfig", "call_model", "logits_of", "predict", "repeat_batch"]

# (alpha, beta) of the variance prior; its minimum is at lambda = sigma^2 = beta / alpha: sigma 0.5
# in input units at the default absolute scale. Chosen on validation across four tasks, 10 seeds
# each (suites/dipnet-defaults.toml, docs/dipnet.md "Defaults").
DEFAULT_PRIOR: tuple[float, float] = (1e-2, 2.5e-3)


@dataclass
class LossConfig(Validated):
    """The settings of :class:`DIPNetLoss`, with their limits."""

    trajectories: int = param(1, ge=1, doc="m: noise draws per example, stacked in one forward")
    batchnorm: Literal["pooled", "per-trajectory"] = param(
        "pooled", doc="BatchNorm statistics of the m trajectories: pooled in one forward, or one forward each")
    stability: float = param(0.0, ge=0, doc="weight of the trajectories' prediction spread (m > 1)")
    alpha: float = param(DEFAULT_PRIOR[0], ge=0, doc="variance prior: alpha * lambda")
    beta: float = param(DEFAULT_PRIOR[1], ge=0, doc="variance prior: - beta * ln lambda")


def logits_of(output: Any) -> Any:
    """The logits of a model's output: the tensor itself, or its ``.logits`` (Hugging Face)."""
    return output if isinstance(output, torch.Tensor) else getattr(output, "logits", output)


def batch_size_of(x: Any) -> int:
    """Rows of a batch: a tensor's first dimension, or that of a keyword batch's first tensor."""
    if isinstance(x, Mapping):
        for value in x.values():
            if isinstance(value, torch.Tensor) and value.ndim:
                return value.shape[0]
        raise ConfigError(f"the keyword batch has no tensor inputs (keys: {', '.join(map(str, x))})")
    return x.shape[0]


def _nbytes(x: Any) -> int:
    values = x.values() if isinstance(x, Mapping) else (x,)
    return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))


def _device_of(x: Any) -> torch.device:
    values = x.values() if isinstance(x, Mapping) else (x,)
    return next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))


@torch.no_grad()
def activation_bytes(model: nn.Module, x: Any) -> int | None:
    """Bytes of the outputs of ``model``'s layers (modules without children or with parameters of
    their own) in one forward of the batch ``x``: what the forward keeps for the backward. Measured
    in eval mode (noise layers are the identity, no buffer changes) with the random state
    restored; None if that forward fails (the training forward then reports why)."""
    total = 0

    def hook(module: nn.Module, inputs: Any, out: Any) -> None:
        nonlocal total
        total += sum(t.numel() * t.element_size() for t in (out if isinstance(out, (tuple, list)) else (out,))
                     if isinstance(t, torch.Tensor))

    layers = [m for m in model.modules() if not m._modules or next(m.parameters(recurse=False), None) is not None]
    handles = [m.register_forward_hook(hook) for m in layers]
    device = _device_of(x)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), sampling(model, layers=()):
            call_model(model, x)
    except RuntimeError:
        return None
    finally:
        for h in handles:
            h.remove()
    return total


def stacked_bytes(model: nn.Module, x: Any, m: int) -> int | None:
    """Estimated bytes of a training step on m stacked copies of the batch ``x``: the copies, and
    twice their activations (kept by the forward, then their gradients); None if unknown."""
    activations = activation_bytes(model, x)
    return None if activations is None else m * (_nbytes(x) + 2 * activations)


def repeat_batch(x: Any, m: int) -> Any:
    """``x`` stacked m times along dimension 0; a keyword batch has each of its tensors of the
    batch's rows stacked (other values, such as ``logits_to_keep=8``, pass through)."""
    if m == 1:
        return x
    if isinstance(x, Mapping):
        n = batch_size_of(x)
        return {k: repeat_batch(v, m) if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n else v
                for k, v in x.items()}
    return x.repeat(m, *([1] * (x.ndim - 1)))


def call_model(model: nn.Module, x: Any) -> Any:
    """``model(**x)`` for a keyword batch, else ``model(x)``; the logits of the output."""
    return logits_of(model(**x) if isinstance(x, Mapping) else model(x))


def _prior_pair(prior: Any) -> tuple[Any, Any]:
    try:
        alpha, beta = prior
    except (TypeError, ValueError):
        raise ConfigError(f"prior must be a pair (alpha, beta), not {prior!r}") from None
    return alpha, beta


class DIPNetLoss:
    """DIPNet's objective (spec "Training objective"), m trajectories in ONE batched forward:

    ``L = mean_t criterion(f(x; eps_t), y) + stability * mean_t ||p_t - mean_t p||^2
    + sum_l sum_j (alpha * lambda_lj - beta * ln lambda_lj)``, ``lambda = sigma^2`` (learnable only).

    ``parts`` holds the detached terms of the last call: ``loss``, and ``stability`` / ``prior``
    when they are active. BatchNorm layers see the m trajectories as one batch of m B rows
    (``batchnorm="pooled"``, the default and the fast path: one forward) or each trajectory as its
    own batch of B rows (``"per-trajectory"``: m forwards, running statistics updated m times,
    as m separate samples would). The default prior :data:`DEFAULT_PRIOR` pulls each sigma towards
    ``sqrt(beta / alpha) = 0.2`` (relative to the layer input's RMS at the default relative scale);
    without a prior the data term shrinks sigma and DIPNet trains like ERM. ``prior=(0, 0)`` turns it off.
    """

    def __init__(
        self,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        trajectories: int = 1,
        stability: float = 0.0,
        prior: tuple[float, float] = DEFAULT_PRIOR,
        batchnorm: Literal["pooled", "per-trajectory"] = "pooled",
    ) -> None:
        check_type(criterion, callable, "DIPNetLoss's criterion", "pass a loss function such as F.cross_entropy")
        alpha, beta = _prior_pair(prior)
        self._setup(criterion, LossConfig(trajectories=trajectories, stability=stability, alpha=alpha, beta=beta,
                                          batchnorm=batchnorm))

    @classmethod
    def from_config(cls, config: LossConfig,
                    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy) -> "DIPNetLoss":
        self = cls.__new__(cls)
        self._setup(criterion, config)
        return self

    def _setup(self, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], config: LossConfig) -> None:
        self.criterion, self.trajectories, self.stability = criterion, config.trajectories, config.stability
        self.alpha, self.beta, self.batchnorm = config.alpha, config.beta, config.batchnorm
        self.parts: dict[str, torch.Tensor] = {}
        self._cache: tuple[Any, int, list[torch.Tensor]] | None = None
        self._seen: Any = None

    def __repr__(self) -> str:
        return (f"DIPNetLoss(trajectories={self.trajectories}, stability={self.stability}, "
                f"prior=({self.alpha}, {self.beta}))")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None, "_seen": None}

    def _first_call(self, model: nn.Module, x: Any) -> None:
        """Once per model: warn when it has no noise layer (the loss is then cross-entropy), and
        refuse m stacked trajectories that would not fit in the memory of the batch's device."""
        check_type(model, nn.Module, "DIPNetLoss's model")
        inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        inner = getattr(inner, "_orig_mod", inner)  # torch.compile's wrapper: measure the eager module
        active = self.trajectories > 1 or self.stability > 0 or self.alpha or self.beta
        if active and not noise_layers(inner):
            warnings.warn("DIPNetLoss: the model has no DIPNet projections, so the loss is plain cross-entropy "
                          "(identical trajectories, no prior); call dipnet.project(model) first", stacklevel=3)
        m = self.trajectories
        need = stacked_bytes(inner, x, m) if m > 1 else None
        if need is not None:
            check_memory(need, f"DIPNetLoss: {m} trajectories of a batch of {batch_size_of(x)}",
                         "lower the trajectories or the batch size", _device_of(x))
        self._seen = weakref.ref(model)

    def _log_sigmas(self, model: nn.Module) -> list[torch.Tensor]:
        cached = self._cache
        if cached is not None and cached[0]() is model and cached[1] == _fast.version():
            return cached[2]
        logs = [p.log_sigma for _, p in projections(model) if p.learnable]
        self._cache = (weakref.ref(model), _fast.version(), logs)
        return logs

    def prior(self, model: nn.Module) -> torch.Tensor:
        """``sum_l sum_j (alpha * lambda_lj - beta * ln lambda_lj)`` over the learnable projections."""
        logs = self._log_sigmas(model)
        if not logs:
            return torch.zeros(())
        log_lam = torch.cat([log if log.ndim == 1 else log.reshape(-1) for log in logs]).mul(2)
        if not self.alpha:
            return log_lam.sum().mul(-self.beta)
        return torch.sub(log_lam.exp(), log_lam, alpha=self.beta / self.alpha).sum().mul(self.alpha)

    @torch.no_grad()
    def prior_grad_(self, model: nn.Module) -> None:
        """Add the prior's exact gradient ``2 alpha sigma^2 - 2 beta`` (per log sigma) to the
        sigmas' ``.grad``: the prior applied outside the loss (a Hugging Face callback before
        the optimizer step; elementwise, so sharded parameters work too)."""
        if not (self.alpha or self.beta):
            return
        for log in self._log_sigmas(model):
            grad = log.mul(2).exp_().mul_(2 * self.alpha).sub_(2 * self.beta)
            if log.grad is None:
                log.grad = grad
            else:
                log.grad.add_(grad)

    def __call__(self, model: nn.Module, x: Any, y: torch.Tensor, *, criterion: Callable[[torch.Tensor, torch.Tensor],
                 torch.Tensor] | None = None) -> torch.Tensor:
        """The objective on a batch: ``x`` a tensor or a mapping of keyword inputs (each of its
        tensors is repeated m times), ``y`` the targets (Hugging Face: ``labels``, repeated too);
        ``criterion`` replaces this loss's own for the call (a task's loss on the logits)."""
        check_type(x, (torch.Tensor, Mapping), "DIPNetLoss's inputs x", "pass a batch tensor or a dict of them")
        check_type(y, torch.Tensor, "DIPNetLoss's targets y")
        if self._seen is None or self._seen() is not model:
            self._first_call(model, x)
        m, batch = self.trajectories, batch_size_of(x)
        xr = repeat_batch(x, m)
        try:
            if m > 1 and self.batchnorm == "per-trajectory" and any(isinstance(mod, _BatchNorm) for mod in model.modules()):
                logits = torch.cat([call_model(model, x) for _ in range(m)])
            else:
                with repeated(xr, x, m):  # the first layer keeps x once, not its m copies
                    logits = call_model(model, xr)
        except RuntimeError as exc:
            if m == 1:
                raise
            raise ConfigError(
                f"the model's forward failed on the repeated batch of {m} x {batch} examples ({exc}); "
                "DIPNet stacks its trajectories along dimension 0, so the forward must accept any batch size"
            ) from None
        if not isinstance(logits, torch.Tensor) or logits.ndim < 1 or logits.shape[0] != m * batch:
            raise ConfigError(
                f"the model returned {getattr(logits, 'shape', type(logits).__name__)} for a batch of {m * batch}; "
                "DIPNet needs a forward that maps a batch of N examples to N rows of logits"
            )
        yr = y.repeat(m, *([1] * (y.ndim - 1))) if m > 1 else y
        data = (criterion or self.criterion)(logits, yr)
        total = data
        self.parts = {"loss": data.detach()}
        if self.stability > 0 and m > 1:
            p = logits.softmax(-1).view(m, batch, -1)
            stab = (p - p.mean(0)).pow(2).sum(-1).mean()
            total = total + self.stability * stab
            self.parts["stability"] = stab.detach()
        if self.alpha or self.beta:
            prior = self.prior(model)
            total = total + prior
            self.parts["prior"] = prior.detach()
        return total


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, samples: int = 0) -> torch.Tensor:
    """Class probabilities. ``samples=0``: deterministic (eval, the paper's Algorithm 3);
    ``samples=k``: mean softmax of k stochastic passes (noise layers sampling, the rest in eval,
    no buffer updated), as one batched forward. The model's train/eval flags are restored."""
    check_type(model, nn.Module, "predict's model")
    check_type(x, (torch.Tensor, Mapping), "predict's inputs x", "pass a batch tensor or a dict of them")
    samples = check(samples, int, "samples", Limits(ge=0))
    if samples == 0:
        with sampling(model, layers=()):
            return call_model(model, x).softmax(-1)
    if not noise_layers(model):
        raise ConfigError("samples > 0 needs a projected model (dipnet.project); use samples=0")
    with sampling(model):
        return call_model(model, repeat_batch(x, samples)).softmax(-1).view(samples, batch_size_of(x), -1).mean(0)
