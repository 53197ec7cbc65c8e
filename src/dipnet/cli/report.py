"""``dipnet report``: Markdown and self-contained HTML report from a run store."""
from __future__ import annotations

import argparse

from ..errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a Markdown + HTML report from a run store",
        description="Tables (mean ± 95% CI over seeds, paired comparison with the baseline), figures, "
        "environment and suite text, from the runs of `dipnet compare`.",
    )
    p.add_argument("db", nargs="?", metavar="STORE", help="run store (same as --store)")
    p.add_argument("--store", default=None, help="SQLite run store written by `dipnet compare` (default: runs.sqlite)")
    p.add_argument("-o", "--out", default="report", help="output directory (default: report/)")
    p.add_argument("--suite", default=None, help="only this suite of the store")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments import write_report

    if args.db and args.store and args.db != args.store:
        raise ConfigError(f"two stores given ({args.db} and --store {args.store}); give one")
    files = write_report(args.db or args.store or "runs.sqlite", args.out, suite=args.suite)
    print(f"markdown: {files.markdown}")
    print(f"html: {files.html}")
    return 0
