"""DIPNet's distributional input projection (Hao et al., arXiv 2506.04690, "The layer").

Every targeted layer ``v_l = Layer_l(v_{l-1})`` becomes ``v_l = Layer_l(u_l)`` with the
reparameterized sample ``u_l = v_{l-1} + sigma_l * eps_l``, ``eps_l ~ N(0, I)``: a Gaussian with
the layer input as mean and a learnable diagonal covariance ``diag(lambda_l) = diag(sigma_l^2)``.
Eval mode passes the mean through (the paper's deterministic Algorithm 3), so
:func:`strip` can remove every projection and ship a plain network.

Three lines in a user's loop::

    dipnet.project(model, sigma=0.1)                       # before building the optimizer
    dip_loss = dipnet.DIPNetLoss(trajectories=4)
    loss = dip_loss(model, x, y); loss.backward()

Mechanics: the projection is registered as a child ``dipnet_projection`` of the layer it feeds
and called from a forward pre-hook, so the layer's own parameter names (and pre-trained
checkpoints) are unchanged, the optimizer sees ``...dipnet_projection.log_sigma``, and
``deepcopy``/pickling/``state_dict`` work. Positivity: ``sigma = exp(log_sigma)`` (our choice).
The ``log_sigma`` tensors are 0-D or 1-D, so the engine puts them in its no-weight-decay group;
their regularizer is the variance prior of :class:`DIPNetLoss`.
"""
from __future__ import annotations

import fnmatch
import math
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

__all__ = [
    "DIPNetLoss",
    "GaussianProjection",
    "gaussian_projection",
    "is_projected",
    "predict",
    "project",
    "projections",
    "sigma_summary",
    "strip",
]

ATTR = "dipnet_projection"
_HOOK_ATTR = "_dipnet_hook_id"
SCALES = ("absolute", "relative")
GRANULARITIES = ("feature", "layer")
DEFAULT_TARGETS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
_BLOCK_WORDS = ("attention", "attn", "mlp", "feedforward", "ffn")


def gaussian_projection(
    x: torch.Tensor, sigma: torch.Tensor | float, training: bool = True, feature_dim: int = -1
) -> torch.Tensor:
    """``x + sigma * eps`` with ``eps ~ N(0, I)`` in training, ``x`` otherwise (DIPNet, "The layer").

    ``sigma`` is a scalar, or a vector over ``x``'s ``feature_dim`` (the last dimension for a
    Linear input, the channel dimension 1 for a convolution input).
    """
    if not training:
        return x
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 1:
        if feature_dim != -1 and feature_dim != x.ndim - 1:
            sigma = sigma.view(sigma.shape[0], *([1] * (x.ndim - 1 - feature_dim)))
    return torch.addcmul(x, sigma, torch.randn_like(x))


