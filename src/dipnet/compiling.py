"""dipnet under ``torch.compile`` (docs/dipnet.md, "Under torch.compile").

A projection is a pair of forward hooks on the layer it feeds, and so are ICP's feature taps
and NEFTune's embedding noise. ``torch.compile`` does not guard on module hooks by default
(``torch._dynamo.config.skip_nnmodule_hook_guards``, which torch's own config calls unsafe: "if
your model actually has hooks and you remove them, or doesn't and you add them, dynamo will not
notice and will execute whichever version you first compiled"). Measured on the zoo's MLP: code
compiled for an unprojected model ran for a projected one of the same class without its noise.
:func:`guard_hooks` turns those guards on; every dipnet function that adds hooks calls it, so a
model compiled before or after :func:`~dipnet.projection.project` runs with exactly the hooks it
has (a compiled model whose hooks change is traced again).

:func:`compile_model` is what ``dipnet train --compile`` and ``dipnet finetune --compile`` use.
"""
from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

__all__ = ["compile_model", "guard_hooks"]


def guard_hooks() -> None:
    """Make ``torch.compile`` guard on module hooks (process-wide; the cost is a check of the hook
    dictionaries of the modules a compiled forward runs)."""
    import torch._dynamo

    torch._dynamo.config.skip_nnmodule_hook_guards = False


def compile_model(model: nn.Module, *, fresh: bool = True, **options: Any) -> nn.Module:
    """``torch.compile(model, **options)`` with hook guards on. ``fresh`` first drops the code
    compiled before in this process (``torch.compiler.reset()``): what a new run wants, so that
    runs sharing a process (a suite's) neither reuse each other's graphs nor hit the recompile
    limit. With inductor (the default backend) on a CPU, random ops run torch's own kernels
    (``fallback_random``): there inductor's in-kernel generator costs about 50 ns a normal value
    and re-draws a random offset in every vector of the kernel that reads it (measured,
    docs/dipnet.md "Under torch.compile"), and compiled draws then equal eager ones; on a GPU
    inductor's generator is fast and fused into the kernel that uses it. The returned
    module shares ``model``'s parameters and buffers; save and load ``model`` itself (the
    wrapper's state_dict keys carry a prefix)."""
    guard_hooks()
    if fresh:
        torch.compiler.reset()
    on_cpu = next(iter(model.parameters()), torch.empty(0)).device.type == "cpu"
    if options.get("backend", "inductor") == "inductor" and on_cpu:
        options = {**options, "options": {"fallback_random": True, **(options.get("options") or {})}}
    return cast(nn.Module, torch.compile(model, **options))
