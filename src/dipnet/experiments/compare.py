"""Run a suite: every (task, method, seed) not yet done, in worker processes, into a run store.

Only this (parent) process writes the store; workers train and send back JSON-able results.
A run is marked ``running`` when it is handed to a worker, so killing the parent loses at most
the runs in progress: the next :func:`run_suite` finds them ``running`` with a dead owner,
puts them back to ``pending`` and trains them again (the engine resumes from the run's last
end-of-epoch checkpoint). A run that raises is recorded ``failed`` with its error; the others go on.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import signal
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..engine import TrainConfig, threads as threads_policy, train
from ..engine.rundir import read_record
from ..engine.runinfo import run_info
from ..errors import ConfigError, DataError, SuiteError
from ..schema import Limits, check
from .instruments import INSTRUMENTS, MeasureFn
from .store import RunStore, owner_id
from .runspec import RunSpec
from .suite import Suite, load_suite
from .suite_checks import check_data_and_models

TrainFn = Callable[[dict[str, Any], str], Any]
"""``train_fn(config, run_dir)``: trains one run; returns a RunResult or a dict with final/history."""
EventFn = Callable[[str, RunSpec, Mapping[str, Any]], None]


def engine_train(config: dict[str, Any], run_dir: str, callbacks: Sequence[Any] = ()) -> Any:
    """The default ``train_fn``: :func:`dipnet.engine.train` with checkpoints in ``run_dir``
    (``callbacks``: the loop's, as :func:`~dipnet.engine.train` takes them)."""
    return train(TrainConfig.from_dict({**config, "out": run_dir, "progress": "none"}), callbacks=callbacks)


@dataclass
class SuiteOutcome:
    """What :func:`run_suite` did."""

    suite: str
    store: Path
    total: int
    skipped: int = 0
    done: int = 0
    failed: int = 0
    recovered: int = 0
    keys: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)  # "task method seed N: error" of each failed run

    @property
    def trained(self) -> int:
        return self.done + self.failed


def default_runs_dir(store_path: str | Path) -> Path:
    """Run directories (checkpoints) live beside the store: ``runs.sqlite`` -> ``runs.sqlite.d/``."""
    p = Path(store_path)
    return p.with_name(p.name + ".d")


def run_dir_for(runs_dir: Path, spec: RunSpec) -> Path:
    label = re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{spec.task}__{spec.method}__s{spec.seed}")
    return runs_dir / f"{label}__{spec.key}"


def _plain(obj: Any) -> Any:
    """JSON-able copy: tensors and numpy scalars to Python numbers, tuples to lists."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "tolist"):
        return _plain(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _recorded_run_info(run_dir: Any) -> dict[str, Any] | None:
    """The versions and hardware the engine wrote into ``run_dir/run.json`` (None if absent)."""
    if not run_dir:
        return None
    try:
        return read_record(run_dir).get("run_info")
    except (DataError, OSError, AttributeError):
        return None


def execute_run(spec_dict: dict[str, Any], run_dir: str, train_fn: TrainFn,
                measures: Mapping[str, MeasureFn] | None = None) -> dict[str, Any]:
    """Train one run and collect its results; never raises (errors come back as data)."""
    spec = RunSpec.from_dict(spec_dict)
    t0 = time.perf_counter()
    try:
        result = train_fn(dict(spec.config), run_dir)
        if isinstance(result, Mapping):
            final, history = result.get("final", {}), result.get("history", [])
            env = result.get("env")
        else:
            final, history = result.final, result.history
            env = _recorded_run_info(getattr(result, "run_dir", None))
        out: dict[str, Any] = {"final": _plain(final), "history": _plain(history), "seed": spec.seed}
        if measures:
            out["measures"] = {name: _plain(fn(result, spec)) for name, fn in measures.items()}
        if env is None:
            env = run_info()
        out["env"] = _plain(env)
        out["run_dir"] = run_dir
        out["run_wall_s"] = time.perf_counter() - t0
        out["worker_pid"] = os.getpid()
        return {"ok": True, "results": out}
    except BaseException as exc:  # noqa: BLE001 - a run's failure is data, not a crash of the suite
        if isinstance(exc, KeyboardInterrupt):
            raise
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def _init_worker(threads: int) -> None:
    """Worker start: fixed torch threads; die with the parent (Linux) so no orphan trains on."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    threads_policy.apply(threads, warn=False)  # decided once by run_suite
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up