class GaussianProjection(nn.Module):
    """Learnable Gaussian input projection: train mode samples ``x + sigma * eps``, eval returns ``x``.

    ``features`` > 0 gives one variance per feature (per channel for convolutions, ``feature_dim=1``);
    ``features=0`` one shared variance. ``scale="relative"`` multiplies sigma by a running RMS of
    the input (momentum ``momentum``, updated in train mode), so one sigma fits layers of any scale.
    ``learnable=False`` keeps sigma fixed (fixed-sigma noise layers, Random Self-Ensemble).
    """

    is_noise_module = True

    def __init__(
        self,
        features: int = 0,
        sigma: float = 0.1,
        *,
        feature_dim: int = -1,
        scale: str = "absolute",
        learnable: bool = True,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        _check_sigma(sigma)
        if scale not in SCALES:
            raise ConfigError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
        if isinstance(features, bool) or not isinstance(features, int) or features < 0:
            raise ConfigError(f"features must be an integer >= 0 (0: one shared sigma), not {features!r}")
        if not 0.0 < momentum <= 1.0:
            raise ConfigError(f"momentum must be in (0, 1], not {momentum!r}")
        self.features, self.feature_dim, self.scale, self.momentum = features, feature_dim, scale, momentum
        init = torch.full((features,) if features else (), math.log(sigma))
        if learnable:
            self.log_sigma = nn.Parameter(init)
        else:
            self.register_buffer("log_sigma", init)
        if scale == "relative":
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.features and x.shape[self.feature_dim] != self.features:
            raise ConfigError(
                f"GaussianProjection has {self.features} features but its input has "
                f"{x.shape[self.feature_dim]} in dimension {self.feature_dim} (shape {tuple(x.shape)})"
            )
        sigma = self.sigma
        if self.scale == "relative":
            with torch.no_grad():
                rms = x.detach().pow(2).mean().sqrt().to(self.running_rms.dtype)
                r = self.running_rms
                r.copy_(torch.where(r > 0, r + self.momentum * (rms - r), rms))
            sigma = sigma * self.running_rms
        return gaussian_projection(x, sigma, True, self.feature_dim)

    def extra_repr(self) -> str:
        s = self.sigma.detach()
        stats = f"sigma={s.item():.4g}" if s.ndim == 0 else (
            f"features={self.features}, sigma mean={s.mean().item():.4g} min={s.min().item():.4g} max={s.max().item():.4g}"
        )
        extra = "" if self.learnable else ", fixed"
        return f"{stats}, scale={self.scale}, feature_dim={self.feature_dim}{extra}"


def _check_sigma(sigma: Any) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"sigma must be a finite number > 0, not {sigma!r} (use no projection for zero noise)")


_KWARG_INPUTS = ("hidden_states", "x", "input", "inputs_embeds")


