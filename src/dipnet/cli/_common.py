"""Small parsing helpers shared by the subcommands."""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..engine import threads
from ..errors import ConfigError


def parse_value(text: str) -> Any:
    """``3`` -> 3, ``0.1`` -> 0.1, ``true`` -> True, ``none`` -> None, ``a,b`` -> list, else the string
    (for dataset and model options, whose loaders check their own arguments)."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if "," in text:
        return [parse_value(part) for part in text.split(",") if part.strip()]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignments(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``["width=64", "depth=3"]`` -> ``{"width": 64, "depth": 3}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


def parse_method_options(extra: list[str]) -> dict[str, str]:
    """The ``--name VALUE`` / ``--name=VALUE`` pairs that are not trainer options: method
    hyperparameters, passed raw (each component's schema coerces them)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"unexpected argument {tok!r}; method hyperparameters are given as --name VALUE")
        key = tok[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(extra) or extra[i + 1].startswith("--"):
                raise ConfigError(f"option --{key} needs a value (e.g. --{key} 0.1)")
            value = extra[i + 1]
            i += 2
        out[key] = value
    return out


def percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", default=None, metavar="N",
                   help="torch threads of each process (default: the idle physical cores, shared among the "
                        f"processes; at most {threads.FACTOR} x the logical cores)")


def apply_threads(args: argparse.Namespace, processes: int | None = None) -> int:
    """Set this command's torch threads from ``--threads`` by the threads policy
    (:mod:`dipnet.engine.threads`, which warns once if the processes oversubscribe the cores)."""
    return threads.apply(getattr(args, "threads", None), processes)
