"""``dipnet methods``: the method components, their hyperparameters and the flag that sets each."""
from __future__ import annotations

import argparse

from ..methods import METHODS
from ..schema import field_docs
from .train import trainer_flags


def cli_flag(component: str, field: str, taken: set[str]) -> str:
    """The ``dipnet train`` flag for a hyperparameter: ``--field``, or ``--component.field`` when
    a trainer option has that name (``taken``: the trainer's options win the bare name)."""
    bare = field.replace("_", "-")
    return f"--{component}.{bare}" if bare in taken else f"--{bare}"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "methods", help="list methods",
        description="List the method components with the flag, default and allowed values of each "
        "hyperparameter; combine components with + (e.g. dipnet+sam). A flag shared by two "
        "components of a spec is written --component.name (e.g. --dipnet.sigma).",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    items = METHODS.list()
    taken = trainer_flags()
    width = max(map(len, items), default=0)
    for name, desc in items.items():
        print(f"{name:<{width}}  {desc}")
        for field, (default, accepts, doc) in field_docs(METHODS.get(name)).items():
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            print(" " * (width + 2) + f"{cli_flag(name, field, taken)} {shown}   ({accepts}) {doc}")
    return 0
