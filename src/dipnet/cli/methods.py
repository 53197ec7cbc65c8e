"""``dipnet methods``: the method components and their hyperparameters."""
from __future__ import annotations

import argparse

from ..engine import method_fields, method_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "methods", help="list methods",
        description="List the method components; combine them with + (e.g. dipnet+sam).",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    items = method_names()
    width = max(map(len, items), default=0)
    for name, desc in items.items():
        print(f"{name:<{width}}  {desc}")
        if name != "erm":
            fields = method_fields(name)[name]
            if fields:
                print(" " * (width + 2) + "  ".join(f"--{k} {v}" for k, v in fields.items()))
    return 0
