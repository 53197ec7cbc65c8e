"""``dipnet measure``: smoothness instruments on a saved run, written as JSON (and plots) next to it."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from ..engine import load_run
from ..engine.files import write_output
from ..engine.rundir import check_result_files
from ..measure import MEASURES, measure_model
from ..schema import param
from ._common import add_threads_argument, apply_threads
from ._options import add_options, read_options, seed_param


@dataclass
class MeasureOptions:
    """The options of ``dipnet measure``, limits beside the fields."""

    what: tuple[str, ...] = param(MEASURES, doc="measures to run")
    n: int = param(500, ge=1, doc="test (and train) points to measure on")
    smoothed: int = param(0, ge=0, doc="also measure the smoothed net of a DIPNet with this many noise samples (0: off)")
    circles: int = param(8, ge=1, doc="region transitions: circles through three anchors, per anchor kind "
                                      "(train, test, random points)")
    points: int = param(1000, ge=1, doc="region transitions: points per circle")
    seed: int = seed_param("seed of the subsets, directions and probes")
    out: str | None = param(None, doc="where to write the JSON (default RUN_DIR/measures.json)")

FORMAT = "dipnet-measures-1"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "measure",
        help="measure Jacobian norms, region transitions, Lipschitz bounds, curvature, sharpness, landscape",
        description="Load a run directory and measure its model on its dataset (Novak et al. 2018 and more); "
                    "writes RUN_DIR/measures.json and RUN_DIR/landscape.png unless --out says otherwise.",
    )
    p.add_argument("run_dir", help="directory written by `dipnet train`")
    add_options(p, MeasureOptions)
    add_threads_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    opts: MeasureOptions = read_options(args)
    apply_threads(args)
    run_ = load_run(args.run_dir)
    out_path = Path(opts.out) if opts.out else Path(run_.run_dir) / "measures.json"
    check_result_files(out_path, FORMAT, ["landscape.png"] if "landscape" in opts.what else [])
    result = measure_model(
        run_.model, run_.dataset, names=opts.what, n_examples=opts.n, seed=opts.seed,
        smoothed_samples=opts.smoothed, circles=opts.circles, points=opts.points, out_dir=out_path.parent,
    )
    result = {"format": FORMAT, "run_dir": str(run_.run_dir), "data": run_.config.data, "model": run_.config.model,
              "method": run_.method.name, **result}
    write_output(out_path, json.dumps(result, indent=2).encode())
    print(f"{result['run_dir']}: {result['method']} {result['model']} on {result['data']}, {result['n_examples']} test points")
    smoothed = f" of the smoothed net ({opts.smoothed} samples)"
    for key, what in (("jacobian", ""), ("jacobian_smoothed", smoothed)):
        if key in result:
            j = result[key]
            print(f"  Jacobian ||d softmax/dx||_F{what}: mean {j['mean']:.4g} (train {j['train_mean']:.4g}), "
                  f"Spearman vs loss {j['spearman_vs_loss']:.3f}")
    if "regions" in result and "skipped" not in result["regions"]:
        r = result["regions"]
        print("  transitions per unit length: " + ", ".join(f"{k} {v['flips_per_length_mean']:.4g}" for k, v in r.items()))
    if "lipschitz" in result:
        l = result["lipschitz"]
        flag = "" if l["upper_verified"] else " (not a bound: " + l["reason"] + ")"
        print(f"  Lipschitz: lower {l['lower']:.4g}, upper {l['upper']:.4g}{flag}")
    if "lipschitz_smoothed" in result:
        l = result["lipschitz_smoothed"]
        print(f"  Lipschitz lower bound of the log-probabilities{smoothed}: {l['lower_log_probs']:.4g} "
              f"(deterministic net {l['lower_log_probs_deterministic']:.4g})")
    for key, what in (("curvature", ""), ("curvature_smoothed", smoothed)):
        if key in result:
            print(f"  input curvature{what}: mean {result[key]['mean']:.4g}")
    if "sharpness" in result:
        s = result["sharpness"]
        print(f"  sharpness: top eigenvalue {s['top_eigenvalue']:.4g}, trace {s['trace']:.4g}")
    plot = (result.get("landscape") or {}).get("plot")
    print(f"wrote {out_path}" + (f", {plot}" if plot else ""))
    return 0
