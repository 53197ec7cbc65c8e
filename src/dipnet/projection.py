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
and applied by the layer's forward pre-hook (directly, or through the module call when hooks are
registered on the projection itself), so the layer's own parameter names (and pre-trained
checkpoints) are unchanged, the optimizer sees ``...dipnet_projection.log_sigma``, and
``deepcopy``/pickling/``state_dict`` work. Positivity: ``sigma = exp(log_sigma)`` (our choice).
The ``log_sigma`` tensors are 0-D or 1-D, so the engine puts them in its no-weight-decay group;
their regularizer is the variance prior of :class:`DIPNetLoss`.

Speed (docs/dipnet.md, "Speed"): on a CPU the noise comes from :mod:`dipnet.noise_table`, and the
raw input's sigma gradient, which would cost an input-gradient pass ERM never makes, is estimated
without bias from a window of rows: the projection's forward picks the window and registers a
one-shot output hook on its layer that wraps the output in :class:`_SubsampledSigmaGrad`.
"""
from __future__ import annotations

import fnmatch
import math
import weakref
from functools import partial
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _nn_module

from .errors import ConfigError
from .noise_table import check_source, standard_normal_like

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
    x: torch.Tensor, sigma: torch.Tensor | float, training: bool = True, feature_dim: int = -1,
    noise: str = "fresh",
) -> torch.Tensor:
    """``x + sigma * eps`` with ``eps ~ N(0, I)`` in training, ``x`` otherwise (DIPNet, "The layer").

    ``sigma`` is a scalar, or a vector over ``x``'s ``feature_dim`` (the last dimension for a
    Linear input, the channel dimension 1 for a convolution input). ``noise``: where ``eps`` comes
    from, ``"fresh"`` (``torch.randn``) or ``"table"`` (a random window of a shared table,
    :mod:`dipnet.noise_table`).
    """
    if not training:
        return x
    sigma, eps = _feature_view(sigma, x, feature_dim), standard_normal_like(x, noise)
    return torch.addcmul(x, sigma, eps) if isinstance(sigma, torch.Tensor) else x + sigma * eps


def _feature_view(sigma: torch.Tensor | float, x: torch.Tensor, feature_dim: int) -> torch.Tensor | float:
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 1 and feature_dim != -1 and feature_dim != x.ndim - 1:
        return sigma.view(sigma.shape[0], *([1] * (x.ndim - 1 - feature_dim)))
    return sigma


class GaussianProjection(nn.Module):
    """Learnable Gaussian input projection: train mode samples ``x + sigma * eps``, eval returns ``x``.

    ``features`` > 0 gives one variance per feature (per channel for convolutions, ``feature_dim=1``);
    ``features=0`` one shared variance. ``scale="relative"`` multiplies sigma by a running RMS of
    the input (momentum ``momentum``, updated in train mode), so one sigma fits layers of any scale.
    ``learnable=False`` keeps sigma fixed (fixed-sigma noise layers, Random Self-Ensemble).
    ``noise``: ``"fresh"`` calls ``torch.randn``; ``"table"`` draws ``eps`` as a random window of a
    shared N(0, 1) table (exactly i.i.d. within a draw, entries reused across draws;
    :mod:`dipnet.noise_table`); ``"auto"`` (default) is the table on a CPU, fresh on accelerators.

    ``input_grad_fraction`` (our choice, for speed): when the projected input needs no gradient of
    its own (the raw input), sigma's gradient ``sum_rows eps * dL/du`` costs one extra
    input-gradient pass through the layer. Below 1, for a Linear or Conv layer called by
    :func:`project`'s hooks, it is computed on a random cyclic window of ``k = ceil(f N)`` of the
    N rows and scaled by ``N / k``: every row is in the window with probability ``k / N``, so the
    estimate is unbiased, at about ``f`` of the cost. 1.0 computes it exactly; None (default) is
    1/8 on a CPU and 1.0 on accelerators, where that pass is cheap.
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
        noise: str = "auto",
        input_grad_fraction: float | None = None,
    ) -> None:
        super().__init__()
        _check_sigma(sigma)
        if scale not in SCALES:
            raise ConfigError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
        if isinstance(features, bool) or not isinstance(features, int) or features < 0:
            raise ConfigError(f"features must be an integer >= 0 (0: one shared sigma), not {features!r}")
        if not 0.0 < momentum <= 1.0:
            raise ConfigError(f"momentum must be in (0, 1], not {momentum!r}")
        check_source(noise)
        check_input_grad_fraction(input_grad_fraction)
        self.features, self.feature_dim, self.scale, self.momentum = features, feature_dim, scale, momentum
        self.noise = noise
        self.input_grad_fraction = None if input_grad_fraction is None else float(input_grad_fraction)
        self.__dict__["_caller"] = None  # the layer whose pre-hook makes this call (not a child module)
        self._pending: tuple[Any, ...] | None = None
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

    def _training_sigma(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if self.features and (x.ndim == 0 or x.shape[dim] != self.features):
            found = x.shape[dim] if x.ndim else "none"
            raise ConfigError(
                f"GaussianProjection has {self.features} features but its input has "
                f"{found} in dimension {dim} (shape {tuple(x.shape)})"
            )
        sigma = self.log_sigma.exp()
        if self.scale == "relative":
            with torch.no_grad():
                rms = x.detach().pow(2).mean().sqrt().to(self.running_rms.dtype)
                r = self.running_rms
                r.copy_(torch.where(r > 0, r + self.momentum * (rms - r), rms))
            sigma = sigma * self.running_rms
        return sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        layer = self.__dict__.get("_caller")
        if layer is None:
            return gaussian_projection(x, self._training_sigma(x, self.feature_dim), True, self.feature_dim, self.noise)
        self.__dict__["_caller"] = None
        return self._project_for(layer, x)

    def _project_for(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Training-mode projection of ``layer``'s input, called from :func:`project`'s pre-hook.
        Written for few Python steps: its cost is paid per projected layer and step."""
        unbatched = isinstance(layer, _CONVS) and x.ndim == len(layer.kernel_size) + 1
        dim = 0 if unbatched else self.feature_dim
        features = self.features
        if self.scale == "absolute" and not (features and (x.ndim == 0 or x.shape[dim] != features)):
            sigma = self.log_sigma.exp()
        else:  # relative scale, or the error for an input of the wrong width
            sigma = self._training_sigma(x, dim)
        eps = standard_normal_like(x, self.noise)
        view = sigma.view(features, *([1] * (x.ndim - 1 - dim))) if features and dim != -1 and dim != x.ndim - 1 else sigma
        if x.requires_grad or not sigma.requires_grad or unbatched or x.ndim < 2:
            return torch.addcmul(x, view, eps)
        # the raw input: sigma's gradient from a window of rows, attached by the layer's output hook
        n = x.shape[0]
        fraction = self.input_grad_fraction
        if fraction is None:
            fraction = AUTO_INPUT_GRAD_FRACTION if x.is_cpu else 1.0
        k = math.ceil(fraction * n)
        if k >= n or not _subsampling_layer(layer) or not torch.is_grad_enabled() or _functorch_wrapped(x):
            return torch.addcmul(x, view, eps)
        start = _window_start(n)
        if self._pending is not None:  # left by a forward that raised before the layer's output
            self._pending[-1].remove()
        handle = layer.register_forward_hook(_projection_output_hook)  # one-shot: removes itself
        self._pending = (sigma, _cyclic_rows(eps, start, k), start, n / k, handle)
        return torch.addcmul(x, view.detach(), eps)

    def extra_repr(self) -> str:
        s = self.sigma.detach()
        stats = f"sigma={s.item():.4g}" if s.ndim == 0 else (
            f"features={self.features}, sigma mean={s.mean().item():.4g} min={s.min().item():.4g} max={s.max().item():.4g}"
        )
        extra = "" if self.learnable else ", fixed"
        fraction = "auto" if self.input_grad_fraction is None else f"{self.input_grad_fraction:g}"
        return (f"{stats}, scale={self.scale}, feature_dim={self.feature_dim}, noise={self.noise}, "
                f"input_grad_fraction={fraction}{extra}")


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
AUTO_INPUT_GRAD_FRACTION = 0.125  # input_grad_fraction=None on a CPU (exact, 1.0, on accelerators)
_generation = 0  # bumped by project() and strip(): invalidates DIPNetLoss's cached sigma list


def _window_start(n: int) -> int:
    return int(torch.randint(0, n, ()))


def _subsampling_layer(layer: nn.Module) -> bool:
    """A layer whose input gradient the output hook can compute: a Linear or Conv with the stock forward."""
    if isinstance(layer, nn.Linear):
        return type(layer).forward is nn.Linear.forward
    return isinstance(layer, _CONVS) and type(layer).forward in (c.forward for c in _CONVS)


def _functorch_wrapped(x: torch.Tensor) -> bool:
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check is not None and check(x))


def _cyclic_rows(t: torch.Tensor, start: int, k: int) -> torch.Tensor:
    """Rows ``start, start + 1, ... (mod N)``, k of them: a view unless the window wraps."""
    end = start + k
    return t[start:end] if end <= t.shape[0] else torch.cat((t[start:], t[:end - t.shape[0]]))


def _layer_input_grad(layer: nn.Module, weight: torch.Tensor, grad_out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``dL/du`` of a Linear/Conv layer (linear in ``u``) for the output gradient ``grad_out``."""
    if isinstance(layer, nn.Linear):
        return grad_out @ weight
    with torch.enable_grad():
        z = torch.zeros(shape, dtype=grad_out.dtype, device=grad_out.device, requires_grad=True)
        (du,) = torch.autograd.grad(layer._conv_forward(z, weight, None), z, grad_out)
    return du


class _SubsampledSigmaGrad(torch.autograd.Function):
    """Identity on the layer's output; backward adds ``(N / k) sum_{rows in window} eps * dL/du``
    to sigma's gradient (the unbiased window estimate of :class:`GaussianProjection`)."""

    @staticmethod
    def forward(ctx, output, sigma, eps_rows, start, scale, layer, feature_dim):  # type: ignore[override]
        ctx.save_for_backward(eps_rows, layer.weight.detach())
        ctx.layer, ctx.start, ctx.scale, ctx.feature_dim, ctx.shared = layer, start, scale, feature_dim, sigma.ndim == 0
        return output.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        eps_rows, weight = ctx.saved_tensors
        du = _layer_input_grad(ctx.layer, weight, _cyclic_rows(grad, ctx.start, eps_rows.shape[0]), eps_rows.shape)
        prod = du.mul_(eps_rows)
        if ctx.shared:
            g_sigma = prod.sum()
        else:
            dim = ctx.feature_dim % prod.ndim
            g_sigma = prod.sum(tuple(d for d in range(prod.ndim) if d != dim))
        return grad, g_sigma.mul_(ctx.scale), None, None, None, None, None


def check_input_grad_fraction(fraction: Any, what: str = "input_grad_fraction") -> None:
    if fraction is None:
        return
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ConfigError(
            f"{what} must be a number in (0, 1] (1: exact sigma gradient) or None (auto), not {fraction!r}"
        )


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
    if proj._forward_hooks or proj._forward_pre_hooks or _nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks:
        proj.__dict__["_caller"] = module  # the module call, for hooks on the projection itself
        run = proj
    else:  # the same computation without Module.__call__'s Python steps (measured: docs/dipnet.md, "Speed")
        run = partial(proj._project_for, module)
    if args:
        return (run(args[0]), *args[1:]), kwargs
    for key in _KWARG_INPUTS:
        if key in kwargs:
            return args, {**kwargs, key: run(kwargs[key])}
    proj.__dict__["_caller"] = None
    raise ConfigError(
        f"{type(module).__name__} was called without a positional input or one of the keywords "
        f"{', '.join(_KWARG_INPUTS)}, so its DIPNet projection has nothing to project; exclude it"
    )


def _projection_output_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """One-shot hook of a forward whose projection chose the window estimate: attach it to the
    layer's output and remove itself (so eval and the other layers pay for no output hook)."""
    proj = module._modules.get(ATTR)
    pending = getattr(proj, "_pending", None)
    if pending is None:
        return None
    proj._pending = None
    sigma, eps_rows, start, scale, handle = pending
    handle.remove()
    return _SubsampledSigmaGrad.apply(output, sigma, eps_rows, start, scale, module, proj.feature_dim)


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
    noise: str = "auto",
    input_grad_fraction: float | None = None,
) -> nn.Module:
    """Insert a :class:`GaussianProjection` in front of every targeted layer, in place; returns ``model``.

    ``targets``: layer types (default Linear, Conv1d, Conv2d), or ``"blocks"`` for one projection
    before each attention and MLP sub-block of a transformer (modules whose class name contains
    Attention/Attn/MLP/FeedForward/FFN, outermost only). ``include``/``exclude`` filter by module
    name (fnmatch pattern, e.g. ``"blocks.*.mlp.fc1"``) or type. ``project_input=False`` skips the
    first targeted layer (the one reading the raw input). ``noise`` and ``input_grad_fraction``:
    see :class:`GaussianProjection`; their defaults ("auto", None) mean the noise table and a 1/8
    window for the raw input's sigma gradient on a CPU, fresh noise and the exact gradient on an
    accelerator: the measured speed/accuracy choice (docs/dipnet.md, "Speed").
    Call before building the optimizer. A second call on a projected model is an error:
    :func:`strip` it first.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"project() needs an nn.Module, not {type(model).__name__}")
    _check_sigma(sigma)
    if scale not in SCALES:
        raise ConfigError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity must be one of {', '.join(GRANULARITIES)}, not {granularity!r}")
    global _generation
    check_source(noise)
    check_input_grad_fraction(input_grad_fraction)
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
        proj = GaussianProjection(features, sigma, feature_dim=dim, scale=scale, learnable=learnable, noise=noise,
                                  input_grad_fraction=input_grad_fraction)
        ref = next(iter(module.parameters()), None)
        if ref is not None:
            proj.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        module.add_module(ATTR, proj)
        handle = module.register_forward_pre_hook(_projection_hook, with_kwargs=True)
        setattr(module, _HOOK_ATTR, handle.id)
    _generation += 1
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
    """Remove every projection and its hooks, in place; the plain model gives the eval outputs bit for bit."""
    global _generation
    _generation += 1
    for _, module in list(model.named_modules()):
        if isinstance(module._modules.get(ATTR), GaussianProjection):
            hook_id = getattr(module, _HOOK_ATTR, None)
            if hook_id is not None:
                module._forward_pre_hooks.pop(hook_id, None)
                module._forward_pre_hooks_with_kwargs.pop(hook_id, None)
                delattr(module, _HOOK_ATTR)
            pending = module._modules[ATTR]._pending
            if pending is not None:  # a forward that raised before its output hook ran
                pending[-1].remove()
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
        self._cache: tuple[Any, int, list[torch.Tensor]] | None = None

    def __repr__(self) -> str:
        return (f"DIPNetLoss(trajectories={self.trajectories}, stability={self.stability}, "
                f"prior=({self.alpha}, {self.beta}))")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}

    def _log_sigmas(self, model: nn.Module) -> list[torch.Tensor]:
        cached = self._cache
        if cached is not None and cached[0]() is model and cached[1] == _generation:
            return cached[2]
        logs = [p.log_sigma for _, p in projections(model) if p.learnable]
        self._cache = (weakref.ref(model), _generation, logs)
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
