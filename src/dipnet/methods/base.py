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
from ..projection.loss import batch_size_of, call_model
from ..schema import Validated

SLOTS = ("model", "batch", "loss", "update")
# What a task feeds the model: continuous features (images, signals), or token ids (language
# models). A component that changes continuous inputs (noise, Cutout, Mixup, FGSM, ICP) cannot
# apply to token ids; one that hooks the input embeddings (NEFTune) needs them.
INPUT_KINDS = ("features", "tokens")
FEATURES: frozenset[str] = frozenset({"features"})
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
    # the task's loss on the model's logits (cross-entropy; the answer tokens' loss for a causal LM)
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy

    def count(self, examples: int) -> None:
        """Record ``examples`` forward+backward evaluations of a single example."""
        self.example_grads += int(examples)

    def log(self, **values: float | torch.Tensor) -> None:
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
    inputs: ClassVar[frozenset[str]] = frozenset(INPUT_KINDS)

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
        self, params: Iterable[Any], base: type[torch.optim.Optimizer], *, fixed: Iterable[torch.Tensor] = (),
        **base_kwargs: Any,
    ) -> torch.optim.Optimizer:
        """The optimizer (slot "update"); ``fixed``: parameters other components declare as not
        to be perturbed (see :meth:`fixed_parameters`)."""
        return base(params, **base_kwargs)

    def fixed_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters this component adds to the model that are its own business: trained, but
        never weight-decayed and never perturbed by a weight-perturbation method (DIPNet's
        log-sigmas, which its variance prior regularizes)."""
        return []

    def fixed_lr_scale(self) -> float:
        """The learning rate of :meth:`fixed_parameters` as a multiple of the base one."""
        return 1.0

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
        """JSON-able metrics recorded with each evaluation (e.g. DIPNet's learned sigma)."""
        return {}

    def on_train_end(self, model: nn.Module) -> list[str]:
        """Called once when training ends (also in other trainers' integrations): leave the model
        as it predicts; return one line per change made, for the log."""
        return []

    def hyperparameters(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init} \
            if dataclasses.is_dataclass(self) else {}


def task_loss(model: nn.Module, x: Any, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """ERM: the task's criterion (cross-entropy on hard labels (B,) or soft labels (B, C)) on
    ``model(x)``, or ``model(**x)`` for a keyword batch."""
    ctx.count(batch_size_of(x))
    return ctx.criterion(call_model(model, x), y)


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
            return task_loss(model, x, y, ctx)
        return self._loss.loss(model, x, y, ctx)

    def check_inputs(self, kind: str) -> None:
        """Refuse a component that cannot apply to a task's inputs (``"features"`` or ``"tokens"``)."""
        for comp in self.components:
            if kind not in comp.inputs:
                what = "token ids (it changes continuous inputs)" if kind == "tokens" else f"{kind} inputs"
                raise ConfigError(f"method {comp.name!r} cannot train on {what}; choose a method that "
                                  f"applies to them (see `dipnet methods`)")

    def fixed_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """What the components declare as trained but never decayed nor perturbed."""
        seen: dict[int, nn.Parameter] = {}
        for comp in self.components:
            for p in comp.fixed_parameters(model):
                seen.setdefault(id(p), p)
        return list(seen.values())

    def param_groups(self, model: nn.Module, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """The optimizer's groups: weight decay on weight matrices and kernels only, not on
        biases, norms or 1-D scales (one group when there is no weight decay: each group costs the
        optimizer its own kernels per step); the fixed parameters in a group of their own with no
        weight decay."""
        fixed = {id(p) for p in self.fixed_parameters(model)}
        trained = [p for p in model.parameters() if p.requires_grad]
        own = [p for p in trained if id(p) not in fixed]
        if weight_decay == 0:
            groups = [{"params": own, "weight_decay": 0.0}]
        else:
            groups = [{"params": [p for p in own if p.ndim > 1], "weight_decay": weight_decay},
                      {"params": [p for p in own if p.ndim <= 1], "weight_decay": 0.0}]
        groups.append({"params": [p for p in trained if id(p) in fixed], "weight_decay": 0.0})
        return [g for g in groups if g["params"]]

    def build_optimizer(
        self, model: nn.Module, base: type[torch.optim.Optimizer], *, weight_decay: float = 0.0, **base_kwargs: Any
    ) -> torch.optim.Optimizer:
        """The method's optimizer over ``model``'s trainable parameters (:meth:`param_groups`)."""
        groups = self.param_groups(model, weight_decay)
        if not groups:
            raise ConfigError("the model has no trainable parameters")
        scale = math.prod(comp.fixed_lr_scale() for comp in self.components)
        if scale != 1.0:
            if "lr" not in base_kwargs:
                raise ConfigError("a learning-rate multiple of the sigmas (sigma_lr) needs the base learning rate: "
                                  "pass lr= to build_optimizer")
            fixed = {id(p) for p in self.fixed_parameters(model)}
            for group in groups:
                if all(id(p) in fixed for p in group["params"]):
                    group["lr"], group["lr_scale"] = base_kwargs["lr"] * scale, scale  # schedules keep the multiple
        if self._update is None:
            return base(groups, weight_decay=weight_decay, **base_kwargs)  # type: ignore[call-arg]  # torch's optimizers take weight_decay; their base class's __init__ does not
        return self._update.build_optimizer(groups, base, fixed=self.fixed_parameters(model),
                                            weight_decay=weight_decay, **base_kwargs)

    def update(self, model: nn.Module, optimizer: torch.optim.Optimizer, closure: Closure, ctx: StepContext) -> bool:
        if self._update is None:
            return plain_update(model, optimizer, closure, ctx)
        return self._update.update(model, optimizer, closure, ctx)

    def step(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, x: Any, y: torch.Tensor,
        ctx: StepContext, *, grad_clip: float | None = None,
        backward: Callable[[torch.Tensor], None] | None = None,
    ) -> float:
        """One training step on the batch ``(x, y)``: transform it, run the update with a closure
        that computes the loss and its gradients (of ``ctx.loss_scale`` times the loss, clipped to
        ``grad_clip`` in global norm), and return the loss of the closure's first evaluation.
        ``backward(loss)`` replaces ``loss.backward()`` (Lightning's ``manual_backward``). A non-finite loss raises
        :class:`~dipnet.errors.NonFiniteLossError` naming ``ctx.step`` before any weight moves."""
        x, y = self.transform_batch(model, x, y, ctx)
        values: list[float] = []

        def closure() -> torch.Tensor:
            loss = self.loss(model, x, y, ctx)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(ctx.step, ctx.epoch, value)
            scaled = loss if ctx.loss_scale == 1.0 else loss * ctx.loss_scale
            scaled.backward() if backward is None else backward(scaled)
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

    def on_train_end(self, model: nn.Module) -> list[str]:
        return [line for comp in self.components for line in comp.on_train_end(model)]

    def __repr__(self) -> str:
        return f"Method({self.components!r})"
