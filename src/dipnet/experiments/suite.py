"""Comparison suites: a TOML file that names tasks, methods, seeds and a budget rule.

A suite expands into one :class:`RunSpec` per (task, method, seed); each spec carries the
keyword arguments of :class:`dipnet.engine.TrainConfig` (all but ``out``) and a stable key,
the hash of that config, so that a run store can tell which runs are already done.

Format (every key is checked; unknown keys are errors naming the file and the key)::

    name = "default"
    seeds = [0, 1, 2]
    baseline = "erm"              # the method every other one is compared with
    budget = "epochs"             # or "example_grads": a method that costs 2x per batch
                                  # gets half the epochs (cost measured or given as `cost`)
    measure = []                  # instruments run after training (see instruments.register_measure)

    [train]                       # defaults for every run: any TrainConfig field but `out`
    epochs = 20
    lr = 1e-2

    [tasks.mlp]                   # data and model may be lists: their product is expanded
    data = "mnist1d"
    model = "mlp"
    epochs = 30                   # a task may override any [train] field
    compose = "fgsm-examples"     # optional: components added to every method of this task
    compose_params = { "fgsm-examples.eps" = 0.1 }

    [methods.erm]
    [methods.sam]
    params = { rho = 0.05 }       # method hyperparameters (checked by build_method)
    sweep = { rho = [0.02, 0.1] } # optional: one method entry per value (product over keys)
    lr = 5e-3                     # a method may override [train] fields too
    method = "sam"                # the method spec; defaults to the table's name

    [[hypotheses]]                # optional: the study's primary hypotheses (see .hypotheses)
    a = "sam"
    b = "erm"
    direction = "greater"         # or "less", "two-sided"; task = "mlp" for one task; margin = 0.5 (TOST)
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from ..data.base import run_seeded
from ..engine import TrainConfig
from ..errors import ConfigError
from ..schema import Limits, check, check_field, typed_values
from .budget import checked_cost, probe_cost, tuning_grid
from .hypotheses import Hypothesis, parse_hypotheses
from .instruments import INSTRUMENTS
from .kinds import SUITE_KINDS
from .runspec import RunSpec, resolved_hyperparameters
from .suite_checks import MAX_RUNS, MAX_SUITE_BYTES, Checker, check_names_and_options, check_size, load_toml

BUDGETS = ("epochs", "example_grads")
TOP_KEYS = ("name", "description", "seeds", "baseline", "budget", "tune", "measure", "train", "tasks", "methods",
            "hypotheses")  # hypotheses: read by parse_suite for every kind of suite
METHOD_KEYS = ("method", "params", "sweep", "cost")
TASK_KEYS = ("data", "model")
COMPOSE_KEYS = ("compose", "compose_params")
SET_BY_SUITE = ("data", "model", "method", "method_params", "seed", "out", "progress")
MAX_SEEDS = 1000
LARGE_SUITE = 1000  # runs: a larger suite needs an explicit yes (max_runs=, `dipnet compare --yes`)
# The core training fields every run's config (and so its key) carries; a run's key stays the
# same when the engine grows an option.
CORE_TRAIN_FIELDS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "data_kwargs", "model_kwargs")


def train_fields() -> tuple[str, ...]:
    """TrainConfig fields a suite may set ([train], tasks, methods): all but data/model/method/seed/out."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.init and f.name not in SET_BY_SUITE)


def _train_defaults() -> dict[str, Any]:
    defaults = TrainConfig()
    return {k: getattr(defaults, k) for k in CORE_TRAIN_FIELDS}


