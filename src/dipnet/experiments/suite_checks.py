"""Checks of a suite file: its size and nesting before the TOML is read, the TOML tables' keys
and values (by the engine's schema), its number of runs before its sweeps are expanded, and the
parsed suite against the registries (dataset, model and method names, their options, devices,
every method hyperparameter), so that a mistake is reported when the suite loads, not when a run
starts."""
from __future__ import annotations

import json
import re
import sys
from typing import Any, Iterable, Mapping, TypeVar

from ..data import DATASETS, load_for_run
from ..data.base import dataset_options
from ..engine import TrainConfig, resolve_device
from ..errors import ConfigError, DipnetError
from ..methods import build_method
from ..models import MODELS, build_model
from ..models.registry import model_options
from ..registry import Registry
from ..schema import check_field

T = TypeVar("T")
MAX_RUNS = 100_000  # runs of a suite, even with a yes: a sweep past it is a typo, refused before it is expanded
MAX_SUITE_BYTES = 1 << 20  # a suite file is a page of TOML
MAX_TOML_DEPTH = 32  # arrays, tables and dotted keys inside each other (the TOML reader recurses per level)
_TOML_TOKENS = re.compile(  # strings (multi-line first), comments, then the characters that nest
    r'"""(?:\\.|[^\\])*?"""' r"|'''.*?'''" r'|"(?:\\.|[^"\\\n])*"' r"|'[^'\n]*'" r"|#[^\n]*|[][{}.=,\n]",
    re.DOTALL)


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


def check_data_and_models(specs: Iterable[Any]) -> None:
    """Load every distinct dataset and build every distinct model that the runs (RunSpecs) need,
    one at a time, so that a missing data file stops a suite before its first run, not after its
    other tasks trained. The error names the task."""
    infos: dict[str, Any] = {}
    built: set[str] = set()
    for spec in specs:
        cfg = spec.config
        data_kwargs, model_kwargs = cfg.get("data_kwargs") or {}, cfg.get("model_kwargs") or {}
        data_key = json.dumps([cfg["data"], data_kwargs], sort_keys=True, default=str)
        model_key = json.dumps([data_key, cfg["model"], model_kwargs], sort_keys=True, default=str)
        try:
            if data_key not in infos:
                infos[data_key] = load_for_run(cfg["data"], data_kwargs, cfg.get("seed", 0)).info
            if model_key not in built:
                build_model(cfg["model"], infos[data_key], **model_kwargs)
                built.add(model_key)
        except DipnetError as exc:
            raise type(exc)(f"task {spec.task!r} (checked before the suite's first run): {exc}") from None


def toml_depth(text: str) -> int:
    """The nesting of a TOML text (arrays, tables, dotted keys), read without parsing it: strings
    and comments are skipped, brackets are counted and the dots of keys (not of numbers) added."""
    stack: list[str] = []
    deepest = dots = 0
    in_key = True
    for match in _TOML_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            stack.append(token)
            in_key, dots = token == "{" or in_key, 0
        elif token in "]}":
            if stack:
                stack.pop()
            in_key = False
        elif token == "=":
            in_key = False
        elif token == ",":
            in_key, dots = bool(stack) and stack[-1] == "{", 0
        elif token == "\n":
            if not stack or stack[-1] == "{":
                in_key, dots = True, 0
        elif in_key:
            dots += 1
        deepest = max(deepest, len(stack) + dots)
    return deepest


def load_toml(text: str, where: str) -> dict[str, Any]:
    """The TOML text read, once its size and nesting are known to be a suite's."""
    if len(text) > MAX_SUITE_BYTES:
        raise ConfigError(f"{where}: {len(text):,} characters; a suite file has at most {MAX_SUITE_BYTES:,}")
    if toml_depth(text) > MAX_TOML_DEPTH:
        raise ConfigError(f"{where}: nests arrays, tables or dotted keys more than {MAX_TOML_DEPTH} deep; "
                          "a suite needs a few levels")
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError(
                f"{where}: reading TOML suites needs Python >= 3.11 or the 'tomli' package (pip install tomli)"
            ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None


def check_size(source: str, tasks: int, methods: int, seeds: int, max_runs: int) -> None:
    """ConfigError when tasks x method configurations x seeds exceeds ``max_runs``."""
    runs = tasks * methods * seeds
    if runs > max_runs:
        fix = ("pass --yes (dipnet compare) or max_runs= (load_suite, parse_suite) to run them all" if runs <= MAX_RUNS
               else f"a suite has at most {MAX_RUNS:,}; shrink its sweeps")
        raise ConfigError(f"{source}: the suite expands to {runs:,} runs ({tasks:,} tasks x {methods:,} method "
                          f"configurations x {seeds:,} seeds), more than {max_runs:,}; {fix}")
