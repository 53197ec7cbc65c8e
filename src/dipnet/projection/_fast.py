"""The projection's speed path, private: the hooks that apply a projection, the window
estimate of the raw input's sigma gradient, and the bookkeeping that keeps both cheap.

Measured in docs/dipnet.md, "Speed": on small models each Python step per projected layer and
training step shows in the step time, so the pre-hook calls the projection's forward directly
(the module call, with its hook dispatch, only when hooks are registered on the projection
itself), hooks are removed through torch's hook dictionaries, in eval they return at once, and
:class:`~dipnet.projection.DIPNetLoss` caches the list of sigmas until :func:`bump` says the set
of projections changed. Memory: the noise is regenerated in backward, not saved
(:mod:`.regenerate`); the layer's post-hook ends that. Under ``torch.compile`` the hooks take
:func:`_traced_for` instead: plain ops, one graph.

The window estimate: sigma's gradient ``sum_rows eps * dL/du`` at the raw input (which needs no
gradient of its own) would cost an input-gradient pass ERM never makes. The projection picks a
random cyclic window of ``k = ceil(f N)`` rows, and the layer's post-hook wraps its output in
:class:`SubsampledSigmaGrad`, whose backward adds
``(N / k) sum_{rows in window} eps * dL/du`` to sigma's gradient: unbiased, at about ``f`` of
the cost. A sigma shared by the layer takes it as ``sum g * W eps`` (the layer's forward on the
window, cheaper than its input gradient when the input has few channels).
"""
from __future__ import annotations

import math
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _nn_module

from ..errors import ConfigError
from ..noise_table import Draw, traced_like
from . import fused
from .regenerate import RegeneratedInput, plain, sample, sigma_grad

ATTR = "dipnet_projection"  # the projection's name as a child of the layer it feeds
_HOOK_ATTR = "_dipnet_hook_ids"  # (pre-hook id, post-hook id) on the layer
_OWNER = "_dipnet_owner"  # the layer a projection feeds, in the projection's __dict__ (copied with it)
AUTO_INPUT_GRAD_FRACTION = 0.125  # input_grad_fraction=None on a CPU (exact, 1.0, on accelerators)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_Conv = Union[nn.Conv1d, nn.Conv2d, nn.Conv3d]
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
    """The sampling pass of ``proj`` on ``layer``'s input ``x``, in few Python steps. With autograd
    on (and ``proj.regenerate``), the noise is regenerated in backward (:mod:`.regenerate`): the
    hooks that keep the layer's saved input as a recipe stay active until the layer's post-hook."""
    unbatched = isinstance(layer, _CONVS) and x.ndim == len(layer.kernel_size) + 1
    dim = 0 if unbatched else proj.feature_dim
    if torch.compiler.is_compiling():
        return _traced_for(proj, layer, x, dim, unbatched)
    features = proj.features
    if proj.scale == "absolute" and not (features and (x.ndim == 0 or x.shape[dim] != features)):
        sigma = proj.log_sigma.exp()
    else:  # relative scale, or the error for an input of the wrong width
        sigma = proj.sigma_for(x, dim)
    eps, draw = fused.draw_like(x, proj.noise)
    view = sigma.view(features, *([1] * (x.ndim - 1 - dim))) if features and dim != -1 and dim != x.ndim - 1 else sigma
    recording = torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active()  # torch.func refuses hooks
    regenerate = proj.regenerate and recording
    pending = None
    k = _window_rows(proj, layer, x, sigma, unbatched) if recording else None
    if k is not None:
        n = x.shape[0]
        pending = (sigma, draw, window_start(n), k, n / k)
    if pending is not None:  # sigma's gradient comes from the window estimate
        u = plain(x, view.detach(), eps, draw)
    elif regenerate or eps is None:  # a kernel draw saves only its seed either way
        u = sample(x, view, eps, draw)
    else:
        u = torch.addcmul(x, view, eps)
    state = proj.__dict__
    if state["_regen"] is not None:  # left by a forward that raised before the layer's post-hook
        state["_regen"].__exit__()
    state["_pending"] = pending
    if regenerate:
        state["_regen"] = RegeneratedInput(u, x, view, draw).__enter__()
    return u


def _window_rows(proj: Any, layer: nn.Module, x: torch.Tensor, sigma: torch.Tensor, unbatched: bool) -> int | None:
    """k, the rows of the window estimate of sigma's gradient, when it applies: a learnable sigma
    on an input that needs no gradient of its own (the raw input), a Linear/Conv layer with the
    stock forward, and ``input_grad_fraction`` below 1 (None: 1/8 on a CPU)."""
    if not sigma.requires_grad or x.requires_grad or unbatched or x.ndim < 2:
        return None
    n = x.shape[0]
    fraction = proj.input_grad_fraction
    if fraction is None:
        fraction = AUTO_INPUT_GRAD_FRACTION if x.is_cpu else 1.0
    k = math.ceil(fraction * n)
    return k if k < n and _subsampling_layer(layer) else None


