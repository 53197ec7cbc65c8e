"""Method components by name (:data:`METHODS`): ``build_method("dipnet+mrwp", {"dipnet.sigma": 0.1})``.

Specs join component names with ``+``; ``"erm"`` is the empty method (cross-entropy and a plain
optimizer step). Hyperparameters are passed raw (CLI strings, TOML values): each component's
schema coerces and checks them once (:mod:`dipnet.schema`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..registry import Registry
from .base import SLOTS, Component, Method

METHODS: Registry[type[Component]] = Registry("method")


def register_component(cls: type[Component]) -> type[Component]:
    """Class decorator: make a component available by its ``name`` in method specs (tagged with
    its slots: ``METHODS.filter(tag="update")`` lists the update rules)."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute 'name'")
    bad = set(cls.slots) - set(SLOTS)
    if bad:
        raise TypeError(f"{cls.__name__}: unknown slots {sorted(bad)}; allowed: {SLOTS}")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass (its fields are its hyperparameters)")
    return METHODS.add(cls.name, cls, cls.description, cls.slots)


@register_component
@dataclass
class ERM(Component):
    """The empty method: no component changes the step (a spec drops ``erm``: ``"erm+sam"`` is SAM)."""

    name = "erm"
    description = "empirical risk minimization: cross-entropy and a plain optimizer step"


# Names of the empty method in a spec: plain training (``sft``, supervised fine-tuning, is what it
# is called for language models).
EMPTY = ("erm", "sft")


def spec_names(spec: str) -> list[str]:
    """The component names of a spec, ``erm``/``sft`` dropped: ``"erm+sam"`` -> ``["sam"]``."""
    names = [n.strip() for n in str(spec).split("+") if n.strip() and n.strip() not in EMPTY]
    if len(set(names)) != len(names):
        raise ConfigError(f"method {spec!r} names a component twice")
    return names


def _field_names(cls: type[Component]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def assign_hyperparameters(spec: str, params: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Route ``{"rho": v, "dipnet.sigma": w, "input-noise.sigma": u}`` to ``{component: {field: value}}``.

    A plain key goes to the one component that declares it; ``component.field`` names the
    component (needed when two share a field such as ``sigma``). Hyphens in a field name are
    read as underscores (``--sigma-schedule``); component names keep theirs.
    """
    classes = {n: METHODS.get(n) for n in spec_names(spec)}
    fields = {n: _field_names(c) for n, c in classes.items()}
    out: dict[str, dict[str, Any]] = {n: {} for n in classes}
    for key, value in (params or {}).items():
        comp, dot, attr = str(key).rpartition(".")
        attr = attr.replace("-", "_")
        if dot:
            if comp not in fields:
                raise ConfigError(f"hyperparameter {key!r} names {comp!r}, which is not part of method {spec!r}")
            targets = [comp] if attr in fields[comp] else []
        else:
            targets = [c for c in fields if attr in fields[c]]
        if not targets:
            allowed = sorted({f"{c}.{a}" for c in fields for a in fields[c]})
            raise ConfigError(f"method {spec!r} has no hyperparameter {key!r}; allowed: {', '.join(allowed) or 'none'}")
        if len(targets) > 1:
            raise ConfigError(f"hyperparameter {key!r} is ambiguous in {spec!r}; write one of "
                              + ", ".join(f"{t}.{attr}" for t in targets))
        out[targets[0]][attr] = value
    return out


def build_method(spec: str | Method, params: dict[str, Any] | None = None,
                 defaults: dict[str, dict[str, Any]] | None = None) -> Method:
    """Build a :class:`Method` from ``"name[+name...]"`` and raw hyperparameter values.

    ``defaults``: ``{component: {field: value}}`` a task puts in place of a component's own
    defaults (a language model's DIPNet placement and sigma); what ``params`` sets wins."""
    if isinstance(spec, Method):
        if params:
            raise ConfigError("hyperparameters given with an already-built Method; set them on its components")
        return spec
    assigned = assign_hyperparameters(spec, params)
    return Method([METHODS.get(name)(**{**(defaults or {}).get(name, {}), **kwargs})
                   for name, kwargs in assigned.items()])
