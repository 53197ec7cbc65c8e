"""Pre-registered hypotheses: a suite's ``[[hypotheses]]`` tables, each naming two of its methods,
a task (or every task), a direction and an equivalence margin::

    [[hypotheses]]
    a = "dipnet"
    b = "erm"
    task = "mlp"             # optional: every task of the suite
    direction = "greater"    # a's test accuracy above b's; or "less", "two-sided"
    margin = 0.5             # optional: equivalence margin in accuracy points (TOST)

The *family* is the hypotheses expanded over their tasks; each entry is tested on the paired
per-seed test accuracies of the two methods (a swept method: its configuration chosen on
validation, as in the task tables), and its p-values are Holm-adjusted over exactly that family
(:func:`dipnet.experiments.stats.adjust_family`), nothing else.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

from ..errors import ConfigError, DataError
from ..schema import Validated, check_field, param
from .stats import ALTERNATIVES, HypothesisTest, adjust_family, format_p, hypothesis_test, paired_differences
from .suite_checks import Checker
from .tables import TaskTable

HYPOTHESIS_KEYS = ("a", "b", "task", "direction", "margin")
REQUIRED = ("a", "b", "direction")
_SYMBOL = {"greater": ">", "less": "<", "two-sided": "≠"}


@dataclass(frozen=True)
class Hypothesis(Validated):
    """One declared hypothesis: ``a`` against ``b`` (method names of the suite) on ``task`` ("":
    every task), in ``direction``, with an optional equivalence ``margin`` in accuracy points."""

    a: str
    b: str
    direction: Literal["greater", "less", "two-sided"]
    task: str = ""
    margin: float | None = param(None, gt=0, le=100, doc="equivalence margin in accuracy points (TOST)")

    @property
    def statement(self) -> str:
        """"dipnet > erm"."""
        return f"{self.a} {_SYMBOL[self.direction]} {self.b}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def family(hypotheses: Sequence[Hypothesis], tasks: Sequence[str]) -> list[tuple[Hypothesis, str]]:
    """The declared family: each hypothesis on its task, or on every task in the suite's order."""
    return [(h, t) for h in hypotheses for t in ([h.task] if h.task else tasks)]


def parse_hypotheses(raw: Any, source: str, methods: Sequence[str], tasks: Sequence[str]) -> list[Hypothesis]:
    """The ``hypotheses`` of a suite file, checked against its ``methods`` (the [methods.NAME]
    labels) and ``tasks``; a pair is tested once per task."""
    ck = Checker(source)
    if not isinstance(raw, list) or not raw or any(not isinstance(h, dict) for h in raw):
        raise ck.fail("hypotheses", "must be one or more [[hypotheses]] tables, each with a, b and direction "
                                    "(task and margin optional)")
    out = []
    for i, table in enumerate(raw):
        where = f"hypotheses[{i}]"
        ck.keys(table, HYPOTHESIS_KEYS, where + ".")
        for key in REQUIRED:
            if key not in table:
                raise ck.fail(f"{where}.{key}", f"is missing; each [[hypotheses]] names {', '.join(REQUIRED)}")
        if table["direction"] not in ALTERNATIVES:
            raise ck.fail(f"{where}.direction", f"must be one of {', '.join(ALTERNATIVES)}, got {table['direction']!r}")
        values = {k: check_field(Hypothesis, k, v, f"{source}: {where}.{k}") for k, v in table.items()}
        for key in ("a", "b"):
            if values[key] not in methods:
                raise ck.fail(f"{where}.{key}", f"{values[key]!r} is not one of the suite's methods: {', '.join(methods)}")
        if values["a"] == values["b"]:
            raise ck.fail(where, f"compares {values['a']!r} with itself; name two different methods")
        if "task" in values and values["task"] not in tasks:
            raise ck.fail(f"{where}.task", f"{values['task']!r} is not one of the suite's tasks: {', '.join(tasks)} "
                                           "(leave task out for every task)")
        out.append(Hypothesis(**values))
    seen: dict[tuple[frozenset[str], str], int] = {}
    for i, h in enumerate(out):
        for _, task in family([h], tasks):
            pair = (frozenset((h.a, h.b)), task)
            if pair in seen:
                raise ck.fail(f"hypotheses[{i}]", f"tests {h.a} and {h.b} on task {task!r} again "
                                                  f"(hypotheses[{seen[pair]}]); declare each pair once per task")
            seen[pair] = i
    return out


