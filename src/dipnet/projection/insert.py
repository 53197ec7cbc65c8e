"""Placing projections in a model and taking them out: :func:`project`, :func:`strip`.

The projection is registered as a child ``dipnet_projection`` of the layer it feeds and applied
by the layer's forward pre-hook, so the layer's own parameter names (and pre-trained
checkpoints) are unchanged, the optimizer sees ``...dipnet_projection.log_sigma``, and
``deepcopy``/pickling/``state_dict`` work. The ``log_sigma`` tensors are 0-D or 1-D, so the
engine puts them in its no-weight-decay group; their regularizer is the variance prior of
:class:`~dipnet.projection.DIPNetLoss`.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from torch import nn

from ..compiling import guard_hooks
from ..errors import ConfigError
from ..schema import check, check_type, param
from . import _fast, hf
from .layer import GaussianProjection, ProjectionConfig

__all__ = ["DEFAULT_TARGETS", "PlacementConfig", "is_projected", "project", "projection_parameters", "projections",
           "sigma_stats", "strip"]

DEFAULT_TARGETS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
_BLOCK_WORDS = ("attention", "attn", "mlp", "feedforward", "ffn")


@dataclass
class PlacementConfig(ProjectionConfig):
    """Where :func:`project` puts projections, besides their own settings."""

    granularity: Literal["feature", "layer"] = param(
        "feature", doc="feature: one sigma per input feature (channel); layer: one per layer")
    project_input: bool = param(True, doc="also project the raw input (the first targeted layer)")


def _layer_features(module: nn.Module) -> tuple[int, int] | None:
    """(number of input features, feature dimension) of a targeted module, or None if unknown."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels, 1
    if isinstance(module, nn.Linear):
        return module.in_features, -1
    for sub in module.modules():  # a block (attention, MLP): its first Linear reads the last dim
        if isinstance(sub, nn.Linear):
            return sub.in_features, -1
        weight = getattr(sub, "weight", None)
        if type(sub).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.ndim == 2:  # HF GPT-2
            return weight.shape[0], -1
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


def _selector(targets: Iterable[type[nn.Module]] | str) -> Callable[[str, nn.Module], bool]:
    if isinstance(targets, str):
        if targets != "blocks":
            raise ConfigError(f"targets must be layer types, 'blocks', 'decoder' or 'lora', not {targets!r}")
        return _is_block
    types = tuple(targets)
    if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise ConfigError(f"targets must be a non-empty tuple of nn.Module types or 'blocks', not {targets!r}")
    return lambda name, m: isinstance(m, types)


def _chosen_layers(model: nn.Module, targets: Iterable[type[nn.Module]] | str, project_input: bool,
                   include: Any, exclude: Any) -> list[tuple[str, nn.Module]]:
    if isinstance(targets, str) and targets in hf.HF_TARGETS:
        chosen = _hf_layers(model, targets)
    else:
        chosen = _typed_layers(model, targets)
    if not project_input:
        chosen = chosen[1:]
    inc, exc = _as_list(include), _as_list(exclude)
    if inc:
        chosen = [(n, m) for n, m in chosen if _matches(n, m, inc)]
    if exc:
        chosen = [(n, m) for n, m in chosen if not _matches(n, m, exc)]
    if not chosen:
        raise ConfigError("include/exclude/project_input left no layer to project; loosen the filters")
    return chosen


def _hf_layers(model: nn.Module, targets: str) -> list[tuple[str, nn.Module]]:
    """The sub-blocks of a Hugging Face decoder ("decoder") or its peft LoRA layers ("lora")."""
    if targets == "decoder":
        chosen = hf.decoder_sublayers(model)
        if not chosen:
            raise ConfigError(
                f"{type(model).__name__} has no recognised decoder layers (a module with an attention child "
                f"named {'/'.join(hf.ATTENTION_NAMES)} and an MLP child named {'/'.join(hf.MLP_NAMES)}); "
                "use targets='lora' after peft's get_peft_model, or pass the layer types to project"
            )
        return chosen
    chosen = hf.lora_layers(model)
    if not chosen:
        raise ConfigError(
            f"{type(model).__name__} has no peft LoRA layers; call peft.get_peft_model(model, LoraConfig(...)) "
            "before project(model, targets='lora'), or use targets='decoder'"
        )
    return chosen


def _typed_layers(model: nn.Module, targets: Iterable[type[nn.Module]] | str) -> list[tuple[str, nn.Module]]:
    select = _selector(targets)
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
    return chosen


