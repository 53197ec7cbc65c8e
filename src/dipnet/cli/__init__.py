"""The ``dipnet`` command line: a thin layer over the library.

Each subcommand lives in its own module ``dipnet.cli.<name>`` that defines
``register(subparsers)`` (adds its parser and ``set_defaults(func=run)``) and ``run(args) -> int``.
Errors the user can fix (:class:`~dipnet.errors.DipnetError`) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import sys

from .._version import __version__
from ..errors import DipnetError

COMMANDS = ("train", "eval", "datasets", "models", "methods", "measure", "robust", "compare", "report", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dipnet", allow_abbrev=False,
        description="Train networks with DIPNet and the methods it is compared with; measure why they generalize.",
    )
    parser.add_argument("--version", action="version", version=f"dipnet {__version__}")
    # no abbreviations anywhere: "--warm" is never taken for "--warmup-epochs"
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `train --nproc` hands to torchrun
    try:
        return int(args.func(args) or 0)
    except DipnetError as exc:
        print(f"dipnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dipnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
