"""``dipnet demo``: the main job on data that needs no download.

Runs the shipped ``default`` suite (ERM, DIPNet, SAM, m-RWP and input noise on the MNIST-1D
reference MLP and CNN, 3 seeds, each method's main knob chosen on validation from 3 values),
prints the table and writes the report. It resumes: run it
again and it only trains what is missing.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from ..schema import param
from . import compare
from ._common import add_threads_argument
from ._options import add_options, read_options


@dataclass
class DemoOptions:
    """The options of ``dipnet demo``, limits beside the fields."""

    store: str = param("runs/demo.sqlite", doc="run store")
    report: str = param("report", doc="report folder")
    workers: int = param(min(2, os.cpu_count() or 1), ge=1, doc="parallel worker processes")
    fresh: bool = param(False, doc="retrain everything instead of resuming")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the default comparison on MNIST-1D",
        description="Train ERM, DIPNet, SAM, m-RWP and input noise on the MNIST-1D reference MLP and CNN "
        "(3 seeds, generated locally; each method's main knob chosen on validation from 3 values), print "
        "accuracy per run and mean ± 95% CI per method, and write a report.",
    )
    add_options(p, DemoOptions)
    add_threads_argument(p)
    p.set_defaults(func=run)


def compare_args(opts: DemoOptions, threads: str | None) -> argparse.Namespace:
    """The ``dipnet compare default ...`` command line the demo stands for, parsed by compare's
    own parser (so every option compare has gets its default)."""
    parser = argparse.ArgumentParser(prog="dipnet")
    compare.register(parser.add_subparsers())
    argv = ["compare", "default", "--store", opts.store, "--workers", str(opts.workers), "--report", opts.report,
            "--fresh" if opts.fresh else "--resume"]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    opts: DemoOptions = read_options(args)
    os.makedirs(os.path.dirname(opts.store) or ".", exist_ok=True)
    return compare.run(compare_args(opts, args.threads))
