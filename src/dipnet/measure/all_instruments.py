"""All instruments on one model and dataset, as a JSON-ready dict (what ``dipnet measure`` writes)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..errors import ConfigError
from ..schema import Limits, check
from ._checks import eval_mode, positive_int
from .curvature import input_curvature
from .jacobian import jacobian_norm
from .landscape import loss_landscape, plot_landscape
from .lipschitz import lipschitz_bounds
from .regions import PIECEWISE_LINEAR, draw_anchors, random_anchors, region_transitions
from .sharpness import sharpness
from ..projection import is_noise_layer
from .smoothing import smoothed

MEASURES = ("jacobian", "regions", "lipschitz", "curvature", "sharpness", "landscape")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (Pearson correlation of ranks; ties broken by order)."""
    if a.numel() < 2:
        return float("nan")
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()).clamp_min(1e-30))


def _subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def _parse_names(names: Sequence[str] | str | None) -> list[str]:
    if names is None:
        return list(MEASURES)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in MEASURES]
    if unknown or not names:
        raise ConfigError(f"unknown measure(s) {', '.join(map(repr, unknown)) or '(none given)'}; choose from: {', '.join(MEASURES)}")
    return list(dict.fromkeys(names))


def measure_model(
    model: nn.Module,
    dataset: Dataset,
    names: Sequence[str] | str | None = None,
    n_examples: int = 500,
    seed: int = 0,
    smoothed_samples: int = 0,
    circles: int = 8,
    points: int = 1000,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Measure ``model`` on ``n_examples`` test (and train) points of ``dataset``.

    Jacobian norms are of the softmax output at test points (Novak et al. 2018), with their rank
    correlation to the per-point cross-entropy; region transitions around ``circles`` circles
    (``points`` points each) through training points of one class, test points of one class and
    random points; Lipschitz bounds of the logits; input curvature; weight-Hessian top eigenvalue
    and trace; a 1-D filter-normalized landscape (plotted into ``out_dir`` when given). ``smoothed_samples=k`` also measures the smoothed net of a
    DIPNet (k noise samples) for the Jacobian, Lipschitz lower bound and curvature.
    """
    chosen = _parse_names(names)
    positive_int(n_examples, "n_examples")
    x_test, y_test = _subset(dataset.x_test, dataset.y_test, n_examples, seed)
    x_train, y_train = _subset(dataset.x_train, dataset.y_train, n_examples, seed + 1)
    smoothed_samples = check(smoothed_samples, int, "smoothed_samples", Limits(ge=0))
    variants: list[tuple[str, nn.Module]] = [("", model)]
    if smoothed_samples:
        variants.append(("_smoothed", smoothed(model, smoothed_samples, seed)))
    out: dict[str, Any] = {"n_examples": int(x_test.shape[0]), "seed": seed, "measures": chosen}
    with torch.no_grad(), eval_mode(model):
        logits = model(x_test)
        losses = F.cross_entropy(logits, y_test, reduction="none")
    out["test_loss"] = float(losses.mean())
    out["test_acc"] = float((logits.argmax(1) == y_test).float().mean())
    timings: dict[str, float] = {}
    for name in chosen:
        t0 = time.perf_counter()
        if name == "jacobian":
            for suffix, m in variants:
                norms = jacobian_norm(m, x_test, "softmax")
                train_norms = jacobian_norm(m, x_train, "softmax")
                out["jacobian" + suffix] = {
                    "output": "softmax", "points": "test",
                    "mean": float(norms.mean()), "std": float(norms.std()), "median": float(norms.median()),
                    "train_mean": float(train_norms.mean()),
                    "spearman_vs_loss": spearman(norms, losses),
                }
        elif name == "regions":
            if not any(isinstance(m, PIECEWISE_LINEAR) for m in model.modules()):
                out["regions"] = {"skipped": "the model has no piecewise-linear activation modules"}
                continue
            anchors = {
                "train": draw_anchors(x_train, y_train, circles, seed=seed),
                "test": draw_anchors(x_test, y_test, circles, seed=seed),
                "random": random_anchors(x_train, circles, seed=seed),
            }
            out["regions"] = {k: region_transitions(model, a, points).to_dict() for k, a in anchors.items()}
        elif name == "lipschitz":
            bounds = lipschitz_bounds(model, x_test, strict=False, seed=seed)
            out["lipschitz"] = bounds.to_dict()
            if smoothed_samples:
                from .lipschitz import jacobian_spectral_norm

                lower = jacobian_spectral_norm(variants[1][1], x_test, "log_softmax", seed=seed).max()
                out["lipschitz_smoothed"] = {"lower_log_probs": float(lower),
                                             "lower_log_probs_deterministic": float(
                                                 jacobian_spectral_norm(model, x_test, "log_softmax", seed=seed).max())}
        elif name == "curvature":
            n = min(200, x_test.shape[0])
            for suffix, m in variants:
                curv = input_curvature(m, x_test[:n], y_test[:n], seed=seed)
                out["curvature" + suffix] = {"mean": float(curv.mean()), "median": float(curv.median()), "points": n}
        elif name == "sharpness":
            s = sharpness(model, F.cross_entropy, (x_train, y_train), iters=50, tol=1e-3, trace_samples=10, seed=seed)
            out["sharpness"] = s.to_dict()
        elif name == "landscape":
            land = loss_landscape(model, F.cross_entropy, (x_train, y_train), dims=1, steps=21, span=1.0, seed=seed)
            out["landscape"] = land.to_dict()
            if out_dir is not None:
                out["landscape"]["plot"] = str(plot_landscape(land, Path(out_dir) / "landscape.png"))
        timings[name] = time.perf_counter() - t0
    out["seconds"] = timings
    out["noise_layers"] = sum(1 for m in model.modules() if is_noise_layer(m))
    return out
