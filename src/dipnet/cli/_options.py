"""A subcommand's options from a schema dataclass: one ``--flag`` per field, its help from the
field's doc and limits, each value given checked by the schema (an error names the flag)."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..engine import TrainConfig
from ..schema import check_field, field_docs, param


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_options(p: argparse.ArgumentParser, cls: type) -> None:
    """A ``--flag`` for every field of dataclass ``cls`` (a false-by-default bool is a switch); the
    parser keeps ``cls`` as its ``options`` default, which :func:`read_options` reads back."""
    for name, (default, accepts, doc) in field_docs(cls).items():
        doc = doc.replace("%", "%%")
        if default is False:
            p.add_argument(flag(name), dest=name, action="store_true", help=doc)
            continue
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        given = "" if default is None else f" (default {shown})"
        p.add_argument(flag(name), dest=name, default=None, metavar="VALUE", help=f"{doc}: {accepts}{given}")
    p.set_defaults(options=cls)


def read_options(args: argparse.Namespace) -> Any:
    """The subcommand's options dataclass from the values given (the rest keep their defaults),
    each coerced and checked by the schema: ``--n must be an integer >= 1, not '0'``."""
    cls = args.options
    given = {f.name: check_field(cls, f.name, getattr(args, f.name), flag(f.name))
             for f in dataclasses.fields(cls) if getattr(args, f.name) is not None}
    return cls(**given)


def seed_param(doc: str) -> Any:
    """A seed field within the range torch accepts (TrainConfig's seed limits, stated there)."""
    seed = {f.name: f for f in dataclasses.fields(TrainConfig)}["seed"]
    return param(0, limits=seed.metadata["limits"], doc=doc)
