"""``dipnet robust``: adversarial, corruption and shift robustness of a saved run, as JSON and plots."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError

FORMAT = "dipnet-robust-1"


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--eps expects comma-separated numbers (e.g. 0,0.05,0.1), got {text!r}") from None


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip() and t.strip().lower() != "none"]

from ._common import add_threads_argument, apply_threads


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
    p.add_argument("--attacks", default="fgsm,pgd", metavar="LIST", help="comma-separated: fgsm, pgd, or none")
    p.add_argument("--eps", default=None, metavar="LIST",
                   help="attack radii in data units (default 0, 1, 2, 5, 10%% of the valid range's width)")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (step size 2.5 * eps / steps)")
    p.add_argument("--restarts", type=int, default=1, help="PGD random restarts")
    p.add_argument("--corruptions", default=None, metavar="LIST",
                   help="comma-separated corruption names, or none (default: all that fit the input)")
    p.add_argument("--no-shift", action="store_true", help="skip the shifted test sets")
    p.add_argument("--mode", choices=("eval", "noise", "keep"), default="eval",
                   help="eval: deterministic net; noise: DIPNet projections sample noise (use --eot)")
    p.add_argument("--eot", type=int, default=1, metavar="K", help="noise samples averaged per gradient and prediction")
    p.add_argument("--n", type=int, default=1000, help="test points to evaluate on (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="FILE.json", help="where to write the JSON (default RUN_DIR/robust.json)")
    add_threads_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    from ..engine import load_run
    from ..engine.files import write_output
    from ..engine.rundir import check_result_files
    from ..robust import evaluate_robustness

    run_ = load_run(args.run_dir)
    out_path = Path(args.out) if args.out else Path(run_.run_dir) / "robust.json"
    check_result_files(out_path, FORMAT, ["robust_eps.png", "robust_severity.png"])
    result = evaluate_robustness(
        run_.model, run_.dataset, attacks=_names(args.attacks),
        eps=None if args.eps is None else _floats(args.eps), norm=args.norm, pgd_steps=args.steps,
        pgd_restarts=args.restarts, corruptions=None if args.corruptions is None else _names(args.corruptions),
        shifted=not args.no_shift, n_examples=args.n, seed=args.seed, mode=args.mode, eot_samples=args.eot,
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
