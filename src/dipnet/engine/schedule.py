"""Learning-rate schedules as pure functions of the global step.

A schedule that depends only on ``(step, total_steps)`` has no state to checkpoint, so a resumed
run sets exactly the learning rates of an uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Sequence

from ..errors import ConfigError
from .config import SCHEDULES


def lr_at(
    step: int,
    total_steps: int,
    base_lr: float,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
    final_lr_fraction: float = 0.0,
) -> float:
    """Learning rate for 0-based ``step`` out of ``total_steps``.

    Linear warm-up from ``base_lr / warmup_steps`` over ``warmup_steps``; then ``constant``,
    ``cosine`` annealing to ``final_lr_fraction * base_lr`` (Loshchilov & Hutter 2017, eq. 5), or
    ``step`` decay by ``gamma`` at each milestone given as a fraction of training.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        done = step / max(total_steps, 1)
        return base_lr * gamma ** sum(done >= m for m in milestones)
    span = max(total_steps - warmup_steps, 1)
    t = min(max(step - warmup_steps, 0) / span, 1.0)
    floor = final_lr_fraction * base_lr
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
