"""Equal budgets: a method's cost in example-gradients per training example, measured by running
a few steps of it (:func:`probe_cost`) when the suite does not state it; and the equal tuning
budget, the grid of its main knob each method gets in a ``tune = true`` suite (:func:`tuning_grid`)."""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from ..engine import TrainConfig, build_optimizer, prepare
from ..errors import ConfigError
from ..methods import METHODS, StepContext
from ..methods.registry import spec_names

# ERM's main knob for equal tuning (`tune = true`): its regularization strength, the weight decay.
ERM_TUNE: dict[str, tuple[Any, ...]] = {"weight_decay": (0.0, 0.01, 0.1)}

def checked_cost(fn: Callable[[dict[str, Any]], float], cfg: dict[str, Any], source: str, label: str) -> float:
    try:
        cost = float(fn(cfg))
    except ConfigError:
        raise
    except Exception as exc:  # the probe runs user code: report, do not crash with a traceback
        raise ConfigError(
            f"{source}: could not measure the cost of method {label!r} ({type(exc).__name__}: {exc}); "
            f"set it by hand with `cost = ...` in [methods.{label}]"
        ) from None
    if not math.isfinite(cost) or cost <= 0:
        raise ConfigError(f"{source}: method {label!r} has cost {cost}; set a positive `cost` in [methods.{label}]")
    return cost


def probe_cost(config: Mapping[str, Any], batches: int = 2) -> float:
    """Example-gradients per training example of a method: run ``batches`` steps and read the count.

    The count is what the method's components record with ``StepContext.count`` (a plain CE
    step counts B, SAM 2B, DIPNet with m trajectories mB). The learning rate is 0, so the
    probe does not depend on how far training has gone.
    """
    cfg = TrainConfig.from_dict({**config, "seed": 0, "optimizer": "sgd", "lr": 1.0, "weight_decay": 0.0})
    ds, model, method = prepare(cfg)
    optimizer = build_optimizer(cfg, model, method)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    bs = min(cfg.batch_size, len(ds.x_train))
    ctx = StepContext(epoch=0, epochs=1, batch_size=bs, bounds=ds.info.bounds)
    method.on_epoch_start(model, optimizer, 0, 1)
    seen = 0
    for i in range(batches):
        x, y = ds.x_train[i * bs:(i + 1) * bs], ds.y_train[i * bs:(i + 1) * bs]
        if len(x) == 0:
            break
        ctx.step = i
        method.step(model, optimizer, x, y, ctx)
        seen += len(x)
    return ctx.example_grads / max(seen, 1)


# ---------------------------------------------------------------- parsing and validation


def tuning_grid(spec: str) -> dict[str, tuple[Any, ...]]:
    """The values an equal-tuning suite tries for a method: its first component's ``tune`` grid
    (ERM: :data:`ERM_TUNE`); {} for a component without one."""
    names = spec_names(spec)
    if not names:
        return dict(ERM_TUNE)
    for name in names:
        grid = METHODS.get(name).tune if name in METHODS else {}
        if grid:
            return dict(grid)
    return {}
