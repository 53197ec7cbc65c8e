"""``dipnet datasets``: the registered datasets."""
from __future__ import annotations

import argparse

from ..data import DATASETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="list datasets", description="List the registered datasets.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    items = DATASETS.list()
    width = max(map(len, items), default=0)
    for name, desc in items.items():
        print(f"{name:<{width}}  {desc}")
    return 0
