"""``dipnet compare SUITE``: train every (task, method, seed) of a suite into a run store."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

from ..engine.threads import check_threads
from ..errors import ConfigError
from ..experiments.executors import RayExecutor
from ..experiments.suite import LARGE_SUITE, MAX_RUNS
from ..schema import Limits, check, field_docs
from ._common import add_threads_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="run a comparison suite (TOML) into a SQLite run store",
        description="Train every (task, method, seed) of a suite that the store does not hold yet, "
        "then print mean ± 95% CI per method and the paired comparison with the baseline. "
        "SUITE is a .toml file or the name of a shipped suite (e.g. default).",
    )
    p.add_argument("suite", metavar="SUITE", help="suite file (.toml) or shipped suite name")
    p.add_argument("--store", default="runs.sqlite", help="SQLite run store (default: runs.sqlite); "
                   "checkpoints go to STORE.d/")
    p.add_argument("--workers", default=1, help="parallel worker processes (default 1)")
    add_threads_argument(p)
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this machine's process pool (--workers); ray: one Ray task per run")
    p.add_argument("--address", default=None, help="with --executor ray: the Ray cluster to join "
                   "(auto, HOST:6379, ray://HOST:10001); default: a local Ray started for this suite")
    p.add_argument("--cpus-per-run", default=1.0, help="with --executor ray: CPUs Ray reserves per run "
                   "(default 1; a run's torch threads: --threads, else these CPUs)")
    p.add_argument("--connect-timeout", default=None, metavar="SECONDS",
                   help="with --executor ray --address: give up joining the cluster after this long "
                   f"(default {field_docs(RayExecutor)['connect_timeout'][0]:g})")
    p.add_argument("--resume", action="store_true", help="keep finished runs and train only the missing ones")
    p.add_argument("--fresh", action="store_true", help="retrain every run of the suite, replacing stored results")
    p.add_argument("--report", metavar="DIR", default=None, help="also write the report (Markdown + HTML) into DIR")
    p.add_argument("--quiet", action="store_true", help="print only the final table")
    p.add_argument("--yes", action="store_true",
                   help=f"run a suite of more than {LARGE_SUITE} runs (refused without it: a sweep grows fast)")
    p.set_defaults(func=run)


def _existing(store_path: str, suite: str, keys: list[str]) -> int:
    """Finished runs this suite already ran (runs it shares with other suites are simply reused)."""
    from ..experiments import RunStore

    if not Path(store_path).is_file():
        return 0
    with RunStore(store_path) as store:
        return sum(r.status in ("done", "failed") for r in store.runs(suite=suite, keys=keys))


def run(args: argparse.Namespace) -> int:
    from ..llm import FinetuneSuite  # noqa: F401  (registers the "finetune" suite kind: `dipnet compare llm`)
    from ..experiments import RunStore, format_text_table, load_suite, run_suite, task_tables, write_report
    from ..experiments.hypotheses import hypotheses_text, suite_results

    if args.resume and args.fresh:
        raise ConfigError("--resume and --fresh exclude each other: keep finished runs, or retrain them")
    args.workers = check(args.workers, int, "--workers", Limits(ge=1))
    threads = check_threads(args.threads)  # the policy decides in run_suite, or in each Ray task
    executor = None
    if args.connect_timeout is not None and (args.address is None or args.executor != "ray"):
        raise ConfigError("--connect-timeout is for joining a Ray cluster: use it with --executor ray --address")
    if args.executor == "ray":
        timeout = {} if args.connect_timeout is None else {"connect_timeout": args.connect_timeout}
        executor = RayExecutor(address=args.address, cpus_per_run=args.cpus_per_run, threads=threads, **timeout)
        threads = None
    elif args.address is not None:
        raise ConfigError("--address names a Ray cluster: use it with --executor ray")
    suite = load_suite(args.suite, max_runs=MAX_RUNS if args.yes else LARGE_SUITE)
    specs = suite.expand()
    existing = _existing(args.store, suite.name, [s.key for s in specs])
    if existing and not (args.resume or args.fresh):
        raise ConfigError(
            f"{args.store} already holds {existing} finished run(s) of suite {suite.name!r}; "
            "pass --resume to keep them and train the rest, or --fresh to retrain everything"
        )
    total = len(specs)
    counter = {"n": 0}

    def on_event(kind: str, spec: Any, info: Mapping[str, Any]) -> None:
        if args.quiet or kind == "start":
            return
        counter["n"] += 1
        where = f"[{counter['n']}/{total}] {kind:6s} {spec.task} {spec.method} seed={spec.seed}"
        if kind == "done":
            final = info.get("final", {})
            acc_s = "  ".join(f"{name} acc {100 * final[key]:.2f}%" for key, name in (("val_acc", "val"), ("test_acc", "test"))
                              if isinstance(final.get(key), (int, float)))
            print(f"{where}: {acc_s} ({info.get('run_wall_s', 0.0):.1f} s)", flush=True)
        elif kind == "failed":
            print(f"{where}: {info.get('error')}", flush=True)
        else:
            print(f"{where} ({info.get('status')}, kept)", flush=True)

    outcome = run_suite(suite, args.store, workers=args.workers, resume=not args.fresh, threads=threads,
                        on_event=on_event, executor=executor, allow_failures=True)
    with RunStore(args.store) as store:
        tables = task_tables(store, suite.name)
        results = suite_results(tables, store.get_meta(f"suite:{suite.name}", {}) or {})
    for text in [format_text_table(table) for table in tables] + ([hypotheses_text(results)] if results else []):
        print()
        print(text)
    print(f"\n{outcome.done} trained, {outcome.failed} failed, {outcome.skipped} kept from the store "
          f"({outcome.wall_s:.1f} s); store: {args.store}")
    if args.report:
        files = write_report(args.store, args.report, suite=suite.name)
        print(f"report: {files.html}")
    return 1 if outcome.failed else 0
