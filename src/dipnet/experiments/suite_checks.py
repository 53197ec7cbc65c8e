"""Checks of a suite file: the TOML tables' keys and values (by the engine's schema), and the
parsed suite against the registries (dataset, model and method names, their options, devices,
every method hyperparameter), so that a mistake is reported when the suite loads, not when a run
starts."""
from __future__ import annotations

from typing import Any, Mapping, TypeVar

from ..data import DATASETS
from ..data.base import dataset_options
from ..engine import TrainConfig, resolve_device
from ..errors import ConfigError
from ..methods import build_method
from ..models import MODELS
from ..models.registry import model_options
from ..registry import Registry
from ..schema import check_field

T = TypeVar("T")


class Checker:
    """Errors that name the suite file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {msg}")

    def known(self, registry: Registry[T], name: Any, key: str) -> T:
        """``registry``'s entry for ``name``; an unknown name is the registry's error, at ``key``."""
        try:
            return registry.get(name)
        except ConfigError as exc:
            raise self.fail(key, str(exc)) from None

    def keys(self, table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for k in table:
            if k not in allowed:
                raise self.fail(f"{where}{k}" if where else k, f"unknown key; allowed: {', '.join(allowed)}")

    def train_table(self, table: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        """A table of TrainConfig fields, each checked by the engine's schema."""
        out = {}
        for k, v in table.items():
            loc = f"{where}.{k}" if where else k
            if k not in allowed:
                raise self.fail(loc, f"unknown key; allowed: {', '.join(allowed)}")
            out[k] = check_field(TrainConfig, k, v, f"{self.source}: {loc}")
        return out



def check_names_and_options(suite: Any, ck: Checker) -> None:
    for t in suite.tasks:
        ck.known(DATASETS, t.data, f"tasks.{t.label}.data")
        ck.known(MODELS, t.model, f"tasks.{t.label}.model")
        for m in suite.methods:
            cfg = suite.task_config(t, m)
            where = f"tasks.{t.label} with methods.{m.label}"
            for key, allowed in (("data_kwargs", dataset_options(t.data)), ("model_kwargs", model_options(t.model))):
                unknown = sorted(set(cfg.get(key) or {}) - set(allowed))
                if unknown:
                    raise ck.fail(f"{where}: {key}", f"{(t.data if key == 'data_kwargs' else t.model)!r} has no option "
                                  f"{', '.join(map(repr, unknown))}; its options: {', '.join(allowed) or 'none'}")
            try:
                resolve_device(cfg.get("device", "cpu"))
            except ConfigError as exc:
                raise ck.fail(f"{where}: device", str(exc)) from None
    for m in suite.methods:
        try:
            build_method(m.spec, m.params)
        except ConfigError as exc:
            raise ck.fail(f"methods.{m.label}", str(exc)) from None
    for t in suite.tasks:
        if not t.compose:
            continue
        for m in suite.methods:
            cfg = suite.task_config(t, m)
            try:
                build_method(cfg["method"], cfg["method_params"])
            except ConfigError as exc:
                raise ck.fail(f"tasks.{t.label}.compose with methods.{m.label}", str(exc)) from None