def _projection_hook(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """Project the layer's first positional input, or its ``hidden_states=`` keyword (Hugging Face blocks)."""
    proj = module._modules[ATTR]
    if not proj.training:  # eval: the mean passes through, skip the module call
        return None
    if args:
        return (proj(args[0]), *args[1:]), kwargs
    for key in _KWARG_INPUTS:
        if key in kwargs:
            return args, {**kwargs, key: proj(kwargs[key])}
    raise ConfigError(
        f"{type(module).__name__} was called without a positional input or one of the keywords "
        f"{', '.join(_KWARG_INPUTS)}, so its DIPNet projection has nothing to project; exclude it"
    )


def _layer_features(module: nn.Module) -> tuple[int, int] | None:
    """(number of input features, feature dimension) of a targeted module, or None if unknown."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels, 1
    if isinstance(module, nn.Linear):
        return module.in_features, -1
    for sub in module.modules():  # a block (attention, MLP): its first Linear reads the last dim
        if isinstance(sub, nn.Linear):
            return sub.in_features, -1
        if type(sub).__name__ == "Conv1D" and hasattr(sub, "weight") and sub.weight.ndim == 2:  # HF GPT-2
            return sub.weight.shape[0], -1
    return None


def _matches(name: str, module: nn.Module, patterns: Sequence[Any]) -> bool:
    for p in patterns:
        if isinstance(p, type):
            if isinstance(module, p):
                return True
        elif isinstance(p, str):
            if fnmatch.fnmatchcase(name, p) or name == p:
                return True
        else:
            raise ConfigError(f"include/exclude entries must be module-name patterns or module types, not {p!r}")
    return False


def _is_block(name: str, module: nn.Module) -> bool:
    cls = type(module).__name__.lower()
    return any(w in cls for w in _BLOCK_WORDS) and not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, type)):
        return [value]
    return list(value)


def is_projected(model: nn.Module) -> bool:
    return any(isinstance(m, GaussianProjection) for m in model.modules())


def project(
    model: nn.Module,
    *,
    sigma: float = 0.1,
    scale: str = "absolute",
    granularity: str = "feature",
    targets: Iterable[type[nn.Module]] | str = DEFAULT_TARGETS,
    include: Iterable[str | type] | str | type | None = None,
    exclude: Iterable[str | type] | str | type | None = None,
    project_input: bool = True,
    learnable: bool = True,
) -> nn.Module:
    """Insert a :class:`GaussianProjection` in front of every targeted layer, in place; returns ``model``.

    ``targets``: layer types (default Linear, Conv1d, Conv2d), or ``"blocks"`` for one projection
    before each attention and MLP sub-block of a transformer (modules whose class name contains
    Attention/Attn/MLP/FeedForward/FFN, outermost only). ``include``/``exclude`` filter by module
    name (fnmatch pattern, e.g. ``"blocks.*.mlp.fc1"``) or type. ``project_input=False`` skips the
    first targeted layer (the one reading the raw input). Call before building the optimizer.
    A second call on a projected model is an error: :func:`strip` it first.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"project() needs an nn.Module, not {type(model).__name__}")
    _check_sigma(sigma)
    if scale not in SCALES:
        raise ConfigError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity must be one of {', '.join(GRANULARITIES)}, not {granularity!r}")
    if is_projected(model):
        raise ConfigError("the model already has DIPNet projections; call dipnet.strip(model) before projecting again")
    if isinstance(targets, str):
        if targets != "blocks":
            raise ConfigError(f"targets must be layer types or 'blocks', not {targets!r}")
        select: Callable[[str, nn.Module], bool] = _is_block
    else:
        types = tuple(targets)
        if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
            raise ConfigError(f"targets must be a non-empty tuple of nn.Module types or 'blocks', not {targets!r}")
        select = lambda name, m: isinstance(m, types)  # noqa: E731
    inc, exc = _as_list(include), _as_list(exclude)
    chosen: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in inside) or (not name and isinstance(targets, str)):
            continue
        if select(name, module):
            inside.append(name)
            chosen.append((name, module))
            if not name:
                break
    if not chosen:
        raise ConfigError(
            f"the model has no layers to project (targets={targets!r}); pass targets= the layer types "
            "its forward uses (e.g. (nn.Linear,)) or targets='blocks' for transformer sub-blocks"
        )
    if not project_input:
        chosen = chosen[1:]
    if inc:
        chosen = [(n, m) for n, m in chosen if _matches(n, m, inc)]
    if exc:
        chosen = [(n, m) for n, m in chosen if not _matches(n, m, exc)]
    if not chosen:
        raise ConfigError("include/exclude/project_input left no layer to project; loosen the filters")
    for name, module in chosen:
        if granularity == "layer":
            features, dim = 0, -1
        else:
            found = _layer_features(module)
            if found is None:
                raise ConfigError(
                    f"cannot tell the input features of {name!r} ({type(module).__name__}); use granularity='layer'"
                )
            features, dim = found
        proj = GaussianProjection(features, sigma, feature_dim=dim, scale=scale, learnable=learnable)
        ref = next(iter(module.parameters()), None)
        if ref is not None:
            proj.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        module.add_module(ATTR, proj)
        handle = module.register_forward_pre_hook(_projection_hook, with_kwargs=True)
        setattr(module, _HOOK_ATTR, handle.id)
    return model


def projections(model: nn.Module) -> list[tuple[str, GaussianProjection]]:
    """The inserted projections with their names (the name of the layer they feed)."""
    out = []
    for name, module in model.named_modules():
        proj = module._modules.get(ATTR)
        if isinstance(proj, GaussianProjection):
            out.append((name, proj))
    return out


def sigma_summary(model: nn.Module) -> dict[str, float]:
    """Mean learned sigma of every projection (effective: in input units), by layer name."""
    return {name: float(p.effective_sigma().detach().mean()) for name, p in projections(model)}


def strip(model: nn.Module) -> nn.Module:
    """Remove every projection and its hook, in place; the plain model gives the eval outputs bit for bit."""
    for _, module in list(model.named_modules()):
        if isinstance(module._modules.get(ATTR), GaussianProjection):
            hook_id = getattr(module, _HOOK_ATTR, None)
            if hook_id is not None:
                module._forward_pre_hooks.pop(hook_id, None)
                module._forward_pre_hooks_with_kwargs.pop(hook_id, None)
                delattr(module, _HOOK_ATTR)
            del module._modules[ATTR]
    return model


