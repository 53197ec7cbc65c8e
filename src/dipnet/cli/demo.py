"""``dipnet demo``: the main job on data that needs no download.

Runs the shipped ``default`` suite (ERM, DIPNet, SAM, m-RWP and input noise on the MNIST-1D
reference MLP and CNN, 3 seeds, each method's main knob chosen on validation from 3 values),
prints the table and writes the report. It resumes: run it
again and it only trains what is missing.
"""
from __future__ import annotations

import argparse
import os

from . import compare
from ._common import add_threads_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the default comparison on MNIST-1D",
        description="Train ERM, DIPNet, SAM, m-RWP and input noise on the MNIST-1D reference MLP and CNN "
        "(3 seeds, generated locally; each method's main knob chosen on validation from 3 values), print "
        "accuracy per run and mean ± 95% CI per method, and write a report.",
    )
    p.add_argument("--store", default="runs/demo.sqlite", help="run store (default runs/demo.sqlite)")
    p.add_argument("--report", default="report", help="report folder (default report/)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--fresh", action="store_true", help="retrain everything instead of resuming")
    add_threads_argument(p)
    p.set_defaults(func=run)


def compare_args(args: argparse.Namespace) -> argparse.Namespace:
    """The ``dipnet compare default ...`` command line the demo stands for, parsed by compare's
    own parser (so every option compare has gets its default)."""
    parser = argparse.ArgumentParser(prog="dipnet")
    compare.register(parser.add_subparsers())
    argv = ["compare", "default", "--store", args.store, "--workers", str(args.workers), "--report", args.report,
            "--fresh" if args.fresh else "--resume"]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    os.makedirs(os.path.dirname(args.store) or ".", exist_ok=True)
    return compare.run(compare_args(args))
