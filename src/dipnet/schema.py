"""One declarative hyperparameter schema: each limit stated once, beside its dataclass field.

A field declares its type by annotation and its limits with :func:`param`::

    @dataclass
    class SAMMethod(Component):
        rho: float = param(0.05, gt=0, doc="radius of the ascent step")

:func:`validate` (run by :class:`Validated.__post_init__`) coerces every field once by its type
(CLI strings such as ``"0.1"``, ``"true"``, ``"a,b"``, ``"none"``; TOML and JSON values) and checks
it against its limits; a bad value is one :class:`~dipnet.errors.ConfigError` naming the field,
the value and what is allowed. The CLI and the TOML suites pass raw values to it; inside
:func:`typed_values` (the suites) a string is not read as a number or a boolean.

The same one line for the rest of the boundary: :func:`check_type` for the public API's
arguments (``train({...})``, ``strip("x")``), :func:`check_memory` for sizes bounded by what the
machine has free (:func:`available_memory`).

Why by hand: pydantic would check and coerce, but its errors are multi-line reports, it has no
rule for ``"a,b"`` as a tuple, and components would stop being plain dataclasses that users
subclass in a few lines. Field metadata read by one checker is about 150 lines and needs no
dependency.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Literal, Union

from .errors import ConfigError

__all__ = ["Limits", "Validated", "available_memory", "check", "check_field", "check_memory", "check_type", "choice",
           "describe", "field_docs", "override", "param", "typed_values", "validate"]

_MISSING = dataclasses.MISSING
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_TYPED: contextvars.ContextVar[bool] = contextvars.ContextVar("dipnet_typed_values", default=False)


@contextlib.contextmanager
def typed_values() -> Iterator[None]:
    """Within it, values come typed (TOML, JSON): a string is never read as a number or a boolean
    (``seeds = [0, "1"]`` is an error), as it is from the command line (``--epochs 3``)."""
    token = _TYPED.set(True)
    try:
        yield
    finally:
        _TYPED.reset(token)


@dataclass(frozen=True)
class Limits:
    """Bounds of a number (or of every number of a tuple): ``gt`` > , ``ge`` >=, ``lt`` <, ``le`` <=."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def holds(self, v: float) -> bool:
        return ((self.gt is None or v > self.gt) and (self.ge is None or v >= self.ge)
                and (self.lt is None or v < self.lt) and (self.le is None or v <= self.le))

    def describe(self) -> str:
        lo = self.gt if self.gt is not None else self.ge
        hi = self.lt if self.lt is not None else self.le
        if lo is not None and hi is not None:
            return (f"in {'(' if self.gt is not None else '['}{_num(lo)}, "
                    f"{_num(hi)}{')' if self.lt is not None else ']'}")
        if lo is not None:
            return f"{'>' if self.gt is not None else '>='} {_num(lo)}"
        return f"{'<' if self.lt is not None else '<='} {_num(hi)}" if hi is not None else ""

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.gt, self.ge, self.lt, self.le))


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def param(default: Any = _MISSING, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
          le: float | None = None, limits: Limits | None = None, doc: str = "",
          default_factory: Any = _MISSING) -> Any:
    """A dataclass field with its limits and a one-line ``doc`` (shown by ``dipnet methods`` and ``--help``)."""
    meta = {"limits": limits or Limits(gt, ge, lt, le), "doc": doc}
    if default_factory is not _MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def override(cls: type, name: str, default: Any) -> Any:
    """The field ``name`` of dataclass ``cls`` with another default and the same limits and doc
    (ASAM's rho, noise-layers' prior): a subclass changes a default without restating a limit."""
    found = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field(default=default, metadata=found.metadata)


def _limits(f: dataclasses.Field) -> Limits:
    return f.metadata.get("limits") or Limits()


def _hints(cls: type) -> dict[str, Any]:
    cached = cls.__dict__.get("_schema_hints")
    if cached is None:
        cached = typing.get_type_hints(cls)
        type.__setattr__(cls, "_schema_hints", cached)
    return cached


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (annotation, False)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(annotation)):
            return args[0], True
    return annotation, False


def describe(annotation: Any, limits: Limits = Limits()) -> str:
    """What a field accepts, in words: "a number > 0", "an integer >= 1 or None", "one of sgd, adam"."""
    inner, optional = _optional(annotation)
    origin = typing.get_origin(inner)
    bound = f" {limits.describe()}" if limits else ""
    if origin is Literal:
        text = "one of " + ", ".join(map(str, typing.get_args(inner)))
    elif inner is bool:
        text = "true or false"
    elif inner in (int, float) and limits == Limits(gt=0):
        text = "a positive integer" if inner is int else "a positive number"
    elif inner is int:
        text = f"an integer{bound}"
    elif inner is float:
        text = f"a number{bound}"
    elif inner is str:
        text = "a string"
    elif origin in (tuple, list):
        item = (typing.get_args(inner) or (Any,))[0]
        if typing.get_origin(item) is Literal:
            text = "a list of names from " + ", ".join(map(str, typing.get_args(item)))
        else:
            text = f"a list of {'integers' if item is int else 'numbers' if item is float else 'names'}{bound}"
    elif origin is dict or inner is dict:
        text = "a table of options"
    else:
        text = getattr(inner, "__name__", str(inner))
    return text + (" or none" if optional else "")


