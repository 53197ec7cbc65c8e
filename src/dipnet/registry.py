"""Named entries of one kind: the one registry pattern behind datasets, models, methods, suite
instruments, suite kinds, language models and fine-tuning tasks.

A :class:`Registry` maps names to entries (a loader, a builder, a component class, ...), each with
a one-line description and optional tags. Names are listed sorted; a name is registered once
(a second registration is refused: remove the first); an unknown name is one
:func:`~dipnet.errors.unknown_name` error, ``unknown KIND 'name'; choose one of: ...``, whatever
the registry. ``fill`` registers entries that come from an optional package on first use
(reasoning-gym's tasks), so that importing the registry imports nothing.
"""
from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, TypeVar

from .errors import ConfigError, unknown_name

__all__ = ["Registry"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Entry(Generic[T]):
    value: T
    description: str
    tags: frozenset[str]


class Registry(Generic[T]):
    """Entries of one ``kind`` by name (``kind`` names them in errors: ``"dataset"``)."""

    def __init__(self, kind: str, *, fill: Callable[[Registry[T]], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, _Entry[T]] = {}
        self._fill = fill

    def _table(self) -> dict[str, _Entry[T]]:
        fill, self._fill = self._fill, None
        if fill is not None:
            try:
                fill(self)
            except BaseException:
                self._fill = fill  # retried on the next use (e.g. once the package is installed)
                raise
        return self._entries

    def add(self, name: str, value: T, description: str = "", tags: Iterable[str] = ()) -> T:
        """Register ``value`` under ``name``; returns ``value``."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"a {self.kind} needs a non-empty name, not {name!r}")
        table = self._table()
        if name in table:
            raise ConfigError(f"{self.kind} {name!r} is already registered; choose another name "
                              f"(or remove the first with .remove({name!r}))")
        table[name] = _Entry(value, description, frozenset(tags))
        return value

    def register(self, name: str, description: str = "", *, tags: Iterable[str] = ()) -> Callable[[T], T]:
        """Decorator form of :meth:`add`: ``@REGISTRY.register("name", "one line")``."""
        def deco(value: T) -> T:
            return self.add(name, value, description, tags)

        return deco

    def remove(self, name: str) -> T:
        """Take ``name`` out of the registry; returns its entry."""
        self.get(name)
        return self._table().pop(name).value

    def get(self, name: str) -> T:
        """The entry registered under ``name``; an unknown name is a ConfigError listing the known ones."""
        table = self._table()
        if not isinstance(name, str) or name not in table:
            raise unknown_name(self.kind, str(name), builtins.list(table))
        return table[name].value

    def __contains__(self, name: object) -> bool:
        return name in self._table()

    def names(self) -> builtins.list[str]:
        """Every registered name, sorted."""
        return sorted(self._table())

    def list(self) -> dict[str, str]:
        """``{name: description}``, sorted by name."""
        table = self._table()
        return {name: table[name].description for name in sorted(table)}

    def filter(self, predicate: Callable[[T], bool] | None = None, *, tag: str | None = None) -> builtins.list[str]:
        """The sorted names whose entry satisfies ``predicate`` and carries ``tag`` (each when given)."""
        table = self._table()
        return [name for name in sorted(table)
                if (tag is None or tag in table[name].tags) and (predicate is None or predicate(table[name].value))]
