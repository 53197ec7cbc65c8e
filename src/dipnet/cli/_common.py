"""Small parsing helpers shared by the subcommands."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

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


def physical_cores() -> int:
    """Physical cores this process may use (hyperthread siblings counted once)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        pairs = set()
        core = phys = None
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                phys = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not line.strip() and core is not None:
                pairs.add((phys, core))
                core = phys = None
        if core is not None:
            pairs.add((phys, core))
        return max(1, min(usable, len(pairs) or usable))
    except OSError:
        return max(1, usable)


def busy_cores() -> int:
    """Cores other work keeps busy: the larger of the 1-minute load average and the processes
    runnable right now (/proc/loadavg, this one not counted), since the average lags behind a
    job that has just started."""
    busy = 0
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            fields = fh.read().split()
        busy = max(round(float(fields[0])), int(fields[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        if hasattr(os, "getloadavg"):
            busy = round(os.getloadavg()[0])
    return max(0, busy)


def default_threads() -> int:
    """Threads for one process: the physical cores not already busy, at least 1."""
    return max(1, physical_cores() - busy_cores())


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", default=None, metavar="N",
                   help="torch threads (default: the physical cores not busy with other work; 1 per worker in suites)")


def apply_threads(args: argparse.Namespace, workers: int = 1) -> int:
    """Set torch's thread count from ``--threads`` (or the default); warn in one line when
    ``threads x workers`` exceeds the idle physical cores. Returns the threads per worker."""
    import torch

    from ..schema import Limits, check

    chosen = getattr(args, "threads", None)
    idle = default_threads()  # read once: the load can change between two reads
    if chosen is None:
        threads = 1 if workers > 1 else idle
    else:
        threads = check(chosen, int, "--threads", Limits(ge=1))
    torch.set_num_threads(threads)
    if threads * workers > idle:
        print(f"dipnet: warning: {threads * workers} threads on {idle} idle physical core(s) ({busy_cores()} busy "
              f"with other work); each step will wait for the others: try --threads {max(1, idle // max(workers, 1))}",
              file=sys.stderr)
    return threads
