"""The method interface: how DIPNet, SAM, the RWP family, ICP and the baselines plug into the loop.

A training method is a list of *components*. Each component is a dataclass whose fields are
its hyperparameters and which fills one or more *slots*:

- ``"model"``  ``transform_model(model)``: change the forward pass (DIPNet inserts projections);
- ``"batch"``  ``transform_batch(model, x, y, ctx)``: change the data (input noise, Cutout,
  Mixup, FGSM examples); ``y`` may become soft labels of shape (B, C);
- ``"loss"``   ``loss(model, x, y, ctx)``: change the objective (DIPNet's m trajectories, ICP);
- ``"update"`` ``build_optimizer`` and ``update(model, optimizer, closure, ctx)``: change the
  update rule (SAM, RWP, m-RWP, ARWP).

At most one component may own ``"loss"`` and one ``"update"``; any number may transform the
model or the batch (in the order named). Specs join component names with ``+``:
``"dipnet+mrwp"`` is a projected model trained with m-RWP. ``"erm"`` is the empty method:
cross-entropy and a plain optimizer step. Components count the example-gradients they spend
in ``ctx`` so that suites can compare methods at equal compute.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, unknown_name

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

    def count(self, examples: int) -> None:
        """Record ``examples`` forward+backward evaluations of a single example."""
        self.example_grads += int(examples)

    def log(self, **values: float) -> None:
        for key, value in values.items():
            self.logs[key] = float(value)


class Component:
    """Base class: every hook is a no-op; subclasses override the hooks of their slots."""

    name: ClassVar[str] = ""
    slots: ClassVar[frozenset[str]] = frozenset()
    description: ClassVar[str] = ""

    def transform_model(self, model: nn.Module) -> nn.Module:
        return model

    def transform_batch(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def build_optimizer(
        self, params: Iterable[nn.Parameter], base: type[torch.optim.Optimizer], **base_kwargs: Any
    ) -> torch.optim.Optimizer:
        return base(params, **base_kwargs)

    def update(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, closure: Closure, ctx: StepContext
    ) -> bool:
        raise NotImplementedError

    def on_epoch_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, epochs: int) -> None:
        """Called before each epoch (0-based), also after a resume."""

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        """JSON-able metrics recorded with each epoch (e.g. DIPNet's learned sigma)."""
        return {}

    def hyperparameters(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} if dataclasses.is_dataclass(self) else {}


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
    """A composition of components; what the training loop talks to."""

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
        self._loss = next((c for c in components if "loss" in c.slots), None)
        self._update = next((c for c in components if "update" in c.slots), None)

    @property
    def name(self) -> str:
        return "+".join(c.name for c in self.components) or "erm"

    def hyperparameters(self) -> dict[str, dict[str, Any]]:
        return {c.name: c.hyperparameters() for c in self.components}

    def transform_model(self, model: nn.Module) -> nn.Module:
        for comp in self.components:
            if "model" in comp.slots:
                model = comp.transform_model(model)
        return model

    def transform_batch(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for comp in self.components:
            if "batch" in comp.slots:
                x, y = comp.transform_batch(model, x, y, ctx)
        return x, y

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if self._loss is None:
            return cross_entropy_loss(model, x, y, ctx)
        return self._loss.loss(model, x, y, ctx)

    def build_optimizer(
        self, params: Iterable[nn.Parameter], base: type[torch.optim.Optimizer], **base_kwargs: Any
    ) -> torch.optim.Optimizer:
        if self._update is None:
            return base(params, **base_kwargs)
        return self._update.build_optimizer(params, base, **base_kwargs)

    def update(self, model: nn.Module, optimizer: torch.optim.Optimizer, closure: Closure, ctx: StepContext) -> bool:
        if self._update is None:
            return plain_update(model, optimizer, closure, ctx)
        return self._update.update(model, optimizer, closure, ctx)

    def on_epoch_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, epochs: int) -> None:
        for comp in self.components:
            comp.on_epoch_start(model, optimizer, epoch, epochs)

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for comp in self.components:
            out.update(comp.epoch_metrics(model))
        return out

    def __repr__(self) -> str:
        return f"Method({self.components!r})"


_COMPONENTS: dict[str, type[Component]] = {}


def register_component(cls: type[Component]) -> type[Component]:
    """Class decorator: make a component available by its ``name`` in method specs."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute 'name'")
    bad = set(cls.slots) - set(SLOTS)
    if bad:
        raise TypeError(f"{cls.__name__}: unknown slots {sorted(bad)}; allowed: {SLOTS}")
    _COMPONENTS[cls.name] = cls
    return cls


def _ensure_builtin() -> None:
    from .. import methods  # noqa: F401  (registers the built-in components)


def method_names() -> dict[str, str]:
    """Registered component names with their descriptions (``erm`` included)."""
    _ensure_builtin()
    names = {"erm": "empirical risk minimization: cross-entropy and a plain optimizer step"}
    names.update({n: c.description for n, c in sorted(_COMPONENTS.items())})
    return names


def component_class(name: str) -> type[Component]:
    _ensure_builtin()
    if name not in _COMPONENTS:
        raise unknown_name("method", name, ["erm", *_COMPONENTS])
    return _COMPONENTS[name]


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a CLI/TOML value to a field's declared type."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, allowed))}, not {value!r}")
        return value
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else list(value)
        inner = typing.get_args(annotation)[0] if typing.get_args(annotation) else float
        seq = [_coerce(v.strip() if isinstance(v, str) else v, inner, where) for v in items]
        return tuple(seq) if origin is tuple else seq
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} expects a {getattr(annotation, '__name__', annotation)}, got {value!r}") from None
    return value


def build_method(spec: str | Method, params: dict[str, Any] | None = None) -> Method:
    """Build a :class:`Method` from ``"name[+name...]"`` and hyperparameters.

    A key ``"rho"`` goes to the one component that declares it; ``"sam.rho"`` names the
    component explicitly (needed when two components share a name such as ``sigma``).
    """
    if isinstance(spec, Method):
        if params:
            raise ConfigError("hyperparameters given with an already-built Method; set them on its components")
        return spec
    names = [n.strip() for n in str(spec).split("+") if n.strip() and n.strip() != "erm"]
    if len(set(names)) != len(names):
        raise ConfigError(f"method {spec!r} names a component twice")
    classes = [component_class(n) for n in names]
    hints = {cls.name: typing.get_type_hints(cls) for cls in classes}
    fields = {cls.name: {f.name for f in dataclasses.fields(cls) if f.init} for cls in classes}
    kwargs: dict[str, dict[str, Any]] = {cls.name: {} for cls in classes}
    for key, value in (params or {}).items():
        comp_name, dot, attr_name = key.rpartition(".")
        key = comp_name + dot + attr_name.replace("-", "_")  # component names keep their hyphens
        if "." in key:
            comp, attr = key.split(".", 1)
            if comp not in fields:
                raise ConfigError(f"hyperparameter {key!r} names {comp!r}, which is not part of method {spec!r}")
            targets = [comp] if attr in fields[comp] else []
        else:
            attr = key
            targets = [c for c in fields if attr in fields[c]]
        if not targets:
            allowed = sorted({f"{c}.{a}" for c in fields for a in fields[c]})
            raise ConfigError(
                f"method {spec!r} has no hyperparameter {key!r}; allowed: {', '.join(allowed) or 'none'}"
            )
        if len(targets) > 1:
            raise ConfigError(
                f"hyperparameter {key!r} is ambiguous in {spec!r}; write one of "
                + ", ".join(f"{t}.{attr}" for t in targets)
            )
        kwargs[targets[0]][attr] = _coerce(value, hints[targets[0]].get(attr, Any), f"{targets[0]}.{attr}")
    comps = []
    for cls in classes:
        try:
            comps.append(cls(**kwargs[cls.name]))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"method {cls.name!r}: {exc}") from None
    return Method(comps)


def method_fields(spec: str) -> dict[str, dict[str, Any]]:
    """Hyperparameters and defaults of each component of a spec (for ``--help`` texts)."""
    out = {}
    for n in [n for n in spec.split("+") if n and n != "erm"]:
        cls = component_class(n)
        out[n] = {
            f.name: (f.default if f.default is not dataclasses.MISSING else None)
            for f in dataclasses.fields(cls)
            if f.init
        }
    return out
