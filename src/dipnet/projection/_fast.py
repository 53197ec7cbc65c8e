"""The projection's speed path, private: the pre-hook that applies a projection, the window
estimate of the raw input's sigma gradient, and the bookkeeping that keeps both cheap.

Measured in docs/dipnet.md, "Speed": on small models each Python step per projected layer and
training step shows in the step time, so the pre-hook calls the projection's forward directly
(the module call, with its hook dispatch, only when hooks are registered on the projection
itself), hooks are found and removed through torch's hook dictionaries, and
:class:`~dipnet.projection.DIPNetLoss` caches the list of sigmas until :func:`bump` says the
set of projections changed.

The window estimate: sigma's gradient ``sum_rows eps * dL/du`` at the raw input (which needs no
gradient of its own) would cost an input-gradient pass ERM never makes. The projection picks a
random cyclic window of ``k = ceil(f N)`` rows, registers a one-shot output hook on its layer,
and the hook wraps the layer's output in :class:`_SubsampledSigmaGrad`, whose backward adds
``(N / k) sum_{rows in window} eps * dL/du`` to sigma's gradient: unbiased, at about ``f`` of
the cost.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _nn_module

from ..errors import ConfigError
from ..noise_table import standard_normal_like

ATTR = "dipnet_projection"  # the projection's name as a child of the layer it feeds
_HOOK_ATTR = "_dipnet_hook_id"
AUTO_INPUT_GRAD_FRACTION = 0.125  # input_grad_fraction=None on a CPU (exact, 1.0, on accelerators)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_KWARG_INPUTS = ("hidden_states", "x", "input", "inputs_embeds")
_version = 0  # bumped when projections are added or removed anywhere


def bump() -> None:
    global _version
    _version += 1


def version() -> int:
    return _version


def feature_view(sigma: torch.Tensor | float, x: torch.Tensor, feature_dim: int) -> torch.Tensor | float:
    """A per-feature sigma shaped to broadcast over ``x`` along ``feature_dim``."""
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 1 and feature_dim != -1 and feature_dim != x.ndim - 1:
        return sigma.view(sigma.shape[0], *([1] * (x.ndim - 1 - feature_dim)))
    return sigma


def project_for(proj: Any, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The sampling pass of ``proj`` on ``layer``'s input ``x``, in few Python steps."""
    unbatched = isinstance(layer, _CONVS) and x.ndim == len(layer.kernel_size) + 1
    dim = 0 if unbatched else proj.feature_dim
    features = proj.features
    if proj.scale == "absolute" and not (features and (x.ndim == 0 or x.shape[dim] != features)):
        sigma = proj.log_sigma.exp()
    else:  # relative scale, or the error for an input of the wrong width
        sigma = proj.sigma_for(x, dim)
    eps = standard_normal_like(x, proj.noise)
    view = sigma.view(features, *([1] * (x.ndim - 1 - dim))) if features and dim != -1 and dim != x.ndim - 1 else sigma
    if x.requires_grad or not sigma.requires_grad or unbatched or x.ndim < 2:
        return torch.addcmul(x, view, eps)
    n = x.shape[0]
    fraction = proj.input_grad_fraction
    if fraction is None:
        fraction = AUTO_INPUT_GRAD_FRACTION if x.is_cpu else 1.0
    k = math.ceil(fraction * n)
    if k >= n or not _subsampling_layer(layer) or not torch.is_grad_enabled() or _functorch_wrapped(x):
        return torch.addcmul(x, view, eps)
    start = window_start(n)
    if proj._pending is not None:  # left by a forward that raised before the layer's output
        proj._pending[-1].remove()
    handle = layer.register_forward_hook(_output_hook)  # one-shot: removes itself
    proj._pending = (sigma, cyclic_rows(eps, start, k), start, n / k, handle)
    return torch.addcmul(x, view.detach(), eps)


def window_start(n: int) -> int:
    """The first row of a window: uniform over the N rows, from torch's global generator."""
    return int(torch.randint(0, n, ()))


