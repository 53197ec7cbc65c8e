"""``dipnet models``: the registered models."""
from __future__ import annotations

import argparse

from ..models import MODELS, model_recipe


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models",
                       description="List the registered models with the training recipe `dipnet train` follows for "
                                   "the options not given.")
    p.set_defaults(func=run)


def recipe_text(recipe: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in recipe.items())


def run(args: argparse.Namespace) -> int:
    items = MODELS.list()
    width = max(map(len, items), default=0)
    for name, desc in items.items():
        print(f"{name:<{width}}  {desc}")
        print(" " * (width + 2) + f"recipe: {recipe_text(model_recipe(name))}")
    return 0