def _check_train_config(cfg: dict[str, Any], where: str) -> None:
    """Let the engine validate a run's whole config (rules between fields included)."""
    try:
        TrainConfig.from_dict(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass
class MethodEntry:
    """One configuration of a method. A swept method has one entry per value, sharing ``group``
    (the table's label) and differing in ``choice``; reports keep the one best on validation."""

    label: str
    spec: str
    params: dict[str, Any]
    overrides: dict[str, Any]
    cost: float | None = None
    group: str = ""
    choice: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskEntry:
    label: str
    data: str
    model: str
    overrides: dict[str, Any]
    compose: str = ""
    compose_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Suite:
    """A parsed and validated suite. ``expand()`` gives its runs."""

    name: str
    source: str
    text: str
    seeds: list[int]
    baseline: str
    budget: str
    measure: tuple[str, ...]
    train: dict[str, Any]
    tasks: list[TaskEntry]
    methods: list[MethodEntry]
    description: str = ""
    costs: dict[str, float] = field(default_factory=dict)
    tune: bool = False
    hypotheses: list[Hypothesis] = field(default_factory=list)

    def method_labels(self) -> list[str]:
        return [m.label for m in self.methods]

    def groups(self) -> dict[str, list[str]]:
        """``{method: [its configurations' labels]}``: more than one label means a sweep."""
        out: dict[str, list[str]] = {}
        for m in self.methods:
            out.setdefault(m.group or m.label, []).append(m.label)
        return out

    def task_config(self, task: TaskEntry, method: MethodEntry) -> dict[str, Any]:
        cfg = {**self.train, **task.overrides, **method.overrides}
        spec = method.spec if not task.compose else (
            task.compose if method.spec == "erm" else f"{task.compose}+{method.spec}")
        params = method.params
        if task.compose and method.spec != "erm" and "+" not in method.spec:
            # composed with the task's components, a bare name could mean either: it is the method's
            params = {k if "." in k else f"{method.spec}.{k}": v for k, v in params.items()}
        cfg.update(data=task.data, model=task.model, method=spec, method_params={**task.compose_params, **params},
                   data_kwargs=run_seeded(task.data, cfg.get("data_kwargs") or {}))  # generated data: drawn per run seed
        return cfg

    def expand(self, cost_fn: Callable[[dict[str, Any]], float] | None = None) -> list[RunSpec]:
        """All runs, tasks outermost, then methods, then seeds.

        With ``budget = "example_grads"`` each method's epochs are scaled by
        cost(baseline) / cost(method), where cost is example-gradients per training example
        (``cost`` in the suite, else ``cost_fn(config)``, by default :func:`probe_cost`).
        """
        runs: list[RunSpec] = []
        seen: dict[str, str] = {}
        for task in self.tasks:
            costs: dict[str, float] = {}
            if self.budget == "example_grads":
                fn = cost_fn or probe_cost
                for m in self.methods:
                    known = self.costs.get(f"{task.label}/{m.label}", m.cost)
                    costs[m.label] = known if known is not None else checked_cost(fn, self.task_config(task, m), self.source, m.label)
                    self.costs[f"{task.label}/{m.label}"] = costs[m.label]
            for m in self.methods:
                base_cfg = self.task_config(task, m)
                resolved = resolved_hyperparameters(base_cfg["method"], base_cfg["method_params"])
                if costs:
                    base = costs[self.groups()[self.baseline][0]]
                    base_cfg["epochs"] = max(1, round(base_cfg["epochs"] * base / costs[m.label]))
                for seed in self.seeds:
                    cfg = {**base_cfg, "seed": seed}
                    spec = RunSpec(self.name, task.label, m.label, seed, cfg, self.measure, resolved)
                    where = f"{task.label}/{m.label}/seed {seed}"
                    if spec.key in seen:
                        raise ConfigError(
                            f"{self.source}: runs {seen[spec.key]} and {where} have identical configs; "
                            "give the methods different hyperparameters or remove one"
                        )
                    seen[spec.key] = where
                    runs.append(spec)
        return runs


def parse_suite(
    text: str, source: str = "<suite>", *, check_names: bool = True, max_runs: int = LARGE_SUITE
) -> Suite:
    """Parse and validate a suite from TOML text. ``source`` names the file in error messages.

    With ``check_names`` the dataset, model and method names and every method hyperparameter
    are checked against the registries (``build_method`` validates the values too). Values are
    taken as TOML typed them (``epochs = "3"`` is an error). A suite of more than ``max_runs``
    runs (at most :data:`MAX_RUNS`) is refused from its counts, before its sweeps are expanded.
    """
    check(max_runs, int, "max_runs", Limits(ge=1, le=MAX_RUNS))
    raw = load_toml(text, source)
    declared = raw.pop("hypotheses", None)  # any kind of suite may declare them
    with typed_values():
        if "kind" in raw:
            suite = Checker(source).known(SUITE_KINDS, raw["kind"], "kind")(raw, text, source, check_names)
            check_size(source, len(suite.tasks), len(suite.methods), len(suite.seeds), max_runs)
        else:
            suite = _parse(raw, text, source, check_names, max_runs)
        if declared is not None:
            suite.hypotheses = parse_hypotheses(declared, source, list(suite.groups()), [t.label for t in suite.tasks])
    return suite


def suite_header(raw: dict[str, Any], ck: Checker, config: type) -> tuple[str, str, list[int]]:
    """The name, description and seeds of a suite file of any kind, checked alike (``config``: the
    run config whose ``seed`` field the seeds must fit)."""
    name = raw.get("name", Path(ck.source).stem if ck.source != "<suite>" else "suite")
    if not isinstance(name, str) or not name:
        raise ck.fail("name", f"must be a non-empty string, got {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ck.fail("description", "must be a string")
    raw_seeds = seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(check(seeds, int, f"{ck.source}: seeds (a count)", Limits(ge=1, le=MAX_SEEDS))))
    try:
        seeds = [check_field(config, "seed", s, "seed") for s in seeds] if isinstance(seeds, list) else None
    except ConfigError:
        seeds = None
    if not seeds:
        raise ck.fail("seeds", f"must be a non-empty list of non-negative integers (or a count), got {raw_seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ck.fail("seeds", f"repeats a seed: {seeds!r}")
    return name, description, seeds


def suite_baseline(raw: dict[str, Any], ck: Checker, labels: list[str]) -> str:
    """The suite's baseline method (default: its first), one of ``labels``."""
    baseline = raw.get("baseline", labels[0])
    if baseline not in labels:
        raise ck.fail("baseline", f"{baseline!r} is not one of the suite's methods: {', '.join(labels)}")
    return baseline


def _parse(raw: dict[str, Any], text: str, source: str, check_names: bool, max_runs: int) -> Suite:
    ck = Checker(source)
    ck.keys(raw, TOP_KEYS, "")
    fields = train_fields()
    name, description, seeds = suite_header(raw, ck, TrainConfig)

    budget = raw.get("budget", "epochs")
    if budget not in BUDGETS:
        raise ck.fail("budget", f"must be one of {', '.join(BUDGETS)}, got {budget!r}")

    measure = raw.get("measure", [])
    if not isinstance(measure, list) or any(not isinstance(m, str) for m in measure):
        raise ck.fail("measure", f"must be a list of instrument names, got {measure!r}")
    for m in measure:
        ck.known(INSTRUMENTS, m, "measure")

    train_raw = raw.get("train", {})
    if not isinstance(train_raw, dict):
        raise ck.fail("train", "must be a table: [train]")
    train = {**_train_defaults(), **ck.train_table(train_raw, "train", fields)}

    tasks_raw = raw.get("tasks")
    if not isinstance(tasks_raw, dict) or not tasks_raw:
        raise ck.fail("tasks", "the suite needs at least one [tasks.NAME] table with data and model")
    task_tables = []
    for label, t in tasks_raw.items():
        where = f"tasks.{label}"
        if not isinstance(t, dict):
            raise ck.fail(where, "must be a table: [tasks.NAME] with data = ... and model = ...")
        for req in TASK_KEYS:
            if req not in t:
                raise ck.fail(f"{where}.{req}", "is missing")
        datas, models = (_str_list(ck, t[k], f"{where}.{k}") for k in TASK_KEYS)
        compose = t.get("compose", "")
        if not isinstance(compose, str):
            raise ck.fail(f"{where}.compose", f"must be a method spec such as 'fgsm-examples', got {compose!r}")
        compose_params = t.get("compose_params", {})
        if not isinstance(compose_params, dict):
            raise ck.fail(f"{where}.compose_params", "must be a table such as { \"fgsm-examples.eps\" = 0.1 }")
        overrides = ck.train_table({k: v for k, v in t.items() if k not in TASK_KEYS + COMPOSE_KEYS}, where, fields)
        task_tables.append((label, datas, models, compose.strip(), compose_params, overrides))

    tune = raw.get("tune", False)
    if not isinstance(tune, bool):
        raise ck.fail("tune", f"must be true or false, got {tune!r}")
    methods_raw = raw.get("methods")
    if not isinstance(methods_raw, dict) or not methods_raw:
        raise ck.fail("methods", "the suite needs at least one [methods.NAME] table (e.g. [methods.erm])")
    method_tables = []
    for label, m in methods_raw.items():
        where = f"methods.{label}"
        if not isinstance(m, dict):
            raise ck.fail(where, "must be a table: [methods.NAME]")
        spec = m.get("method", label)
        if not isinstance(spec, str) or not spec:
            raise ck.fail(f"{where}.method", f"must be a method spec such as 'dipnet+mrwp', got {spec!r}")
        params = m.get("params", {})
        if not isinstance(params, dict):
            raise ck.fail(f"{where}.params", "must be a table such as { sigma = 0.1 }")
        sweep = m.get("sweep", {})
        if not isinstance(sweep, dict) or any(not isinstance(v, list) or not v for v in sweep.values()):
            raise ck.fail(f"{where}.sweep", "must be a table of non-empty lists such as { rho = [0.02, 0.05] }")
        if not sweep and tune:
            sweep = {k: list(v) for k, v in tuning_grid(spec).items() if k not in params}
        cost = m.get("cost")
        cost = check(cost, float | None, f"{source}: {where}.cost (example-gradients per example)", Limits(gt=0))
        overrides = ck.train_table({k: v for k, v in m.items() if k not in METHOD_KEYS}, where, fields)
        method_tables.append((label, spec, params, sweep, cost, overrides))

    check_size(source, sum(len(d) * len(mo) for _, d, mo, *_ in task_tables),
                sum(math.prod(len(v) for v in sweep.values()) for *_, sweep, _, _ in method_tables), len(seeds), max_runs)
    tasks: list[TaskEntry] = []
    for label, datas, models, compose, compose_params, overrides in task_tables:
        grid = len(datas) * len(models) > 1
        for d, mo in itertools.product(datas, models):
            tasks.append(TaskEntry(f"{label}:{d}-{mo}" if grid else label, d, mo, overrides, compose, dict(compose_params)))
    methods: list[MethodEntry] = []
    for label, spec, params, sweep, cost, overrides in method_tables:
        where = f"methods.{label}"
        combos = [dict(zip(sweep, vals)) for vals in itertools.product(*sweep.values())] if sweep else [{}]
        for combo in combos:
            lab = label if not combo else label + "(" + ",".join(f"{k}={v}" for k, v in combo.items()) + ")"
            trained = ck.train_table({k: v for k, v in combo.items() if k in fields}, f"{where}.sweep", fields)
            chosen = {k: v for k, v in combo.items() if k not in fields}
            methods.append(MethodEntry(lab, spec, {**params, **chosen}, {**overrides, **trained},
                                       None if cost is None else float(cost), label, dict(combo)))
    baseline = suite_baseline(raw, ck, list(dict.fromkeys(m.group for m in methods)))

    suite = Suite(name, source, text, list(seeds), baseline, budget, tuple(measure), train, tasks, methods, description,
                  tune=tune)
    for t in suite.tasks:
        for m in suite.methods:
            _check_train_config({**suite.task_config(t, m), "seed": suite.seeds[0]}, f"{source}: tasks.{t.label} with methods.{m.label}")
    if check_names:
        check_names_and_options(suite, ck)
    return suite


def _str_list(ck: Checker, value: Any, loc: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or any(not isinstance(v, str) or not v for v in items):
        raise ck.fail(loc, f"must be a name or a list of names, got {value!r}")
    return items


def packaged_suites() -> list[str]:
    """Names of the suites shipped in ``dipnet/suites``."""
    root = resources.files("dipnet") / "suites"
    try:
        return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def load_suite(path_or_name: str | Path, *, check_names: bool = True, max_runs: int = LARGE_SUITE) -> Suite:
    """Load a suite from a TOML file, or a shipped one by name (``load_suite("default")``);
    ``max_runs``: see :func:`parse_suite`."""
    path = Path(path_or_name)
    if path.is_file():
        try:
            if path.stat().st_size > MAX_SUITE_BYTES:
                raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; a suite file has at most {MAX_SUITE_BYTES:,}")
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read suite file {path}: {exc}") from None
        return parse_suite(text, str(path), check_names=check_names, max_runs=max_runs)
    name = str(path_or_name)
    if name in packaged_suites():
        res = resources.files("dipnet") / "suites" / f"{name}.toml"
        return parse_suite(res.read_text(encoding="utf-8"), f"dipnet/suites/{name}.toml", check_names=check_names,
                           max_runs=max_runs)
    raise ConfigError(
        f"no suite file {str(path_or_name)!r}; give a path to a .toml file or a shipped suite: "
        f"{', '.join(packaged_suites()) or 'none'}"
    )
