"""The method interface: how DIPNet, SAM, the RWP family, ICP and the baselines plug into a loop.

A training method is a list of *components*. Each component is a dataclass whose fields are
its hyperparameters (limits declared with :func:`dipnet.schema.param`, checked on construction)
and which fills one or more *slots*:

- ``"model"``  ``transform_model(model)``: change the forward pass (DIPNet inserts projections);
- ``"batch"``  ``transform_batch(model, x, y, ctx)``: change the data (input noise, Cutout,
  Mixup, FGSM examples); ``y`` may become soft labels of shape (B, C);
- ``"loss"``   ``loss(model, x, y, ctx)``: change the objective (DIPNet's m trajectories, ICP);
- ``"update"`` ``build_optimizer`` and ``update(model, optimizer, closure, ctx)``: change the
  update rule (SAM, RWP, m-RWP, ARWP).

At most one component may own ``"loss"`` and one ``"update"``; any number may transform the
model or the batch (in the order named). :meth:`Method.step` is the one training step that the
engine, the suites' cost probe, the tests and the benchmarks all run. Components count the
example-gradients they spend in ``ctx`` so that suites can compare methods at equal compute.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, NonFiniteLossError
from ..schema import Validated

SLOTS = ("model", "batch", "loss", "update")
Closure = Callable[[], torch.Tensor]


@dataclass
class StepContext:
    """Per-step bookkeeping shared by the components of a method."""

    epoch: int = 0
    epochs: int = 1
    step: int = 0
    progress: float = 0.0
    batch_size: int = 0
    lr: float = 0.0
    bounds: tuple[float, float] | None = None  # the dataset's valid input range (None: unbounded)
    example_grads: int = 0
    logs: dict[str, float] = field(default_factory=dict)
    # data-parallel runs (dipnet.engine.distributed): this process's rank, the number of processes,
    # and the weight of this rank's loss in the ranks' gradient average
    rank: int = 0
    world_size: int = 1
    loss_scale: float = 1.0

    def count(self, examples: int) -> None:
        """Record ``examples`` forward+backward evaluations of a single example."""
        self.example_grads += int(examples)

    def log(self, **values: float) -> None:
        for key, value in values.items():
            self.logs[key] = float(value)


class Component(Validated):
    """Base class: every hook is a no-op; subclasses are dataclasses that override the hooks of their slots."""

    name: ClassVar[str] = ""
    slots: ClassVar[frozenset[str]] = frozenset()
    description: ClassVar[str] = ""
    # The main hyperparameter and the values an equal-tuning suite tries (``tune = true``): the
    # same small budget for every method, the winner chosen on validation.
    tune: ClassVar[dict[str, tuple[Any, ...]]] = {}

    def _owner(self) -> str:
        return self.name

    def transform_model(self, model: nn.Module) -> nn.Module:
        return model

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`ConfigError` if the (transformed) model does not fit this component's
        settings; called before the first step (ICP's layer names)."""

    def transform_batch(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def build_optimizer(
        self, params: Iterable[Any], base: type[torch.optim.Optimizer], **base_kwargs: Any
    ) -> torch.optim.Optimizer:
        return base(params, **base_kwargs)

    def update(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, closure: Closure, ctx: StepContext
    ) -> bool:
        raise NotImplementedError

    def on_epoch_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, epochs: int) -> None:
        """Called before each epoch (0-based), also after a resume."""

    def check_world(self, world_size: int) -> None:
        """Raise :class:`ConfigError` if this component cannot train on ``world_size`` data-parallel
        processes (parallel m-RWP needs an even number); called before the first step."""

    def check_epochs(self, epochs: int) -> None:
        """Raise :class:`ConfigError` if this component would do nothing in a run of ``epochs``
        (ICP's warm-up covering every epoch); called before the first step."""

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        """JSON-able metrics recorded with each epoch (e.g. DIPNet's learned sigma)."""
        return {}

    def hyperparameters(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init} \
            if dataclasses.is_dataclass(self) else {}


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """ERM: cross-entropy on hard labels (B,) or soft labels (B, C)."""
    ctx.count(x.shape[0])
    return F.cross_entropy(model(x), y)


