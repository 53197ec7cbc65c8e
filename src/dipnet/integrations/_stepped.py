"""The method's optimizer as another trainer sees it, for trainers that step the optimizer
themselves after each training step (the Hugging Face Trainer, Lightning's manual step count).

dipnet's :meth:`~dipnet.methods.Method.step` already updates the weights (SAM's two passes, RWP's
noise, the plain step); the trainer's own ``optimizer.step()`` that follows must not move them
again, but its learning-rate scheduler, step counter, hooks and checkpoints must still work. The
proxy shares the optimizer's ``param_groups`` and ``state`` (so a scheduler's learning rates reach
the real optimizer), saves and loads the real state, and makes ``step``/``zero_grad`` no-ops.
Written by hand: neither trainer has a hook that replaces its optimizer step.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


class SteppedOptimizer(torch.optim.Optimizer):
    """``SteppedOptimizer(opt)``: ``opt`` for a trainer, its ``step`` already taken by the method."""

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        super().__init__([p for g in inner.param_groups for p in g["params"]], dict(inner.defaults))
        self.inner = inner
        self.param_groups = inner.param_groups
        self.state = inner.state

    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]  # returns nothing: no closure runs
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)
        self.param_groups, self.state = self.inner.param_groups, self.inner.state
