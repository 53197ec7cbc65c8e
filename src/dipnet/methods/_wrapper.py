"""Shared pieces of the optimizer wrappers (SAM, RWP): the base-optimizer plumbing, a state_dict
that includes the base optimizer's moments, and BatchNorm running-statistics switches."""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError


_FROZEN = "_dipnet_frozen_stats"  # a frozen BatchNorm's (momentum, num_batches_tracked), kept in its __dict__


def disable_running_stats(model: nn.Module) -> None:
    """Freeze BatchNorm running statistics for the next passes (davda54/sam ``bypass_bn``)."""
    for m in model.modules():
        if isinstance(m, _BatchNorm) and _FROZEN not in vars(m):
            tracked = m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None
            vars(m)[_FROZEN] = (m.momentum, tracked)
            m.momentum = 0.0


def enable_running_stats(model: nn.Module) -> None:
    """Undo :func:`disable_running_stats`: the running statistics are exactly as before."""
    for m in model.modules():
        if isinstance(m, _BatchNorm) and _FROZEN in vars(m):
            m.momentum, tracked = vars(m).pop(_FROZEN)
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """``with frozen_running_stats(model): loss(model(x)).backward()`` leaves BN statistics unchanged."""
    disable_running_stats(model)
    try:
        yield
    finally:
        enable_running_stats(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or DataParallel) wrapper, else ``model``.

    Passes that take no weight gradient (an attack's input gradient, ICP's input steps, no-grad
    targets) go to the inner module: a DDP forward prepares a gradient reduction that only a
    backward through the weights completes."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def split_fixed(params: Iterable[Any], fixed: Iterable[torch.Tensor]) -> list[dict[str, Any]]:
    """``params`` (tensors or groups) as groups, with the ``fixed`` tensors moved into groups of
    their own marked unperturbed; the other settings of each group are kept."""
    fixed_ids = {id(p) for p in fixed}
    items = list(params)
    groups = [dict(g) for g in items] if items and isinstance(items[0], dict) else [{"params": items}]
    out: list[dict[str, Any]] = []
    for g in groups:
        ps = [g["params"]] if isinstance(g["params"], torch.Tensor) else list(g["params"])
        moving = [p for p in ps if id(p) not in fixed_ids]
        still = [p for p in ps if id(p) in fixed_ids]
        if moving:
            out.append({**g, "params": moving, _PERTURB: True})
        if still:
            out.append({**g, "params": still, _PERTURB: False})
    return out


_PERTURB = "perturb"  # set by split_fixed only: a component declares its fixed parameters, never this key


def is_perturbed(group: dict[str, Any]) -> bool:
    """Whether a weight-perturbation method moves this group (see :func:`split_fixed`)."""
    return bool(group.get(_PERTURB, True))


class WrappedOptimizer(torch.optim.Optimizer):
    """A torch optimizer that owns a base optimizer sharing its param_groups (davda54/sam style).

    ``fixed``: parameters that take the base optimizer's steps but are never perturbed (nor counted
    in a perturbation's norm): what :meth:`dipnet.methods.Method.fixed_parameters` declares, such as
    DIPNet's log-sigmas."""

    _wrapper_state_keys: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Any], base_optimizer: type[torch.optim.Optimizer] | Any,
                 defaults: dict[str, Any], fixed: Iterable[torch.Tensor] = (), **base_kwargs: Any) -> None:
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise ConfigError(
                f"base_optimizer must be a torch.optim.Optimizer class such as torch.optim.SGD, not {base_optimizer!r}"
            )
        super().__init__(split_fixed(params, fixed), defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (moments, hyperparameters) plus the wrapper's own tensors."""
        out = self.base_optimizer.state_dict()
        wrapper: dict[str, Any] = {}
        for i, p in enumerate(self._params()):
            st = self.state.get(p, {})
            kept = {k: v.clone() for k, v in st.items() if k in self._wrapper_state_keys and torch.is_tensor(v)}
            if kept:
                wrapper[str(i)] = kept
        extra = self._extra_state()
        if extra:
            wrapper["extra"] = extra
        out["wrapper"] = wrapper
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        wrapper = state_dict.pop("wrapper", {}) or {}
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        params = self._params()
        self.state.clear()
        for key, st in wrapper.items():
            if key == "extra":
                continue
            p = params[int(key)]
            self.state[p] = {k: v.to(p.device).clone() for k, v in st.items()}
        self._load_extra_state(wrapper.get("extra", {}))

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)