def plain_update(model: nn.Module, optimizer: torch.optim.Optimizer, closure: Closure, ctx: StepContext) -> bool:
    optimizer.zero_grad(set_to_none=True)
    closure()
    optimizer.step()
    return True


class Method:
    """A composition of components; what a training loop talks to."""

    def __init__(self, components: list[Component]) -> None:
        owners: dict[str, str] = {}
        for comp in components:
            for slot in ("loss", "update"):
                if slot in comp.slots:
                    if slot in owners:
                        raise ConfigError(
                            f"methods {owners[slot]!r} and {comp.name!r} both set the {slot}; "
                            f"combine at most one {slot}-changing method with others"
                        )
                    owners[slot] = comp.name
        self.components = list(components)
        self._batch = [c for c in components if "batch" in c.slots]
        self._loss = next((c for c in components if "loss" in c.slots), None)
        self._update = next((c for c in components if "update" in c.slots), None)

    @property
    def name(self) -> str:
        return "+".join(c.name for c in self.components) or "erm"

    def hyperparameters(self) -> dict[str, dict[str, Any]]:
        return {c.name: c.hyperparameters() for c in self.components}

    def transform_model(self, model: nn.Module) -> nn.Module:
        """Apply every model transform, then let each component check the result."""
        for comp in self.components:
            if "model" in comp.slots:
                model = comp.transform_model(model)
        for comp in self.components:
            comp.check_model(model)
        return model

    def transform_batch(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for comp in self._batch:
            x, y = comp.transform_batch(model, x, y, ctx)
        return x, y

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if self._loss is None:
            return cross_entropy_loss(model, x, y, ctx)
        return self._loss.loss(model, x, y, ctx)

    def build_optimizer(
        self, params: Iterable[Any], base: type[torch.optim.Optimizer], **base_kwargs: Any
    ) -> torch.optim.Optimizer:
        if self._update is None:
            return base(params, **base_kwargs)
        return self._update.build_optimizer(params, base, **base_kwargs)

    def update(self, model: nn.Module, optimizer: torch.optim.Optimizer, closure: Closure, ctx: StepContext) -> bool:
        if self._update is None:
            return plain_update(model, optimizer, closure, ctx)
        return self._update.update(model, optimizer, closure, ctx)

    def step(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
        ctx: StepContext, *, grad_clip: float | None = None,
    ) -> float:
        """One training step on the batch ``(x, y)``: transform it, run the update with a closure
        that computes the loss and its gradients (of ``ctx.loss_scale`` times the loss, clipped to
        ``grad_clip`` in global norm), and return the loss of the closure's first evaluation. A non-finite loss raises
        :class:`~dipnet.errors.NonFiniteLossError` naming ``ctx.step`` before any weight moves."""
        x, y = self.transform_batch(model, x, y, ctx)
        values: list[float] = []

        def closure() -> torch.Tensor:
            loss = self.loss(model, x, y, ctx)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(ctx.step, ctx.epoch, value)
            (loss if ctx.loss_scale == 1.0 else loss * ctx.loss_scale).backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
            values.append(value)
            return loss.detach()

        self.update(model, optimizer, closure, ctx)
        if not values:
            raise RuntimeError(f"method {self.name!r} did not evaluate the loss in its update at step {ctx.step}")
        return values[0]

    def on_epoch_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, epochs: int) -> None:
        for comp in self.components:
            comp.on_epoch_start(model, optimizer, epoch, epochs)

    def check_world(self, world_size: int) -> None:
        for comp in self.components:
            comp.check_world(world_size)

    def check_epochs(self, epochs: int) -> None:
        for comp in self.components:
            comp.check_epochs(epochs)

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for comp in self.components:
            out.update(comp.epoch_metrics(model))
        return out

    def __repr__(self) -> str:
        return f"Method({self.components!r})"
