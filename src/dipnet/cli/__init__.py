"""The ``dipnet`` command line: a thin layer over the library.

Each subcommand lives in its own module ``dipnet.cli.<name>`` that defines
``register(subparsers)`` (adds its parser and ``set_defaults(func=run)``) and ``run(args) -> int``.
One error path: a mistake in the command, its files or its data (:class:`~dipnet.errors.DipnetError`,
a usage error, a file-system error) prints one line and exits 2; a run that fails (diverges)
exits 1; Ctrl-C and SIGTERM stop a run as "interrupted" and exit 130. No option is abbreviated.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
from types import FrameType
from typing import Any, Callable, NoReturn

from .._version import __version__
from ..errors import DipnetError, DivergenceError

COMMANDS = ("train", "eval", "datasets", "models", "methods", "measure", "robust", "compare", "report", "demo", "finetune")
PATHS = ("out", "store", "report", "db", "run_dir", "suite")  # options naming a file or folder: never empty


class Parser(argparse.ArgumentParser):
    """argparse without abbreviations ("--warm" is never "--warmup-epochs"), errors in one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dipnet",
        description="Train networks with DIPNet and the methods it is compared with; measure why they generalize.",
    )
    parser.add_argument("--version", action="version", version=f"dipnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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
    from ..engine import threads

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _refuse_empty_paths(parser, args)
    args.extra = extra
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `train --nproc` hands to torchrun
    previous = _sigterm_as_interrupt()
    try:
        with threads.restoring():  # the command's torch threads end with it (main() run in-process)
            return int(args.func(args) or 0)
    except DipnetError as exc:
        print(f"dipnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except DivergenceError as exc:
        print(f"dipnet {args.command}: stopped: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file the user named: permission, a folder where a file was meant, no space
        if isinstance(exc, BrokenPipeError):
            return 0
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"dipnet {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dipnet: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _refuse_empty_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--out ''`` is a usage error, not the current folder or a default one."""
    sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr,index]  # argparse's private subparser table, typed loosely
    for action in sub._actions:
        value = getattr(args, action.dest, None) if action.dest in PATHS else None
        if isinstance(value, str) and not value.strip():
            sub.error(f"{action.option_strings[-1] if action.option_strings else action.metavar or action.dest.upper()} "
                      "is empty; give a path")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _sigterm_as_interrupt() -> Callable[[int, FrameType | None], Any] | int | None:
    """SIGTERM (a scheduler's stop) handled like Ctrl-C: the run is recorded as interrupted."""
    try:
        return signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        return None


if __name__ == "__main__":
    sys.exit(main())
