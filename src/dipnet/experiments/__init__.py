"""Comparison suites: TOML suites, a SQLite run store, statistics over seeds and reports."""
from .compare import SuiteOutcome, engine_train, run_suite
from .executors import RayExecutor
from .instruments import get_measure, measure_names, register_measure
from .kinds import register_suite_kind, suite_kinds
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
    "PairedComparison",
    "RayExecutor",
    "ReportFiles",
    "RunRecord",
    "RunSpec",
    "RunStore",
    "Suite",
    "SuiteOutcome",
    "Summary",
    "engine_train",
    "get_measure",
    "format_text_table",
    "load_suite",
    "measure_names",
    "packaged_suites",
    "paired_compare",
    "paired_t_test",
    "parse_suite",
    "probe_cost",
    "register_measure",
    "register_suite_kind",
    "run_key",
    "run_suite",
    "suite_kinds",
    "summarize",
    "t_quantile",
    "task_tables",
    "write_report",
]
