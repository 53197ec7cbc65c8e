"""``dipnet eval``: re-evaluate a saved run on its test set (or a shifted one)."""
from __future__ import annotations

import argparse
import json

from ..data import load_for_run
from ..engine import evaluate, load_run
from ._common import add_threads_argument, apply_threads, parse_assignments, percent


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a saved run", description="Load a run directory and evaluate its model.")
    p.add_argument("run_dir", help="directory written by `dipnet train`")
    p.add_argument("--data-arg", action="append", metavar="KEY=VALUE",
                   help="reload the dataset with changed options (e.g. shift=noise severity=3 for mnist1d)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_threads_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    run_ = load_run(args.run_dir)
    dataset = run_.dataset
    changes = parse_assignments(args.data_arg, "--data-arg")
    if changes:
        dataset = load_for_run(run_.config.data, {**run_.config.data_kwargs, **changes}, run_.config.seed)
    test = evaluate(run_.model, dataset.x_test, dataset.y_test)
    out = {
        "run_dir": str(run_.run_dir),
        "status": run_.status,
        "data": run_.config.data,
        "data_kwargs": {**run_.config.data_kwargs, **changes},
        "model": run_.config.model,
        "method": run_.method.name,
        "seed": run_.config.seed,
        "epochs_trained": len(run_.history),
        "test_acc": test["acc"],
        "test_loss": test["loss"],
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['run_dir']}: {out['method']} {out['model']} on {out['data']} (seed {out['seed']}, "
              f"{out['epochs_trained']} epochs, {out['status']})")
        print(f"test acc {percent(test['acc'])}  test loss {test['loss']:.4f}")
    return 0
