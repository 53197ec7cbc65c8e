"""Evidence that tracks the code: re-train a sample of every committed export's runs and compare.

``PYTHONPATH=src python research/evidence.py retrain [--suite NAME] [--budget-s S] [--workers N]``
(``make test`` runs it after the docs check) does two things for every committed export
(``docs/results/<suite>/runs.jsonl.gz``):

- **Expansion.** The suite file (``suites/<name>.toml``, or the packaged one its export names)
  is expanded with the current code and must give exactly the runs the export holds, key for
  key. A run's key hashes its config and its method's hyperparameters, defaults included, so a
  changed default (of a method, of a stored training field, of a suite) or an edited suite file
  shows here without training anything. A key moved only by a method hyperparameter added since
  (absent from the stored run) is noted, not a difference: retraining the stored config uses its
  default, so the sample checks it.
- **Re-training.** A sample of the export's finished runs is trained again from their stored
  config (same seed, one torch thread, as the suites ran) and every stored metric must come back
  bit for bit: the final metrics, every epoch's history row and the instruments' measures.
  Durations and rates (fields named ``*_s`` or ``seconds``) and the machine's description
  (``env``, ``run_dir``, ``worker_pid``) are not metrics and are not compared; a metric the code
  reports now but the export lacks (added since) is noted, not a difference. The sample holds,
  for every (method, task) pair (a swept method is one method, its configurations pooled), its
  cheapest run: fewest example-gradients, then lowest seed, then key, preferring a run already
  sampled for another suite (a run whose key several exports hold trains once and is compared
  with each). This catches a change of what a default or a code path computes even where the
  key does not move (a non-stored training field, the projection, a scheduler's formula).
- **Whole or first periods.** To keep ``make test`` to a few minutes, only some picks are
  re-trained to the end: for every engine method (with its instruments) and for every suite, its
  cheapest pick; these compare every stored metric, the final ones and the measures included.
  Every other pick trains its first ``PERIODS`` periods (epochs) only and compares those history
  rows bit for bit (a run's history depends on its whole config from the first step: schedule,
  data, method), and its stored final metrics must equal its stored last history row's (the final
  evaluation is the last period's), so an edit of a final metric fails without training.
  ``--full`` re-trains every pick to the end.

CPU training here is deterministic (one thread, seeded noise), so equality is exact. Runs are
trained longest first (so the workers finish together); with ``--budget-s``, cheapest first, and
no new one starts after that many seconds (the runs left unchecked are named). Suites of kind ``finetune`` (LLM fine-tuning: a LoRA run of SmolLM2 takes minutes on a CPU) are
expanded like every other, but of their sampled runs only the cheapest trains, its first period
only; ``--include-finetune`` re-trains all of them to the end.

``docs/results/stale.toml`` lists what is known not to match the code until a suite is rerun::

    [comparison]
    reason = "issue 24: ..."
    runs = ["851234cd17298484"]   # sampled runs whose re-training is known to differ
    expansion = true              # the suite file is known to expand to runs the export lacks

Those differences are printed loudly, marked known, and do not fail the check; any other
difference of the suite still does. The check names the entries that match again (to remove).
"""
from __future__ import annotations

import functools
import math
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable

from dipnet.engine import Callback, Loop, TrainState
from dipnet.engine import threads as threads_policy
from dipnet.errors import ConfigError, DataError
from dipnet.experiments.compare import engine_train, execute_run
from dipnet.experiments.instruments import INSTRUMENTS
from dipnet.experiments.suite import Suite, parse_suite
from dipnet.experiments.suite_checks import MAX_RUNS, load_toml

STALE = Path("docs") / "results" / "stale.toml"
NOT_METRICS = ("env", "run_dir", "worker_pid", "seconds")
SLOW_KINDS = {"finetune": "LLM fine-tuning: minutes a run on a CPU; --include-finetune re-trains them all"}
SHOWN = 3  # differing fields named per run
PERIODS = 2  # periods a pick not trained to the end trains (see the module docstring)
ABSENT = "<absent>"


def is_metric(name: str) -> bool:
    """Whether a results field is a metric (compared), not a duration, rate or machine detail."""
    return name not in NOT_METRICS and not name.endswith("_s")