def _traced_for(proj: Any, layer: nn.Module, x: torch.Tensor, dim: int, unbatched: bool) -> torch.Tensor:
    """The sampling pass as ``torch.compile`` traces it (docs/dipnet.md, "Under torch.compile"):
    :func:`traced`, and the window estimate as a term whose value is zero and whose gradient is
    the estimate: ``(N / k) (sigma - sigma.detach()) eps`` on the k window rows, put through the
    layer's linear part by the post-hook and added to those rows of its output (its gradient
    costs the layer's input gradient on k rows, not N)."""
    sigma = proj.sigma_for(x, dim)
    k = _window_rows(proj, layer, x, sigma, unbatched) if torch.is_grad_enabled() else None
    if k is not None and isinstance(layer, _CONVS) and layer.padding_mode != "zeros":
        k = None  # the post-hook's convolution takes zero padding only
    view = feature_view(sigma, x, dim)
    if k is None:
        return traced(x, view, proj.noise)
    eps = traced_like(x, proj.noise)
    n = x.shape[0]
    rows = (torch.randint(0, n, (), device=x.device) + torch.arange(k, device=x.device)) % n
    sigma_view: torch.Tensor = view  # type: ignore[assignment]  # feature_view keeps a tensor a tensor
    proj._pending = ((sigma_view - sigma_view.detach()) * eps.index_select(0, rows) * (n / k), rows)
    return torch.addcmul(x, sigma_view.detach(), eps)


def traced(x: torch.Tensor, sigma: torch.Tensor | float, noise: str) -> torch.Tensor:
    """``x + sigma * eps`` as ``torch.compile`` traces it (docs/dipnet.md, "Under torch.compile"):
    ``eps`` from :func:`dipnet.noise_table.traced_like` (table windows at tensor offsets, or
    ``randn_like``, which inductor draws in the kernel that adds it) and plain autograd, whose
    backward the compiler fuses and plans itself; so no window estimate of the input's sigma
    gradient (exact instead) and no saved-tensor hooks: nothing that breaks the graph."""
    eps = traced_like(x, noise)
    return torch.addcmul(x, sigma, eps) if isinstance(sigma, torch.Tensor) else x + sigma * eps


def window_start(n: int) -> int:
    """The first row of a window: uniform over the N rows, from torch's global generator."""
    return int(torch.randint(0, n, ()))


def _subsampling_layer(layer: nn.Module) -> bool:
    """A layer whose input gradient the post-hook can compute: a Linear or Conv with the stock forward."""
    if isinstance(layer, nn.Linear):
        return type(layer).forward is nn.Linear.forward
    return isinstance(layer, _CONVS) and type(layer).forward in (c.forward for c in _CONVS)


def cyclic_rows(t: torch.Tensor, start: int, k: int) -> torch.Tensor:
    """Rows ``start, start + 1, ... (mod N)``, k of them: a view unless the window wraps."""
    end = start + k
    return t[start:end] if end <= t.shape[0] else torch.cat((t[start:], t[:end - t.shape[0]]))


