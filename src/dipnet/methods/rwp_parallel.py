"""m-RWP's parallel form (Li et al., TMLR 2024; the released nblt/mARWP ``train_mrwp_parallel.py``).

On an even number of data-parallel processes, one update per global batch: even ranks take the
clean gradient of their part of the batch with loss weight ``2 (1 - lambda)``, odd ranks the
gradient at ``w + eps`` (their own noise: filter-wise, std ``sigma * ||w_j||``) with weight
``2 lambda``; DDP's equal-weight average is then ``(1 - lambda) g0 + lambda g1``, the mix the
single-process form builds from two successive batches. The noise is removed before the base
optimizer steps. The weights enter through ``StepContext.loss_scale``, which the engine's closure
applies before the backward, so that DDP's reduction sees them.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ._wrapper import disable_running_stats, enable_running_stats, has_batchnorm
from .base import Closure, StepContext


class Perturbing(Protocol):
    """What the parallel form asks of its optimizer (an :class:`~dipnet.methods.RWP`)."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def perturb(self) -> None: ...

    def restore(self) -> None: ...

    def second_step(self, zero_grad: bool = False) -> None: ...


def parallel_mrwp_update(model: nn.Module, optimizer: Perturbing, closure: Closure, ctx: StepContext, mix: float) -> bool:
    """One update of m-RWP's parallel form on this rank (``ctx.rank``, ``ctx.world_size`` even) with
    ``optimizer`` a :class:`~dipnet.methods.RWP` (its ``perturb``/``restore``/``second_step``):
    odd ranks perturb the weights in place (``optimizer.perturb``; BatchNorm statistics frozen
    during that pass, as in the single-process form) and weight their loss by ``2 mix``, even ranks
    weight the clean loss by ``2 (1 - mix)``; the gradient reduction of the DDP forward in
    ``closure`` averages them; the noise is removed, then the base optimizer steps."""
    perturbed = ctx.rank % 2 == 1
    scale = ctx.loss_scale
    ctx.loss_scale = scale * 2.0 * (mix if perturbed else 1.0 - mix)
    optimizer.zero_grad(set_to_none=True)
    freeze = perturbed and has_batchnorm(model)
    if perturbed:
        optimizer.perturb()
    if freeze:
        disable_running_stats(model)
    try:
        with torch.enable_grad():
            closure()
    finally:
        if freeze:
            enable_running_stats(model)
        optimizer.restore()
        ctx.loss_scale = scale
    optimizer.second_step(zero_grad=True)
    return True