def _subsampling_layer(layer: nn.Module) -> bool:
    """A layer whose input gradient the output hook can compute: a Linear or Conv with the stock forward."""
    if isinstance(layer, nn.Linear):
        return type(layer).forward is nn.Linear.forward
    return isinstance(layer, _CONVS) and type(layer).forward in (c.forward for c in _CONVS)


def _functorch_wrapped(x: torch.Tensor) -> bool:
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check is not None and check(x))


def cyclic_rows(t: torch.Tensor, start: int, k: int) -> torch.Tensor:
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


class SubsampledSigmaGrad(torch.autograd.Function):
    """Identity on the layer's output; backward adds ``(N / k) sum_{rows in window} eps * dL/du``
    to sigma's gradient (the unbiased window estimate)."""

    @staticmethod
    def forward(ctx, output, sigma, eps_rows, start, scale, layer, feature_dim):  # type: ignore[override]
        ctx.save_for_backward(eps_rows, layer.weight.detach())
        ctx.layer, ctx.start, ctx.scale, ctx.feature_dim, ctx.shared = layer, start, scale, feature_dim, sigma.ndim == 0
        return output.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        eps_rows, weight = ctx.saved_tensors
        du = _layer_input_grad(ctx.layer, weight, cyclic_rows(grad, ctx.start, eps_rows.shape[0]), eps_rows.shape)
        prod = du.mul_(eps_rows)
        if ctx.shared:
            g_sigma = prod.sum()
        else:
            dim = ctx.feature_dim % prod.ndim
            g_sigma = prod.sum(tuple(d for d in range(prod.ndim) if d != dim))
        return grad, g_sigma.mul_(ctx.scale), None, None, None, None, None


def _has_own_hooks(proj: nn.Module) -> bool:
    return bool(proj._forward_hooks or proj._forward_pre_hooks or _nn_module._global_forward_hooks
                or _nn_module._global_forward_pre_hooks)


def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """Project the layer's first positional input, or its ``hidden_states=`` keyword (Hugging Face blocks)."""
    proj = module._modules[ATTR]
    if not (proj.training or proj.sample_in_eval):  # eval: the mean passes through
        return None
    if _has_own_hooks(proj):
        def run(x: torch.Tensor) -> torch.Tensor:
            return proj(x, layer=module)  # the module call, so hooks on the projection run
    else:
        def run(x: torch.Tensor) -> torch.Tensor:
            return project_for(proj, module, x)
    if args:
        return (run(args[0]), *args[1:]), kwargs
    for key in _KWARG_INPUTS:
        if key in kwargs:
            return args, {**kwargs, key: run(kwargs[key])}
    raise ConfigError(
        f"{type(module).__name__} was called without a positional input or one of the keywords "
        f"{', '.join(_KWARG_INPUTS)}, so its DIPNet projection has nothing to project; exclude it"
    )


def _output_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """One-shot hook of a forward whose projection chose the window estimate: attach it to the
    layer's output and remove itself (so eval and the other layers pay for no output hook)."""
    proj = module._modules.get(ATTR)
    pending = getattr(proj, "_pending", None)
    if pending is None:
        return None
    proj._pending = None
    sigma, eps_rows, start, scale, handle = pending
    handle.remove()
    return SubsampledSigmaGrad.apply(output, sigma, eps_rows, start, scale, module, proj.feature_dim)


def attach(module: nn.Module, proj: nn.Module) -> None:
    """Make ``proj`` the projection of ``module``'s input: a child plus a forward pre-hook."""
    module.add_module(ATTR, proj)
    handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    setattr(module, _HOOK_ATTR, handle.id)


def detach(module: nn.Module) -> None:
    """Undo :func:`attach` (the hook is removed by its id, which survives deepcopy and pickling)."""
    hook_id = getattr(module, _HOOK_ATTR, None)
    if hook_id is not None:
        module._forward_pre_hooks.pop(hook_id, None)
        module._forward_pre_hooks_with_kwargs.pop(hook_id, None)
        delattr(module, _HOOK_ATTR)
    pending = module._modules[ATTR]._pending
    if pending is not None:  # a forward that raised before its output hook ran
        pending[-1].remove()
    del module._modules[ATTR]