def _layer_linear_part(layer: nn.Linear | _Conv, weight: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The layer's output for input ``u`` without the bias (Linear or Conv, any padding mode)."""
    with torch.no_grad():
        return F.linear(u, weight) if isinstance(layer, nn.Linear) else layer._conv_forward(u, weight, None)


def _layer_input_grad(layer: nn.Linear | _Conv, weight: torch.Tensor, grad_out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``dL/du`` of a Linear/Conv layer (linear in ``u``) for the output gradient ``grad_out``: the
    input half of the convolution's backward alone (no forward pass, no weight gradient)."""
    if isinstance(layer, nn.Linear):
        return grad_out @ weight
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):  # through the layer's own padding
        with torch.enable_grad():
            z = torch.zeros(shape, dtype=grad_out.dtype, device=grad_out.device, requires_grad=True)
            (du,) = torch.autograd.grad(layer._conv_forward(z, weight, None), z, grad_out)
        return du
    nd = len(layer.kernel_size)
    grad_input, _, _ = torch.ops.aten.convolution_backward(
        grad_out, torch.empty(shape, dtype=grad_out.dtype, device=grad_out.device), weight, None,
        layer.stride, layer.padding, layer.dilation, False, (0,) * nd, layer.groups, (True, False, False))
    return grad_input


class SubsampledSigmaGrad(torch.autograd.Function):
    """Identity on the layer's output; backward adds ``(N / k) sum_{rows in window} eps * dL/du``
    to sigma's gradient (the unbiased window estimate), ``eps`` regenerated from its draw."""

    @staticmethod
    def forward(ctx: Any, output: torch.Tensor, sigma: torch.Tensor, draw: Draw, start: int, k: int, scale: float,
                layer: nn.Linear | _Conv, feature_dim: int) -> torch.Tensor:
        ctx.save_for_backward(layer.weight.detach())
        ctx.layer, ctx.draw, ctx.start, ctx.k, ctx.scale = layer, draw, start, k, scale
        ctx.feature_dim, ctx.shared = feature_dim, sigma.ndim == 0
        return output.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (weight,) = ctx.saved_tensors
        eps_rows = cyclic_rows(fused.values(ctx.draw), ctx.start, ctx.k)
        grad_rows = cyclic_rows(grad, ctx.start, ctx.k)
        if ctx.shared:  # sum(W^T g * eps) = sum(g * W eps): the layer's cheap forward on the k rows
            g_sigma = sigma_grad(grad_rows, _layer_linear_part(ctx.layer, weight, eps_rows), torch.Size(()))
        else:
            prod = _layer_input_grad(ctx.layer, weight, grad_rows, eps_rows.shape).mul_(eps_rows)
            dim = ctx.feature_dim % prod.ndim
            g_sigma = prod.sum(tuple(d for d in range(prod.ndim) if d != dim))
        return grad, g_sigma.mul_(ctx.scale), None, None, None, None, None, None


def _has_own_hooks(proj: nn.Module) -> bool:
    return bool(proj._forward_hooks or proj._forward_pre_hooks or _nn_module._global_forward_hooks
                or _nn_module._global_forward_pre_hooks)


def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """Project the layer's first positional input, or its ``hidden_states=`` keyword (Hugging Face blocks)."""
    proj: Any = module._modules[ATTR]  # a GaussianProjection (.layer imports this module)
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


def post_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """After the layer (also when it raised): end the regenerated-input hooks, and attach the
    window estimate to the output when the projection chose it."""
    proj: Any = module._modules[ATTR]
    if torch.compiler.is_compiling():
        pending = proj._pending
        if pending is None:
            return None
        proj._pending = None
        zero, rows = pending
        layer: Any = module  # a Linear or a Conv (_window_rows checked it)
        weight = layer.weight.detach()
        if isinstance(layer, nn.Linear):
            return output.index_add(0, rows, F.linear(zero, weight))
        conv = _CONV_FUNCTIONS[len(layer.kernel_size)]
        part = conv(zero, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        return output.index_add(0, rows, part)
    state = proj.__dict__
    regen, pending = state["_regen"], state["_pending"]
    if regen is not None:
        state["_regen"] = None
        regen.__exit__()
    if pending is None:
        return None
    state["_pending"] = None
    if not isinstance(output, torch.Tensor):
        return None
    sigma, draw, start, k, scale = pending
    return SubsampledSigmaGrad.apply(output, sigma, draw, start, k, scale, module, proj.feature_dim)


def attach(module: nn.Module, proj: nn.Module) -> None:
    """Make ``proj`` the projection of ``module``'s input: a child, and the layer's pre- and
    post-hooks, installed once for every mode (they return at once in eval: an eval forward costs
    one Python call per projected layer, which keeps ``torch.compile``'s guards on the
    projection's flags in every mode, docs/dipnet.md "Under torch.compile")."""
    module.add_module(ATTR, proj)
    proj.__dict__[_OWNER] = module
    proj.train(module.training)  # a projection added to a model in eval mode starts in eval mode
    pre = module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True)
    post = module.register_forward_hook(post_hook, prepend=True, always_call=True)
    module.__dict__[_HOOK_ATTR] = (pre.id, post.id)


def _remove_hooks(module: nn.Module, ids: tuple[int, int]) -> None:
    pre, post = ids
    module._forward_pre_hooks.pop(pre, None)
    module._forward_pre_hooks_with_kwargs.pop(pre, None)
    module._forward_hooks.pop(post, None)
    module._forward_hooks_always_called.pop(post, None)
    del module.__dict__[_HOOK_ATTR]


def detach(module: nn.Module) -> None:
    """Undo :func:`attach` (hooks are removed by their ids, which survive deepcopy and pickling)."""
    ids = module.__dict__.get(_HOOK_ATTR)
    if ids is not None:
        _remove_hooks(module, ids)
    proj = module._modules[ATTR]
    regen = proj.__dict__.get("_regen")
    if regen is not None:  # a forward that raised before the post-hook
        regen.__exit__()
    proj.__dict__.pop(_OWNER, None)
    del module._modules[ATTR]