# (alpha, beta) of the variance prior; its minimum is at lambda = sigma^2 = beta / alpha (sigma 0.5).
DEFAULT_PRIOR: tuple[float, float] = (1e-2, 2.5e-3)


def _check_prior(prior: Any) -> tuple[float, float]:
    try:
        alpha, beta = (float(v) for v in prior)
    except (TypeError, ValueError):
        raise ConfigError(f"prior must be a pair (alpha, beta), not {prior!r}") from None
    if not (alpha >= 0 and beta >= 0 and math.isfinite(alpha) and math.isfinite(beta)):
        raise ConfigError(f"prior (alpha, beta) must be finite and >= 0, not {prior!r}")
    return alpha, beta


class DIPNetLoss:
    """DIPNet's objective (spec "Training objective"), m trajectories in ONE batched forward:

    ``L = mean_t criterion(f(x; eps_t), y) + stability * mean_t ||p_t - mean_t p||^2
    + sum_l sum_j (alpha * lambda_lj - beta * ln lambda_lj)``, ``lambda = sigma^2`` (learnable only).

    ``parts`` holds the detached terms of the last call: ``loss``, and ``stability`` / ``prior``
    when they are active. The default prior :data:`DEFAULT_PRIOR` pulls each sigma towards
    ``sqrt(beta / alpha) = 0.5``; without it the data term shrinks sigma and DIPNet trains like ERM
    (measured: docs/dipnet.md, "Experiments"). ``prior=(0, 0)`` turns it off.
    """

    def __init__(
        self,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        trajectories: int = 1,
        stability: float = 0.0,
        prior: tuple[float, float] = DEFAULT_PRIOR,
    ) -> None:
        if isinstance(trajectories, bool) or not isinstance(trajectories, int) or trajectories < 1:
            raise ConfigError(f"trajectories must be an integer >= 1, not {trajectories!r}")
        if isinstance(stability, bool) or not isinstance(stability, (int, float)) or not (stability >= 0 and math.isfinite(stability)):
            raise ConfigError(f"stability must be a finite number >= 0, not {stability!r}")
        self.criterion, self.trajectories, self.stability = criterion, trajectories, float(stability)
        self.alpha, self.beta = _check_prior(prior)
        self.parts: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        return (f"DIPNetLoss(trajectories={self.trajectories}, stability={self.stability}, "
                f"prior=({self.alpha}, {self.beta}))")

    def prior(self, model: nn.Module) -> torch.Tensor:
        """``sum_l sum_j (alpha * lambda_lj - beta * ln lambda_lj)`` over the learnable projections."""
        logs = [p.log_sigma.reshape(-1) for _, p in projections(model) if p.learnable]
        if not logs:
            return torch.zeros(())
        log_lam = 2 * torch.cat(logs)
        return self.alpha * log_lam.exp().sum() - self.beta * log_lam.sum()

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m, batch = self.trajectories, x.shape[0]
        xr = x.repeat(m, *([1] * (x.ndim - 1))) if m > 1 else x
        try:
            logits = model(xr)
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
        data = self.criterion(logits, yr)
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
    ``samples=k``: mean softmax of k stochastic passes (projections sampling, the rest in eval),
    as one batched forward. The model's train/eval flags are restored."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ConfigError(f"samples must be an integer >= 0, not {samples!r}")
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        if samples == 0:
            return model(x).softmax(-1)
        projs = [p for _, p in projections(model)]
        if not projs:
            raise ConfigError("samples > 0 needs a projected model (dipnet.project); use samples=0")
        for p in projs:
            p.train()
        xr = x.repeat(samples, *([1] * (x.ndim - 1)))
        return model(xr).softmax(-1).view(samples, x.shape[0], -1).mean(0)
    finally:
        for m, flag in flags:
            m.training = flag
