"""``dipnet models``: the registered models."""
from __future__ import annotations

import argparse

from ..models import list_models


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models", description="List the registered models.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    items = list_models()
    width = max(map(len, items), default=0)
    for name, desc in items.items():
        print(f"{name:<{width}}  {desc}")
    return 0
