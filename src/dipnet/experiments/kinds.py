"""Suite kinds: a suite file with a top-level ``kind = "NAME"`` is read by the parser registered
under NAME instead of the training-suite parser (the LLM fine-tuning suites, ``kind =
"finetune"``, registered by :mod:`dipnet.llm`). A kind's parser returns a
:class:`~dipnet.experiments.Suite` (or subclass) whose runs :func:`run_suite` trains with the
suite's ``train_fn`` when it has one."""
from __future__ import annotations

from typing import Any, Callable

from ..registry import Registry

__all__ = ["SUITE_KINDS", "register_suite_kind"]

SuiteParser = Callable[[dict[str, Any], str, str, bool], Any]  # (raw TOML, text, source, check_names) -> Suite
SUITE_KINDS: Registry[SuiteParser] = Registry("suite kind")
register_suite_kind = SUITE_KINDS.add  # register_suite_kind("name", parser, "one line")
