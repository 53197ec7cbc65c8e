"""Suite kinds: a suite file with a top-level ``kind = "NAME"`` is read by the parser registered
under NAME instead of the training-suite parser (the LLM fine-tuning suites, ``kind =
"finetune"``, registered by :mod:`dipnet.llm`). A kind's parser returns a
:class:`~dipnet.experiments.Suite` (or subclass) whose runs :func:`run_suite` trains with the
suite's ``train_fn`` when it has one."""
from __future__ import annotations

from typing import Any, Callable

from ..errors import ConfigError

__all__ = ["register_suite_kind", "suite_kind", "suite_kinds"]

SuiteParser = Callable[[dict[str, Any], str, str, bool], Any]  # (raw TOML, text, source, check_names) -> Suite
_KINDS: dict[str, SuiteParser] = {}


def register_suite_kind(name: str, parser: SuiteParser) -> None:
    _KINDS[name] = parser


def suite_kinds() -> list[str]:
    return sorted(_KINDS)


def suite_kind(name: Any, source: str) -> SuiteParser:
    if name not in _KINDS:
        raise ConfigError(f"{source}: kind: unknown suite kind {name!r}; registered: {', '.join(suite_kinds()) or 'none'} "
                          "(the finetune kind is registered by importing dipnet.llm)")
    return _KINDS[name]