class _Bad(Exception):
    pass


def _scalar(value: Any, kind: Any) -> Any:
    if isinstance(value, str) and kind in (bool, int, float) and _TYPED.get():
        raise _Bad
    if typing.get_origin(kind) is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            raise _Bad
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise _Bad
    if kind is int:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise _Bad from None
        raise _Bad
    if kind is float:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, (int, float)):
            try:
                out = float(value)
            except OverflowError:
                raise _Bad from None
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                raise _Bad from None
        else:
            raise _Bad
        if not math.isfinite(out):
            raise _Bad
        return out
    if kind is str:
        if not isinstance(value, str):
            raise _Bad
        return value
    return value


def check(value: Any, annotation: Any, where: str, limits: Limits = Limits()) -> Any:
    """``value`` coerced to ``annotation`` and checked against ``limits``; ConfigError naming ``where`` otherwise."""
    inner, optional = _optional(annotation)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{where} must be {describe(annotation, limits)}, not None")
    origin = typing.get_origin(inner)
    try:
        if origin in (tuple, list):
            item = (typing.get_args(inner) or (Any,))[0]
            items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise _Bad
            out: Any = [_scalar(v, item) for v in items]
            if limits and any(not limits.holds(v) for v in out):
                raise _Bad
            return tuple(out) if origin is tuple else out
        if origin is dict or inner is dict:
            if not isinstance(value, dict):
                raise _Bad
            return dict(value)
        out = _scalar(value, inner)
        if limits and not limits.holds(out):
            raise _Bad
        return out
    except _Bad:
        quoted = " (a quoted string: write numbers and booleans without quotes)" if _TYPED.get() and _has_str(value) else ""
        raise ConfigError(f"{where} must be {describe(annotation, limits)}, not {value!r}{quoted}") from None


def _has_str(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value))


def validate(obj: Any, owner: str = "") -> None:
    """Coerce and check every field of dataclass instance ``obj`` in place (frozen ones too)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        where = f"{owner}.{f.name}" if owner else f.name
        value = check(getattr(obj, f.name), hints.get(f.name, Any), where, _limits(f))
        object.__setattr__(obj, f.name, value)


def field_docs(cls: type) -> dict[str, tuple[Any, str, str]]:
    """``{field: (default, what it accepts, doc)}`` of a dataclass, for help texts."""
    hints = _hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not _MISSING else (
            f.default_factory() if f.default_factory is not _MISSING else None)
        out[f.name] = (default, describe(hints.get(f.name, Any), _limits(f)), f.metadata.get("doc", ""))
    return out


class Validated:
    """Mixin for dataclasses: fields are validated on construction; ``_check()`` adds rules
    between fields. ``_owner()`` names the instance in errors (``"sam"`` -> ``sam.rho``)."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # set by @dataclass on each subclass

    def __post_init__(self) -> None:
        validate(self, self._owner())
        self._check()

    def _owner(self) -> str:
        return ""

    def _check(self) -> None:
        pass


def check_field(cls: type, name: str, value: Any, where: str) -> Any:
    """``value`` checked as dataclass ``cls``'s field ``name`` would be (errors name ``where``)."""
    found = {f.name: f for f in dataclasses.fields(cls)}[name]
    return check(value, _hints(cls).get(name, Any), where, _limits(found))


def choice(value: Any, where: str, allowed: Any) -> Any:
    """``value`` if it is one of ``allowed`` (a sequence, or a dict's keys); ConfigError otherwise."""
    return check(value, Literal[tuple(allowed)], where)


def _kind_name(kind: Any) -> str:
    if kind is None:
        return "None"
    if kind is callable:
        return "a function"
    name = getattr(kind, "__qualname__", str(kind))
    if getattr(kind, "__module__", "").startswith("torch"):
        name = "nn.Module" if name == "Module" else f"torch.{name}"
    return f"{'an' if name[0].lower() in 'aeiou' or name.startswith('nn.') else 'a'} {name}"


def check_type(value: Any, kinds: Any, where: str, fix: str = "") -> Any:
    """``value`` if it is an instance of one of ``kinds`` (types, ``None``, or ``callable`` for any
    function); otherwise one :class:`ConfigError` naming ``where``, what it must be and ``fix``.
    The public API checks its arguments with this at the boundary."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    for kind in kinds:
        if (value is None if kind is None else callable(value) if kind is callable else isinstance(value, kind)):
            return value
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    must = " or ".join(_kind_name(k) for k in kinds)
    raise ConfigError(f"{where} must be {must}, not {type(value).__name__} {shown}" + (f"; {fix}" if fix else ""))


def available_memory(device: Any = None) -> int | None:
    """Bytes free for this process on ``device`` (None or a CPU: MemAvailable of /proc/meminfo; a
    CUDA device: its free memory); None where unknown."""
    kind = getattr(device, "type", str(device) if device is not None else "cpu").split(":")[0]
    if kind == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    if kind != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need: int, what: str, fix: str, device: Any = None) -> None:
    """ConfigError when ``need`` bytes (``what`` says for what) exceed the memory free on ``device``."""
    free = available_memory(device)
    if free is not None and need > free:
        raise ConfigError(f"{what} needs about {need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free on "
                          f"{'this machine' if device is None or str(device) == 'cpu' else device}; {fix}")