def from_meta(meta: Mapping[str, Any]) -> list[Hypothesis]:
    """The hypotheses a run store's suite metadata (or an export's header) carries; none in
    stores and exports written before suites declared them."""
    try:
        return [Hypothesis(**h) for h in meta.get("hypotheses") or []]
    except (ConfigError, TypeError) as exc:
        raise DataError(f"the suite's recorded hypotheses are not valid ({exc}); export the suite again") from None


@dataclass(frozen=True)
class HypothesisResult:
    hypothesis: Hypothesis
    task: str
    test: HypothesisTest


def _accuracies(table: TaskTable | None, method: str) -> dict[int, float | None]:
    row = next((r for r in table.rows if r.group == method), None) if table else None
    if table is None or row is None:
        return {}
    return {r.seed: r.final.get("test_acc") for r in table.runs.get(row.method, []) if r.status == "done"}


def evaluate(tables: Sequence[TaskTable], hypotheses: Sequence[Hypothesis], tasks: Sequence[str]) -> list[HypothesisResult]:
    """Every entry of the family tested on the tables' runs (differences in accuracy points) and
    Holm-adjusted over the family; an entry without runs stays in the family (as p = 1)."""
    by_task = {t.task: t for t in tables}
    entries = family(hypotheses, tasks)
    tests = [hypothesis_test([100 * x for x in paired_differences(_accuracies(by_task.get(task), h.a),
                                                                   _accuracies(by_task.get(task), h.b))],
                             h.direction, h.margin) for h, task in entries]
    return [HypothesisResult(h, task, t) for (h, task), t in zip(entries, adjust_family(tests))]


def suite_results(tables: Sequence[TaskTable], meta: Mapping[str, Any]) -> list[HypothesisResult]:
    """The declared family of a suite (its store metadata ``meta``) tested on its ``tables``."""
    hypotheses = from_meta(meta)
    if not hypotheses:
        return []
    return evaluate(tables, hypotheses, list(meta.get("tasks") or []) or [t.task for t in tables])


def _interval(s: Any) -> str:
    if not s.n:
        return "n/a"
    if not math.isfinite(s.half_width):
        return f"{s.mean:+.2f}"
    return f"{s.mean:+.2f} [{s.low:+.2f}, {s.high:+.2f}]"


def hypotheses_cells(results: Sequence[HypothesisResult]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the pre-registered hypotheses table."""
    header = ["hypothesis", "task", "direction", "margin (pp)", "seeds", "Δ acc (pp, 95% CI)", "p (t, as declared)",
              "p (Holm, family)", "90% CI (pp)", "p (TOST)", "p (TOST, Holm)", "resolution"]
    rows = []
    for r in results:
        h, t = r.hypothesis, r.test
        rows.append([h.statement, r.task, h.direction, "none" if h.margin is None else f"±{h.margin:g}", str(t.n),
                     _interval(t.diff), format_p(t.p), format_p(t.holm_p), _interval(t.ci90),
                     format_p(t.tost_p), format_p(t.holm_tost_p), t.resolution])
    return header, rows


def family_note(results: Sequence[HypothesisResult]) -> str:
    """One paragraph stating the family and how the table reads."""
    declared, m = len({r.hypothesis for r in results}), len(results)
    return (f"Family: the {declared} declared hypothes{'is' if declared == 1 else 'es'} over their tasks, {m} "
            f"test{'' if m == 1 else 's'}, and nothing else. Each kind of p-value (the t-test in the declared direction, one-sided, or two-sided for "
            f"two-sided; the one-sided test the other way; TOST within ±margin) is Holm-adjusted over exactly these "
            f"{m}, a test without runs counting as p = 1. Δ = a - b in test accuracy points, paired by seed "
            f"(a swept method: its configuration chosen on validation). Resolution: supported when the declared "
            f"direction's adjusted p < 0.05, else contradicted when the opposite one's is, else equivalent when the "
            f"adjusted TOST p is, else inconclusive; the 90% interval lies inside ±margin exactly when the unadjusted "
            f"TOST p < 0.05.")


def hypotheses_markdown(results: Sequence[HypothesisResult]) -> list[str]:
    """The table as Markdown lines, followed by its family note."""
    header, rows = hypotheses_cells(results)
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows] + ["", family_note(results)])


def hypotheses_text(results: Sequence[HypothesisResult]) -> str:
    """The table as plain text for the terminal, followed by its family note."""
    header, rows = hypotheses_cells(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["Pre-registered hypotheses", "  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows] + [family_note(results)])
