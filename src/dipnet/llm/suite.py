"""LLM fine-tuning suites: the suite format with ``kind = "finetune"``, trained by :func:`finetune_train`.

The same TOML layout as a training suite (``name``, ``description``, ``seeds``, ``baseline``,
``[train]``, ``[tasks.X]``, ``[methods.X]``), with :class:`~dipnet.llm.FinetuneConfig` fields in
place of the engine's::

    kind = "finetune"
    name = "llm"
    seeds = [0, 1, 2]
    baseline = "sft"

    [train]                        # FinetuneConfig fields for every run (not task/method/seed)
    model = "smollm2-135m"
    steps = 120

    [tasks.chain_sum]              # task = the reasoning-gym name (default: the table's name)
    task_kwargs = { min_terms = 2, max_terms = 3 }

    [methods.sft]
    [methods.dipnet-m2]
    method = "dipnet"              # default: the table's name; any method spec that applies to tokens
    params = { trajectories = 2 }  # the method's hyperparameters (other FinetuneConfig fields: in the table)

Each (task, method, seed) is a :class:`~dipnet.experiments.RunSpec` whose config is the full
FinetuneConfig (defaults filled in, so a changed default is a new run); its final record has
``test_acc`` = exact match, so the store, tables, paired tests and reports work unchanged.
Registered as a suite kind when :mod:`dipnet.llm` is imported.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..engine import RunResult
from ..experiments import RunSpec, Suite, register_suite_kind
from ..experiments.suite import MethodEntry, TaskEntry, suite_baseline, suite_header
from ..experiments.suite_checks import Checker
from ..schema import check, check_field
from .config import FinetuneConfig
from .runner import Finetuner, llm_method
from .models import LLMS
from .tasks import TASKS

__all__ = ["FinetuneSuite", "finetune_train", "parse_finetune_suite"]

TOP_KEYS = ("kind", "name", "description", "seeds", "baseline", "train", "tasks", "methods")
SET_BY_SUITE = ("task", "method", "method_params", "seed", "out", "progress")


def finetune_train(config: dict[str, Any], run_dir: str, callbacks: Sequence[Any] = ()) -> RunResult:
    """The suite's ``train_fn``: one fine-tuning run with its record and checkpoints in ``run_dir``
    (``callbacks``: the loop's, as :class:`~dipnet.llm.Finetuner` takes them)."""
    return Finetuner(FinetuneConfig.from_dict({**config, "out": run_dir, "progress": "none"}), callbacks=callbacks).fit()


@dataclasses.dataclass
class FinetuneSuite(Suite):
    """A parsed LLM suite; ``expand()`` gives one run per (task, method, seed)."""

    train_fn = staticmethod(finetune_train)

    def task_config(self, task: TaskEntry, method: MethodEntry) -> dict[str, Any]:
        return {**self.train, **task.overrides, "task": task.data, **method.overrides, "method": method.spec,
                "method_params": method.params}

    def expand(self, cost_fn: Any = None) -> list[RunSpec]:
        runs: list[RunSpec] = []
        seen: dict[str, str] = {}
        for task in self.tasks:
            for m in self.methods:
                for seed in self.seeds:
                    cfg = FinetuneConfig.from_dict({**self.task_config(task, m), "seed": seed}).to_dict()
                    cfg.pop("out"), cfg.pop("progress")
                    spec = RunSpec(self.name, task.label, m.label, seed, cfg)
                    where = f"{task.label}/{m.label}/seed {seed}"
                    if spec.key in seen:
                        raise ConfigError(f"{self.source}: runs {seen[spec.key]} and {where} have identical configs; "
                                          "give the methods different settings or remove one")
                    seen[spec.key] = where
                    runs.append(spec)
        return runs


def _fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(FinetuneConfig) if f.name not in SET_BY_SUITE)


def _table(table: Any, where: str, source: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {where}: must be a table")
    out = {}
    for key, value in table.items():
        if key not in allowed:
            raise ConfigError(f"{source}: {where}.{key}: unknown key; allowed: {', '.join(allowed)}")
        out[key] = check_field(FinetuneConfig, key, value, f"{source}: {where}.{key}")
    return out


def parse_finetune_suite(raw: dict[str, Any], text: str, source: str, check_names: bool = True) -> FinetuneSuite:
    """Parse and check a ``kind = "finetune"`` suite (every run's whole config is validated)."""
    ck = Checker(source)
    ck.keys(raw, TOP_KEYS, "")
    name, description, seeds = suite_header(raw, ck, FinetuneConfig)
    fields = _fields()
    train = _table(raw.get("train", {}), "train", source, fields)

    tasks_raw = raw.get("tasks")
    if not isinstance(tasks_raw, dict) or not tasks_raw:
        raise ConfigError(f"{source}: tasks: the suite needs at least one [tasks.NAME] table")
    tasks = []
    for label, t in tasks_raw.items():
        t = dict(t) if isinstance(t, dict) else t
        task = t.pop("task", label) if isinstance(t, dict) else label
        task = check(task, str, f"{source}: tasks.{label}.task")
        tasks.append(TaskEntry(label, task, str(train.get("model", "")), _table(t, f"tasks.{label}", source, fields)))

    methods_raw = raw.get("methods")
    if not isinstance(methods_raw, dict) or not methods_raw:
        raise ConfigError(f"{source}: methods: the suite needs at least one [methods.NAME] table (e.g. [methods.sft])")
    methods = []
    for label, m in methods_raw.items():
        m = dict(m) if isinstance(m, dict) else m
        if not isinstance(m, dict):
            raise ConfigError(f"{source}: methods.{label}: must be a table")
        spec = check_field(FinetuneConfig, "method", m.pop("method", label), f"{source}: methods.{label}.method")
        params = m.pop("params", {})
        if not isinstance(params, dict):
            raise ConfigError(f"{source}: methods.{label}.params: must be a table")
        try:
            llm_method(FinetuneConfig(method=spec, method_params=params))
        except ConfigError as exc:
            raise ConfigError(f"{source}: methods.{label}: {exc}") from None
        methods.append(MethodEntry(label, spec, params, _table(m, f"methods.{label}", source, fields)))
    baseline = suite_baseline(raw, ck, [m.label for m in methods])

    suite = FinetuneSuite(name, source, text, seeds, baseline, "steps", (), train, tasks, methods, description)
    for t in tasks:
        for m in methods:
            try:
                cfg = FinetuneConfig.from_dict({**suite.task_config(t, m), "seed": seeds[0]})
            except ConfigError as exc:
                raise ConfigError(f"{source}: tasks.{t.label} with methods.{m.label}: {exc}") from None
            if check_names:
                _check_names(cfg, f"{source}: tasks.{t.label}")
    return suite


def _check_names(cfg: FinetuneConfig, where: str) -> None:
    try:
        if not Path(cfg.model).is_dir():
            LLMS.get(cfg.model)
        TASKS.get(cfg.task)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


register_suite_kind("finetune", parse_finetune_suite, "LoRA fine-tuning of a causal LM on reasoning-gym tasks (dipnet.llm)")