def project(
    model: nn.Module,
    *,
    targets: Iterable[type[nn.Module]] | str = DEFAULT_TARGETS,
    include: Iterable[str | type] | str | type | None = None,
    exclude: Iterable[str | type] | str | type | None = None,
    learnable: bool = True,
    config: PlacementConfig | None = None,
    **settings: Any,
) -> nn.Module:
    """Insert a :class:`GaussianProjection` in front of every targeted layer, in place; returns ``model``.

    ``settings`` are the fields of :class:`PlacementConfig`: ``sigma`` (default 0.1), ``scale``
    (absolute, the default: in input units; or relative: sigma times the running RMS of the layer's input), ``granularity`` (feature/layer), ``project_input`` (False skips the first
    targeted layer, the one reading the raw input), ``noise``, ``input_grad_fraction``,
    ``rms_momentum`` and ``regenerate`` (see :class:`GaussianProjection`; the defaults "auto"/None
    mean the noise table and a 1/8 window on a CPU, fresh noise and the exact gradient on an
    accelerator: the measured speed/accuracy choice, docs/dipnet.md "Speed"; ``regenerate=False``
    trades memory for a little speed, "Memory"); or pass a validated ``config``.
    ``targets``: layer types (default Linear, Conv1d, Conv2d), or ``"blocks"`` for one projection
    before each attention and MLP sub-block of a transformer (modules whose class name contains
    Attention/Attn/MLP/FeedForward/FFN, outermost only); for Hugging Face language models
    ``"decoder"`` (before the attention and MLP sub-blocks of every decoder layer) or ``"lora"``
    (the input of every peft LoRA layer), which default to ``scale="relative"`` and
    ``sigma=LLM_SIGMA`` (:mod:`.hf` says why). ``include``/``exclude`` filter by module
    name (fnmatch pattern, e.g. ``"blocks.*.mlp.fc1"``) or type. Call before building the
    optimizer. A second call on a projected model is an error: :func:`strip` it first.
    """
    check_type(model, nn.Module, "project's model")
    check_type(config, (PlacementConfig, None), "project's config", "build one with PlacementConfig(...)")
    if config is None:
        llm = isinstance(targets, str) and targets in hf.HF_TARGETS
        config = PlacementConfig(**({"scale": "relative", "sigma": hf.LLM_SIGMA, **settings} if llm else settings))
    elif settings:
        raise ConfigError(f"pass either config= or settings, not both (got {', '.join(settings)})")
    learnable = check(learnable, bool, "learnable")
    if is_projected(model):
        raise ConfigError("the model already has DIPNet projections; call dipnet.strip(model) before projecting again")
    for name, module in _chosen_layers(model, targets, config.project_input, include, exclude):
        if config.granularity == "layer":
            features, dim = 0, -1
        else:
            found = _layer_features(module)
            if found is None:
                raise ConfigError(
                    f"cannot tell the input features of {name!r} ({type(module).__name__}); use granularity='layer'"
                )
            features, dim = found
        proj = GaussianProjection.from_config(features, dim, config, learnable)
        ref = next(iter(module.parameters()), None)
        if ref is not None:
            proj.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        _fast.attach(module, proj)
    _fast.bump()
    guard_hooks()
    return model


def projections(model: nn.Module) -> list[tuple[str, GaussianProjection]]:
    """The inserted projections with their names (the name of the layer they feed)."""
    check_type(model, nn.Module, "projections' model")
    out = []
    for name, module in model.named_modules():
        proj = module._modules.get(_fast.ATTR)
        if isinstance(proj, GaussianProjection):
            out.append((name, proj))
    return out


def projection_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable log-sigmas of every projection: train them with no weight decay (the variance
    prior is their regularizer) and pass them as ``fixed=`` to SAM/RWP, which must not perturb them."""
    return [p.log_sigma for _, p in projections(model) if isinstance(p.log_sigma, nn.Parameter)]


def sigma_stats(model: nn.Module) -> dict[str, Any]:
    """The learned sigmas, the one definition every log and record uses (empty if unprojected):

    - ``sigma``: ``{layer: mean sigma in input units}`` (the effective sigma: under the relative
      scale, the relative sigma times the layer input's running RMS);
    - ``sigma_mean``, ``sigma_min``, ``sigma_max``: mean, min and max of those per-layer means;
    - ``sigma_relative_mean``, ``sigma_relative_min``, ``sigma_relative_max``: over every feature
      of every projection, the sigma parameter itself (a fraction of the input RMS under the
      relative scale; the same as the effective sigma under the absolute one).
    """
    found = projections(model)
    if not found:
        return {}
    per_layer = {name: float(p.effective_sigma().detach().float().mean()) for name, p in found}
    values = list(per_layer.values())
    rel = torch.cat([p.sigma.detach().float().reshape(-1) for _, p in found])
    return {"sigma": per_layer, "sigma_mean": sum(values) / len(values), "sigma_min": min(values),
            "sigma_max": max(values), "sigma_relative_mean": float(rel.mean()),
            "sigma_relative_min": float(rel.min()), "sigma_relative_max": float(rel.max())}


def strip(model: nn.Module) -> nn.Module:
    """Remove every projection and its hooks, in place; the plain model gives the eval outputs bit for bit."""
    check_type(model, nn.Module, "strip's model")
    _fast.bump()
    for _, module in list(model.named_modules()):
        if isinstance(module._modules.get(_fast.ATTR), GaussianProjection):
            _fast.detach(module)
    return model