def differences(stored: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """``(path, stored, new)`` of every metric that differs between two results, exactly (NaN
    equals NaN; a field one side lacks differs)."""
    if isinstance(stored, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(stored) | set(new), key=str):
            if is_metric(str(k)):
                out += differences(stored.get(k, ABSENT), new.get(k, ABSENT), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(stored, list) and isinstance(new, list) and len(stored) == len(new):
        return [d for i, (a, b) in enumerate(zip(stored, new)) for d in differences(a, b, f"{path}[{i}]")]
    same = stored == new or (isinstance(stored, float) and isinstance(new, float) and math.isnan(stored) and math.isnan(new))
    if isinstance(stored, list) and isinstance(new, list):
        same = False  # lengths differ
    return [] if same and type(stored) is type(new) else [(path, stored, new)]


@dataclass
class Export:
    """One committed export: its suite, metadata and finished runs."""

    suite: str
    path: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def kind(self) -> str:
        try:
            return str(load_toml(self.meta.get("text", ""), str(self.path)).get("kind", "train"))
        except ConfigError:
            return "train"

    def group(self, label: str) -> str:
        for group, labels in (self.meta.get("groups") or {}).items():
            if label in labels:
                return group
        return label


@dataclass
class Pick:
    """A run to train again, and the exports that hold it."""

    key: str
    spec: dict[str, Any]
    holders: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (suite, stored results)
    est_s: float = 0.0
    periods: int | None = None  # train the first ``periods`` periods only (None: to the end)
    kind: str = "train"  # the kind of the suites holding it

    @property
    def stored_periods(self) -> int:
        """The history rows its stored results hold (the fewest, if its holders disagree)."""
        return min(len(r.get("history") or []) for _, r in self.holders)

    @property
    def cost_s(self) -> float:
        """The stored wall time, scaled to the periods it trains."""
        if self.periods is None:
            return self.est_s
        return self.est_s * self.periods / max(self.stored_periods, 1)

    @property
    def label(self) -> str:
        return f"{self.spec['task']} / {self.spec['method']} / seed {self.spec['seed']} ({self.key})"


def _cost(row: dict[str, Any]) -> tuple[float, int, str]:
    final = (row.get("results") or {}).get("final") or {}
    grads = final.get("example_grads")
    return (float(grads) if isinstance(grads, (int, float)) else math.inf, int(row.get("seed", 0)), str(row.get("key")))


def sample(exports: Iterable[Export]) -> list[Pick]:
    """Per export and (method, task) pair, its cheapest finished run (one already picked for
    another export first); the picks, cheapest (by stored wall time) first."""
    picks: dict[str, Pick] = {}
    for ex in exports:
        pairs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in ex.rows:
            if row.get("status") == "done":
                pairs.setdefault((ex.group(row["method"]), row["task"]), []).append(row)
        for _, rows in sorted(pairs.items()):
            row = min(rows, key=lambda r: (r["key"] not in picks, *_cost(r)))
            pick = picks.setdefault(row["key"], Pick(row["key"], {**row["spec"], "suite": ex.suite, "task": row["task"],
                                                                  "method": row["method"]},
                                                     est_s=float(row["results"].get("run_wall_s") or 0.0), kind=ex.kind))
            pick.holders.append((ex.suite, row["results"]))
    return sorted(picks.values(), key=lambda p: (p.est_s, p.key))


def shorten(picks: list[Pick], periods: int = PERIODS) -> None:
    """Mark every pick but the cheapest (fewest example-gradients) of each (engine method,
    instruments) and of each suite to train its first ``periods`` periods only (a pick whose
    stored history is no longer trains to the end; picks of slow kinds are left as they are)."""
    whole: set[str] = set()
    for p in sorted(picks, key=lambda p: (_cost({"results": p.holders[0][1]})[0], p.key)):
        if p.kind in SLOW_KINDS:
            continue
        firsts = [("method", str(p.spec["config"].get("method")), *p.spec.get("measure", []))]
        firsts += [("suite", suite) for suite, _ in p.holders]
        if any(f not in whole for f in firsts):
            whole.update(firsts)
            continue
        if p.stored_periods > periods:
            p.periods = periods


def _one_slow_pick(picks: list[Pick], notes: dict[str, list[str]]) -> list[Pick]:
    """The picks without those of slow kinds (:data:`SLOW_KINDS`) but the cheapest one, which
    trains its first period only; a note per suite says how many of its picks were left out."""
    slow = [p for p in picks if p.kind in SLOW_KINDS]
    if not slow:
        return picks
    kept = min(slow, key=lambda p: (p.est_s / max(p.stored_periods, 1), p.key))
    if kept.stored_periods > 1:
        kept.periods = 1
    left = Counter((suite, p.kind) for p in slow if p is not kept for suite, _ in p.holders)
    for (suite, kind), n in sorted(left.items()):
        notes[suite].append(f"{n} sampled run(s) left out: {SLOW_KINDS[kind]}")
    return [p for p in picks if p.kind not in SLOW_KINDS or p is kept]


class _Enough(Exception):
    """Raised once the periods asked for are recorded: ends the run without its final evaluation."""

    def __init__(self, history: list[dict[str, Any]]) -> None:
        super().__init__("retrain: the periods asked for are done")
        self.history = history


class _StopAfter(Callback):
    """End the run at the end of its ``periods``-th period (raising :class:`_Enough`)."""

    def __init__(self, periods: int) -> None:
        self.periods = periods

    def on_period_end(self, loop: Loop, state: TrainState, row: dict[str, Any]) -> None:
        if len(state.history) >= self.periods:
            raise _Enough(list(state.history))


def _train_first(train_fn: Callable[..., Any], periods: int, config: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """The first ``periods`` history rows of the run ``config`` describes, trained by the suite's
    ``train_fn`` (which takes the loop's callbacks)."""
    try:
        train_fn(config, run_dir, callbacks=[_StopAfter(periods)])
    except _Enough as enough:
        return {"final": {}, "history": enough.history}
    raise RuntimeError(f"the run ended before its period {periods}")


def retrain_one(spec: dict[str, Any], train_fn: Callable[[dict[str, Any], str], Any] | None = None,
                periods: int | None = None) -> dict[str, Any]:
    """Train one stored run again (one torch thread, its instruments included; with ``periods``,
    its first periods only, without instruments) in a temporary directory; ``{"ok": ...,
    "results" | "error": ...}`` as :func:`execute_run` gives it."""
    if periods is not None:
        spec, train_fn = {**spec, "measure": []}, functools.partial(_train_first, train_fn or engine_train, periods)
    measures = {name: INSTRUMENTS.get(name) for name in spec.get("measure", [])}
    with tempfile.TemporaryDirectory(prefix="dipnet-retrain-") as tmp, threads_policy.using(1, warn=False):
        return execute_run(spec, str(Path(tmp) / "run"), train_fn or engine_train, measures)


def compared(pick: Pick, stored: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(path, stored, new)`` of every metric a pick's re-training compares that differs: all of
    them, or for a pick trained its first periods only, those periods' history rows."""
    if pick.periods is None:
        return differences(stored, new)
    return differences((stored.get("history") or [])[: pick.periods], new.get("history") or [], "history")


def final_not_last_row(stored: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(path, final value, last row's value)`` of every stored final metric that differs from the
    stored last history row's (the final evaluation is the last period's)."""
    history = stored.get("history") or []
    last = history[-1] if history else {}
    return [(f"final.{k}", v, last[k]) for k, v in sorted((stored.get("final") or {}).items())
            if is_metric(k) and k in last and differences(v, last[k])]


def expansion_problems(ex: Export, suite: Suite) -> tuple[list[str], int]:
    """How the suite, expanded today, differs from the runs its export holds (a line per kind of
    move, with its count and first run), and how many runs' keys moved only by method
    hyperparameters added since (absent from the stored run: retraining its stored config uses
    their defaults, so the sample checks them; not a difference)."""
    now = {s.key: s for s in suite.expand()}
    stored = {row["key"]: row for row in ex.rows}
    by_label = {(r["task"], r["method"], r["seed"]): r for r in ex.rows}
    moves: dict[str, list[str]] = {}  # what moved: the runs it moved
    added_only, matched = 0, set()
    for key in sorted(set(now) - set(stored), key=lambda k: (now[k].task, now[k].method, now[k].seed)):
        s = now[key]
        where = f"{s.task} / {s.method} / seed {s.seed}"
        old = by_label.get((s.task, s.method, s.seed))
        if old is None:
            moves.setdefault("run(s) the export lacks", []).append(where)
            continue
        matched.add(old["key"])
        moved = differences({"config": old["spec"]["config"], "resolved": old["spec"].get("resolved") or {},
                             "measure": sorted(old["spec"].get("measure") or [])},
                            {"config": s.config, "resolved": s.resolved, "measure": sorted(s.measure)})
        real = [d for d in moved if not (d[0].startswith("resolved.") and d[1] == ABSENT)]
        if real:
            what = "; ".join(f"{p}: stored {a!r}, now {b!r}" for p, a, b in real[:SHOWN])
            moves.setdefault(f"run(s) whose config moved ({what})", []).append(where)
        else:
            added_only += 1
    gone = sorted(set(stored) - set(now) - matched, key=lambda k: (stored[k]["task"], stored[k]["method"], stored[k]["seed"]))
    for key in gone:
        moves.setdefault("stored run(s) the suite no longer expands to", []).append(
            f"{stored[key]['task']} / {stored[key]['method']} / seed {stored[key]['seed']}")
    return [f"{len(runs)} {what}, first {runs[0]}" for what, runs in moves.items()], added_only


def suite_text(root: Path, ex: Export) -> tuple[str, str]:
    """The suite file the export came from, as committed today: ``(text, source)``; the export's
    own copy when the file is gone."""
    source = str(ex.meta.get("source") or "")
    for path in (root / source, root / "src" / source) if source else ():
        if path.is_file():
            return path.read_text(encoding="utf-8"), source
    return str(ex.meta.get("text") or ""), f"{ex.path} (its stored suite text)"


@dataclass
class Stale:
    """What ``docs/results/stale.toml`` knows about a suite that no longer matches the code."""

    reason: str
    runs: frozenset[str] = frozenset()  # keys of sampled runs whose re-training is known to differ
    expansion: bool = False  # its suite file is known to expand to runs the export lacks


def stale_suites(root: Path) -> dict[str, Stale]:
    """``{suite: Stale}`` from ``docs/results/stale.toml`` (none when the file is absent)."""
    path = root / STALE
    if not path.exists():
        return {}
    try:
        tables = load_toml(path.read_text(encoding="utf-8"), str(path))
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    out = {}
    for name, t in tables.items():
        if not (isinstance(t, dict) and isinstance(t.get("reason"), str) and set(t) <= {"reason", "runs", "expansion"}
                and isinstance(t.get("runs", []), list) and isinstance(t.get("expansion", False), bool)):
            raise DataError(f"{path}: [{name}] must hold reason = \"...\" and optionally runs = [\"KEY\", ...] "
                            "and expansion = true")
        out[name] = Stale(t["reason"], frozenset(map(str, t.get("runs", []))), t.get("expansion", False))
    return out


def load_exports(root: Path, suites: Iterable[str] | None = None) -> list[Export]:
    """The committed exports (all, or those of ``suites``), checksums verified."""
    from evidence import RESULTS, export_path, read_export

    names = list(suites) if suites else sorted(p.parent.name for p in (root / RESULTS).glob("*/runs.jsonl.gz"))
    out = []
    for name in names:
        path = export_path(root, name)
        if not path.exists():
            raise DataError(f"no committed export for suite {name!r} ({path})")
        rows = read_export(path)
        out.append(Export(rows[0]["suite"], path, rows[0]["meta"], rows[1:]))
    return out


def _train_all(picks: list[Pick], train_fns: dict[str, Any], workers: int,
               budget_s: float | None) -> Iterable[tuple[Pick, dict[str, Any] | None]]:
    """``(pick, reply)`` for every pick, trained in order in ``workers`` processes (this one when
    1); ``reply`` is None for a pick not started within ``budget_s`` seconds."""
    t0 = time.perf_counter()

    def in_budget() -> bool:
        return budget_s is None or time.perf_counter() - t0 < budget_s

    fn = {p.key: train_fns[p.holders[0][0]] for p in picks}
    if workers == 1:
        for p in picks:
            yield p, retrain_one(p.spec, fn[p.key], p.periods) if in_budget() else None
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        queue, running = list(picks), {}
        while queue or running:
            while queue and len(running) < workers:
                p = queue.pop(0)
                if not in_budget():
                    yield p, None
                    continue
                running[pool.submit(retrain_one, p.spec, fn[p.key], p.periods)] = p
            if running:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    yield running.pop(fut), fut.result()


def _order(diff: tuple[str, Any, Any]) -> tuple[int, str]:
    return ({"final": 0, "measures": 1}.get(diff[0].split(".")[0].split("[")[0], 2), diff[0])


def _describe(diffs: list[tuple[str, Any, Any]]) -> str:
    diffs = sorted(diffs, key=_order)
    text = "; ".join(f"{p}: stored {a!r}, now {b!r}" for p, a, b in diffs[:SHOWN])
    return text + (f" (+{len(diffs) - SHOWN} more)" if len(diffs) > SHOWN else "")


def _known(stale: Stale | None, what: str) -> bool:
    return stale is not None and (what in stale.runs or (what == "expansion" and stale.expansion))


def retrain_check(root: str | Path = ".", suites: Iterable[str] | None = None, *, budget_s: float | None = None,
                  workers: int = 1, include_finetune: bool = False, full: bool = False,
                  echo: Callable[[str], None] = print) -> int:
    """Check every committed export (or ``suites``') against the current code (see the module
    docstring), print what differs, and return the exit status: 1 when a difference is not one
    ``docs/results/stale.toml`` lists, else 0."""
    root = Path(root)
    stale = stale_suites(root)
    exports: list[Export] = []
    problems: dict[str, list[tuple[str, str]]] = {}  # suite: [(run key | "expansion" | "suite", line)]
    train_fns: dict[str, Any] = {}
    sampled: dict[str, set[str]] = {}
    checked: dict[str, set[str]] = {}
    notes: dict[str, list[str]] = {}
    for ex in load_exports(root, suites):
        exports.append(ex)
        problems[ex.suite], notes[ex.suite], sampled[ex.suite], checked[ex.suite] = [], [], set(), set()
        text, source = suite_text(root, ex)
        try:
            suite = parse_suite(text, source, max_runs=MAX_RUNS)
        except (ConfigError, DataError) as exc:
            problems[ex.suite].append(("suite", f"its suite file no longer loads: {exc}"))
            train_fns[ex.suite] = engine_train
            continue
        moved, added_only = expansion_problems(ex, suite)
        problems[ex.suite] += [("expansion", f"expansion: {line}") for line in moved]
        if added_only:
            notes[ex.suite].append(f"{added_only} run key(s) moved only by method hyperparameters added since")
        train_fns[ex.suite] = getattr(suite, "train_fn", None) or engine_train
    picks = sample(exports)
    if not include_finetune:
        picks = _one_slow_pick(picks, notes)
    if not full:
        shorten(picks)
    picks.sort(key=lambda p: (p.cost_s, p.key), reverse=budget_s is None)  # in a budget cheapest first, else longest
    for pick in picks:
        for suite_name, _ in pick.holders:
            sampled[suite_name].add(pick.key)
    t0, unchecked = time.perf_counter(), []
    for pick, reply in _train_all(picks, train_fns, workers, budget_s):
        if reply is None:
            unchecked.append(pick)
            continue
        for suite_name, stored in pick.holders:
            checked[suite_name].add(pick.key)
            if not reply.get("ok"):
                problems[suite_name].append(("suite", f"{pick.label}: training failed: {reply.get('error')}"))
                continue
            diffs = compared(pick, stored, reply["results"])
            changed = [d for d in diffs if d[1] != ABSENT]
            first = f" in its first {pick.periods} period(s)" if pick.periods else ""
            if changed:
                problems[suite_name].append((pick.key, f"{pick.label}: {len(changed)} stored metric(s) differ{first}: "
                                                       f"{_describe(changed)}"))
            elif diffs and not any(n.startswith("metrics added") for n in notes[suite_name]):
                notes[suite_name].append(f"metrics added since, e.g. {diffs[0][0]}")
            own = final_not_last_row(stored) if pick.periods else []
            if own:
                problems[suite_name].append((pick.key, f"{pick.label}: {len(own)} stored final metric(s) differ from "
                                                       f"its stored last history row: "
                                                       + "; ".join(f"{p}: {a!r}, last row {b!r}" for p, a, b in own[:SHOWN])))
    wall = time.perf_counter() - t0
    failing = 0
    for ex in exports:
        entry, found = stale.get(ex.suite), problems[ex.suite]
        bad = [line for what, line in found if not _known(entry, what)]
        short = sum(1 for p in picks if p.periods and p.key in checked[ex.suite])
        head = f"{ex.suite}: {len(checked[ex.suite])} of its {sum(r.get('status') == 'done' for r in ex.rows)} " \
               "finished runs re-trained" + (f" ({short} of them their first periods only)" if short else "") \
               + "".join(f" ({n})" for n in notes[ex.suite])
        verdict = f"FAILS: {len(bad)} difference(s)" if bad else "every stored metric matches"
        if entry is not None:
            known = len(found) - len(bad)
            verdict = f"KNOWN STALE ({entry.reason}): {known} known difference(s) tolerated" + (f"; {verdict}" if bad else "")
        echo(("!!! " if entry is not None else "") + f"{head}; {verdict}")
        failing += bool(bad)
        for what, line in found:
            echo(f"    {ex.suite}: {'known: ' if _known(entry, what) else ''}{line}")
        if entry is not None:
            seen = {what for what, _ in found}
            for key in sorted(entry.runs - seen - (sampled[ex.suite] - checked[ex.suite])):
                echo(f"    {ex.suite}: {STALE} lists run {key}, which {'matches' if key in checked[ex.suite] else 'is not sampled'}"
                     " now: remove it")
            if entry.expansion and "expansion" not in seen:
                echo(f"    {ex.suite}: the suite file expands to the exported runs now: remove expansion from {STALE}")
    for name in sorted(set(stale) - {ex.suite for ex in exports} - set(suites or ())):
        echo(f"{STALE} lists {name!r}, which has no committed export: remove it")
    if unchecked:
        echo(f"--budget-s {budget_s:g}: {len(unchecked)} sampled run(s) not re-trained (first: {unchecked[0].label})")
    short = sum(1 for p in picks if p.periods and p not in unchecked)
    echo(f"retrain: {len(picks) - len(unchecked)} run(s) re-trained ({short} their first periods only) in {wall:.0f} s "
         f"({workers} process(es), 1 thread each); {failing} suite(s) fail, {sum(ex.suite in stale for ex in exports)} "
         f"listed in {STALE}")
    return 1 if failing else 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="research/evidence.py retrain",
                                description="Re-train a sample of every committed suite export's runs with the "
                                            "current code and fail when a stored metric differs.")
    p.add_argument("--root", default=".", help="repository root (default: .)")
    p.add_argument("--suite", action="append", help="check only this suite (repeatable)")
    p.add_argument("--budget-s", type=float, help="start no run after this many seconds (unchecked runs are named)")
    p.add_argument("--workers", type=int, default=1, help="processes training at once, one thread each (default 1)")
    p.add_argument("--include-finetune", action="store_true", help="also re-train suites of kind finetune (slow)")
    p.add_argument("--full", action="store_true", help="re-train every sampled run to the end (default: see the "
                                                       "module docstring, 'Whole or first periods')")
    args = p.parse_args(argv)
    if args.workers < 1 or (args.budget_s is not None and not args.budget_s > 0):
        p.error("--workers must be >= 1 and --budget-s > 0")
    try:
        return retrain_check(args.root, args.suite, budget_s=args.budget_s, workers=args.workers,
                             include_finetune=args.include_finetune, full=args.full)
    except (ConfigError, DataError) as exc:
        print(f"retrain: error: {exc}", file=sys.stderr)
        return 2