def run_suite(
    suite: Suite | str | Path,
    store_path: str | Path,
    *,
    workers: int = 1,
    resume: bool = True,
    retry_failed: bool = True,
    train_fn: TrainFn | None = None,
    runs_dir: str | Path | None = None,
    threads: int | None = None,
    on_event: EventFn | None = None,
    cost_fn: Callable[[dict[str, Any]], float] | None = None,
    executor: Any = None,
    allow_failures: bool = False,
) -> SuiteOutcome:
    """Train every run of ``suite`` that the store at ``store_path`` does not hold as done.

    ``resume=False`` retrains every run of the suite from scratch (old results are replaced).
    ``workers > 1`` trains in that many processes (spawned), each with ``threads`` torch threads
    (default: its share of the idle physical cores; :mod:`dipnet.engine.threads` warns once if
    they oversubscribe them); ``workers=1`` trains in this process, on ``threads`` threads until
    the suite ends. ``train_fn(config,
    run_dir)`` defaults to the suite's own ``train_fn`` (a suite kind's), else
    :func:`engine_train`; it must be importable at module level when
    ``workers > 1``. ``on_event(kind, spec, info)`` is called with kind in
    ``skip``/``start``/``done``/``failed``. ``executor`` (e.g. :class:`~dipnet.experiments.RayExecutor`)
    trains the runs instead of this process or its pool; this process still writes the store.
    Before the first run, every dataset and model the runs need (with the default ``train_fn``)
    is loaded and built once, so that a missing file stops the suite before any run trains.
    A run that fails is recorded with its error and the others go on; then
    :class:`~dipnet.errors.SuiteError` is raised, unless ``allow_failures`` (the outcome counts them).
    """
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    workers = check(workers, int, "workers", Limits(ge=1))
    threads = threads_policy.check_threads(threads, "threads")
    if executor is not None and threads is not None:
        raise ConfigError("threads= is for this machine's workers; an executor takes its own (RayExecutor(threads=...))")
    train_fn = train_fn or getattr(suite, "train_fn", None) or engine_train
    specs = suite.expand(cost_fn)
    keys = [s.key for s in specs]
    runs_root = Path(runs_dir) if runs_dir is not None else default_runs_dir(store_path)
    t0 = time.perf_counter()
    outcome = SuiteOutcome(suite.name, Path(store_path), len(specs), keys=keys)
    emit = on_event or (lambda kind, spec, info: None)
    measures = {name: INSTRUMENTS.get(name) for name in suite.measure}

    with RunStore(store_path) as store:
        store.set_meta(f"suite:{suite.name}", {
            "text": suite.text, "source": suite.source, "baseline": suite.baseline, "budget": suite.budget,
            "tasks": [t.label for t in suite.tasks], "methods": suite.method_labels(), "seeds": suite.seeds,
            "description": suite.description, "costs": suite.costs, "groups": suite.groups(),
            "choices": {m.label: m.choice for m in suite.methods},
            **({"hypotheses": [h.to_dict() for h in suite.hypotheses]} if suite.hypotheses else {}),
        })
        store.set_suite(suite.name, specs)
        outcome.recovered = len(store.recover(keys))
        redo = ("done", "failed") if not resume else (("failed",) if retry_failed else ())
        if redo:
            for rec in store.runs(keys=keys):
                if rec.status in redo:
                    shutil.rmtree(run_dir_for(runs_root, rec.spec), ignore_errors=True)
            store.reset(keys, redo)
        status = {r.key: r.status for r in store.runs(keys=keys)}
        todo = [s for s in specs if status[s.key] == "pending"]
        if train_fn is engine_train:
            check_data_and_models(todo)
        for s in specs:
            if status[s.key] != "pending":
                outcome.skipped += 1
                emit("skip", s, {"status": status[s.key]})

        def finish(spec: RunSpec, reply: dict[str, Any]) -> None:
            if reply.get("ok"):
                store.finish(spec.key, reply["results"])
                outcome.done += 1
                emit("done", spec, reply["results"])
            else:
                store.fail(spec.key, reply["error"], {"traceback": reply["traceback"]} if reply.get("traceback") else None)
                outcome.failed += 1
                outcome.failures.append(f"{spec.task} {spec.method} seed {spec.seed}: {reply['error']}")
                emit("failed", spec, reply)

        if executor is not None:  # executors.py: e.g. Ray tasks
            executor.run(store, todo, runs_root, train_fn, measures, emit, finish)
        elif workers == 1 or len(todo) <= 1:
            with threads_policy.using(threads, 1, where="threads"):
                for spec in todo:
                    if not store.claim(spec.key, owner_id()):
                        continue
                    emit("start", spec, {})
                    try:
                        reply = execute_run(spec.to_dict(), str(run_dir_for(runs_root, spec)), train_fn, measures)
                    except KeyboardInterrupt:
                        store.reset([spec.key], ("running",))
                        raise
                    finish(spec, reply)
        else:
            _run_parallel(store, todo, runs_root, train_fn, measures, workers,
                          threads_policy.resolve(threads, min(workers, len(todo)), where="threads"), emit, finish)
    outcome.wall_s = time.perf_counter() - t0
    if outcome.failed and not allow_failures:
        first = outcome.failures[0].splitlines()[0][:300]
        raise SuiteError(f"suite {suite.name!r}: {outcome.failed} of {outcome.trained} runs failed (first: {first}); "
                         f"their errors are in {store_path} (allow_failures=True returns the outcome instead)", outcome)
    return outcome


