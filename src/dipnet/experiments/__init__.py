"""Comparison suites: TOML suites, a SQLite run store, statistics over seeds and reports."""
from .compare import SuiteOutcome, engine_train, run_suite
from .executors import RayExecutor
from .instruments import INSTRUMENTS, register_measure
from .kinds import SUITE_KINDS, register_suite_kind
from .report import ReportFiles, write_report
from .tables import format_text_table, task_tables
from .stats import (PairedComparison, Summary, adjust, effect_size, holm, paired_compare, paired_t_test,
                    resolvable_difference, sign_flip_test, summarize, t_quantile)
from .store import RunRecord, RunStore
from .budget import probe_cost
from .runspec import RunSpec, run_key
from .suite import Suite, load_suite, packaged_suites, parse_suite

__all__ = [
    "adjust",
    "effect_size",
    "holm",
    "resolvable_difference",
    "sign_flip_test",
    "INSTRUMENTS",
    "PairedComparison",
    "RayExecutor",
    "ReportFiles",
    "RunRecord",
    "RunSpec",
    "RunStore",
    "SUITE_KINDS",
    "Suite",
    "SuiteOutcome",
    "Summary",
    "engine_train",
    "format_text_table",
    "load_suite",
    "packaged_suites",
    "paired_compare",
    "paired_t_test",
    "parse_suite",
    "probe_cost",
    "register_measure",
    "register_suite_kind",
    "run_key",
    "run_suite",
    "summarize",
    "t_quantile",
    "task_tables",
    "write_report",
]
