"""``dipnet robust``: adversarial, corruption and shift robustness of a saved run, as JSON and plots."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..schema import param

FORMAT = "dipnet-robust-1"
from ._common import add_threads_argument, apply_threads
from ._options import add_options, read_options, seed_param


@dataclass
class RobustOptions:
    """The options of ``dipnet robust``, limits beside the fields (``none`` in a list: nothing)."""

    attacks: tuple[str, ...] = param(("fgsm", "pgd"), doc="attacks: fgsm, pgd, or none")
    eps: tuple[float, ...] | None = param(None, ge=0, doc="attack radii in data units (default: 0, 1, 2, 5, 10% "
                                                          "of the valid range's width)")
    norm: Literal["linf", "l2"] = param("linf", doc="attack norm")
    steps: int = param(20, ge=1, doc="PGD steps (step size 2.5 * eps / steps)")
    restarts: int = param(1, ge=1, doc="PGD random restarts")
    corruptions: tuple[str, ...] = param(("all",), doc="corruption names; all: those that fit the input; none: skip")
    no_shift: bool = param(False, doc="skip the shifted test sets")
    mode: Literal["eval", "noise", "keep"] = param("eval", doc="eval: the deterministic net; noise: DIPNet's "
                                                             "projections sample noise (use --eot); keep: the model's own flags")
    eot: int = param(1, ge=1, doc="noise samples averaged per gradient and prediction")
    n: int = param(1000, ge=1, doc="test points to evaluate on")
    seed: int = seed_param("seed of the test subset, the attacks' random starts and the corruptions")
    out: str | None = param(None, doc="where to write the JSON (default RUN_DIR/robust.json)")


def _names(items: tuple[str, ...]) -> list[str]:
    return [t for t in items if t.lower() != "none"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "robust",
        help="accuracy under FGSM/PGD attacks, common corruptions and distribution shift",
        description="Load a run directory and evaluate its model's robustness on its dataset's test set: "
                    "FGSM and PGD at several eps (inside the dataset's valid range), corruptions at severities 1-5, "
                    "and MNIST-1D's generator-shifted sets. Writes RUN_DIR/robust.json, robust_eps.png and "
                    "robust_severity.png unless --out says otherwise.",
    )
    p.add_argument("run_dir", help="directory written by `dipnet train`")
    add_options(p, RobustOptions)
    add_threads_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    opts: RobustOptions = read_options(args)
    apply_threads(args)
    from ..engine import load_run
    from ..engine.files import write_output
    from ..engine.rundir import check_result_files
    from ..robust import evaluate_robustness

    run_ = load_run(args.run_dir)
    out_path = Path(opts.out) if opts.out else Path(run_.run_dir) / "robust.json"
    check_result_files(out_path, FORMAT, ["robust_eps.png", "robust_severity.png"])
    result = evaluate_robustness(
        run_.model, run_.dataset, attacks=_names(opts.attacks), eps=opts.eps, norm=opts.norm, pgd_steps=opts.steps,
        pgd_restarts=opts.restarts, corruptions=None if opts.corruptions == ("all",) else _names(opts.corruptions),
        shifted=not opts.no_shift, n_examples=opts.n, seed=opts.seed, mode=opts.mode, eot_samples=opts.eot,
        out_dir=out_path.parent,
    )
    result = {"format": FORMAT, "run_dir": str(run_.run_dir), "data": run_.config.data, "model": run_.config.model,
              "method": run_.method.name, **result}
    write_output(out_path, json.dumps(result, indent=2).encode())
    print(f"{result['run_dir']}: {result['method']} {result['model']} on {result['data']}, "
          f"{result['n_examples']} test points, clean acc {100 * result['clean_acc']:.2f}%")
    adv = result["adversarial"]
    for name in ("fgsm", "pgd"):
        if name in adv:
            pairs = ", ".join(f"{e:.3g}: {100 * a:.1f}%" for e, a in zip(adv[name]["eps"], adv[name]["acc"]))
            print(f"  {name.upper()} ({adv['norm']}) eps -> acc: {pairs}")
    if "mean_corruption_acc" in result:
        sev = ", ".join(f"{100 * a:.1f}%" for a in result["per_severity_acc"])
        print(f"  corruptions: mean acc {100 * result['mean_corruption_acc']:.2f}% (per severity: {sev})")
    shifted = result.get("shifted", {})
    if shifted and "skipped" not in shifted:
        print("  shifted sets: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in shifted.items()))
    print(f"wrote {out_path}" + "".join(f", {p}" for p in result.get("plots", [])))
    return 0