def _run_parallel(store: RunStore, todo: list[RunSpec], runs_root: Path, train_fn: TrainFn,
                  measures: Mapping[str, MeasureFn], workers: int, threads: int, emit: EventFn,
                  finish: Callable[[RunSpec, dict[str, Any]], None]) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = list(todo)
    in_flight: dict[Future, RunSpec] = {}
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                               initializer=_init_worker, initargs=(threads,))
    try:
        while queue or in_flight:
            while queue and len(in_flight) < workers:
                spec = queue.pop(0)
                if not store.claim(spec.key, owner_id()):
                    continue
                emit("start", spec, {})
                fut = pool.submit(execute_run, spec.to_dict(), str(run_dir_for(runs_root, spec)), train_fn, dict(measures))
                in_flight[fut] = spec
            if not in_flight:
                break
            finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            broken = False
            for fut in finished:
                spec = in_flight.pop(fut)
                try:
                    reply = fut.result()
                except BrokenProcessPool:
                    broken = True
                    reply = {"ok": False, "error": "the worker process died during this run (killed, out of memory, or a script "
                                                   "that calls run_suite outside `if __name__ == \"__main__\":`?)"}
                except Exception as exc:  # e.g. a train_fn that cannot be pickled
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                finish(spec, reply)
            if broken:
                for fut, spec in list(in_flight.items()):
                    finish(spec, {"ok": False, "error": "the worker process pool broke during this run"})
                in_flight.clear()
                _stop_pool(pool)
                pool = ProcessPoolExecutor(max_workers=min(workers, max(len(queue), 1)), mp_context=ctx,
                                           initializer=_init_worker, initargs=(threads,))
    except BaseException:
        store.reset([s.key for s in in_flight.values()], ("running",))
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now: without this, interpreter exit would wait for their current runs."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
